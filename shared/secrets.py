"""Secrets released to attested devices: the stored record and the release format. Pure.

At rest (Redis, ``ag:{reg}:secret:<device id>``, one hash field per name) a secret
is a :class:`SecretRecord`: its metadata in clear and its value AES-256-GCM
encrypted under the storage key (:class:`~shared.vault.Vault`) with the device id,
the name and the version as associated data, so a value copied onto another device,
name or version does not decrypt.

On release the value travels as :class:`Part` s of at most :data:`PART_LEN` bytes
(a channel message holds 65,519 bytes, a secret up to :data:`MAX_SECRET`): each part
is AES-256-GCM-encrypted under a fresh 32-byte key, and that key is carried in a TPM
sealed-data object duplicated to the device's certified SRK
(:func:`~shared.tpm.credential.wrap_sealed_data`, the device PSK's import path). Only
the TPM holding that SRK can import and unseal the key. The associated data binds
the ciphertext to the device, name, version, offset and total size.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, replace
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.codec import Fields, pack, unpack_map
from shared.errors import AttestgateError, ErrorCode
from shared.keys import Random
from shared.secret_policy import authorize_policy, policy_ref
from shared.tpm.credential import wrap_sealed_data
from shared.tpm.structures import name_of
from shared.vault import Vault

MAX_SECRET: Final = 64 * 1024  # bytes of one secret value
PART_LEN: Final = 48 * 1024  # plaintext bytes per release part (fits one channel message)
KEY_LEN: Final = 32  # AES-256 key carried in the sealed object
NONCE_LEN: Final = 12
MAX_RECORD: Final = MAX_SECRET + 1024
MAX_TPM_BLOB: Final = 1024  # public, duplicate, seed of the wrapped key
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABEL_SECRET: Final = b"attestgate/1 secret"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise AttestgateError(ErrorCode.INVALID_NAME, "secret name")
    return name


def check_value(value: bytes) -> bytes:
    if not 1 <= len(value) <= MAX_SECRET:
        raise AttestgateError(ErrorCode.TOO_LARGE if value else ErrorCode.BAD_REQUEST,
                              f"secret value is {len(value)} bytes (1..{MAX_SECRET})")
    return bytes(value)


def _context(device_id: str, name: str, version: int) -> str:
    return f"secret\0{device_id}\0{name}\0{version}"


@dataclass(frozen=True)
class SecretRecord:
    name: str
    version: int
    size: int
    created_at: float
    updated_at: float
    sealed: bytes  # Vault.seal(value, device id + name + version)
    # --bind-pcrs (shared.secret_policy): the bound selection, the policy key's
    # TPM2B_PUBLIC and one (approvedPolicy, signature) per approved PCR state.
    selection: str = ""
    policy_public: bytes = b""
    policies: tuple[tuple[bytes, bytes], ...] = ()

    def to_bytes(self) -> bytes:
        return pack({"name": self.name, "version": self.version, "size": self.size,
                     "created_at": self.created_at, "updated_at": self.updated_at,
                     "sealed": self.sealed, "selection": self.selection,
                     "policy_public": self.policy_public,
                     "policies": [list(p) for p in self.policies]})

    @staticmethod
    def from_bytes(raw: bytes) -> SecretRecord:
        m = unpack_map(raw, max_size=MAX_RECORD)
        f = Fields(m)
        return SecretRecord(
            name=f.text("name", 64), version=f.integer("version", 1, 2**62),
            size=f.integer("size", 1, MAX_SECRET), created_at=f.number("created_at"),
            updated_at=f.number("updated_at"), sealed=f.blob("sealed", MAX_RECORD),
            selection=f.text("selection", 128, optional=True) or "",
            policy_public=f.blob("policy_public", MAX_TPM_BLOB, optional=True),
            policies=parse_policies(m.get("policies")))

    def view(self) -> dict[str, Any]:
        """Everything but the value."""
        return {"name": self.name, "version": self.version, "size": self.size,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "bind_pcrs": self.selection, "policies": len(self.policies)}


MAX_POLICIES: Final = 64  # signed PCR states kept per bound secret (oldest dropped)


def parse_policies(value: Any) -> tuple[tuple[bytes, bytes], ...]:
    """A list of [approvedPolicy (32 B), TPMT_SIGNATURE (<= 256 B)]; BAD_REQUEST if not."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_POLICIES:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "policies")
    out = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2
                or not all(isinstance(x, bytes) for x in item)
                or len(item[0]) != 32 or not 1 <= len(item[1]) <= 256):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "policy entry")
        out.append((bytes(item[0]), bytes(item[1])))
    return tuple(out)


def seal_record(vault: Vault, device_id: str, name: str, value: bytes, now: float,
                rng: Random, previous: SecretRecord | None = None) -> SecretRecord:
    """A new record (version 1), or the next version of ``previous`` (same binding)."""
    check_name(name)
    value = check_value(value)
    version = previous.version + 1 if previous is not None else 1
    created = previous.created_at if previous is not None else now
    sealed = vault.seal(value, _context(device_id, name, version), rng)
    if previous is None:
        return SecretRecord(name, version, len(value), created, now, sealed)
    return replace(previous, version=version, size=len(value), updated_at=now, sealed=sealed)


def open_record(vault: Vault, device_id: str, record: SecretRecord) -> bytes:
    return vault.unseal(record.sealed, _context(device_id, record.name, record.version))


def part_aad(device_id: str, name: str, version: int, offset: int, total: int) -> bytes:
    d, n = device_id.encode(), name.encode()
    return (LABEL_SECRET + struct.pack(">H", len(d)) + d + struct.pack(">H", len(n)) + n
            + struct.pack(">QQQ", version, offset, total))


@dataclass(frozen=True)
class Part:
    """One released part: the wrapped key (TPM2_Import inputs) and the ciphertext."""

    version: int
    offset: int
    total: int
    public: bytes
    duplicate: bytes
    seed: bytes
    nonce: bytes
    ciphertext: bytes
    selection: str = ""  # set: the key object is PCR-bound (PolicyAuthorize)
    policy_public: bytes = b""
    policies: tuple[tuple[bytes, bytes], ...] = ()

    def to_body(self) -> dict[str, Any]:
        return {"version": self.version, "offset": self.offset, "total": self.total,
                "public": self.public, "duplicate": self.duplicate, "seed": self.seed,
                "nonce": self.nonce, "ciphertext": self.ciphertext,
                "selection": self.selection, "policy_public": self.policy_public,
                "policies": [list(p) for p in self.policies]}

    @staticmethod
    def from_body(body: Any) -> Part:
        """Parse a reply (or a cached part); BAD_REQUEST / TOO_LARGE on anything off."""
        f = Fields(body)
        part = Part(
            version=f.integer("version", 1, 2**62), offset=f.integer("offset", 0, MAX_SECRET),
            total=f.integer("total", 1, MAX_SECRET),
            public=f.blob("public", MAX_TPM_BLOB, min_len=1),
            duplicate=f.blob("duplicate", MAX_TPM_BLOB, min_len=1),
            seed=f.blob("seed", MAX_TPM_BLOB, min_len=1),
            nonce=f.blob("nonce", NONCE_LEN, min_len=NONCE_LEN),
            ciphertext=f.blob("ciphertext", PART_LEN + 16, min_len=17),
            selection=f.text("selection", 128, optional=True) or "",
            policy_public=f.blob("policy_public", MAX_TPM_BLOB, optional=True),
            policies=parse_policies(body.get("policies") if isinstance(body, dict) else None))
        if bool(part.selection) != bool(part.policy_public):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "secret part binding")
        if part.offset % PART_LEN or part.offset >= part.total:
            raise AttestgateError(ErrorCode.BAD_REQUEST, "secret part offset")
        if len(part.ciphertext) - 16 != min(PART_LEN, part.total - part.offset):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "secret part length")
        return part

    def decrypt(self, key: bytes, device_id: str, name: str) -> bytes:
        """The plaintext of this part; CREDENTIAL_FAILED if anything was altered."""
        aad = part_aad(device_id, name, self.version, self.offset, self.total)
        try:
            return AESGCM(key).decrypt(self.nonce, self.ciphertext, aad)
        except (InvalidTag, ValueError):
            raise AttestgateError(ErrorCode.CREDENTIAL_FAILED,
                                  "secret part does not decrypt (altered, or not ours)") from None


def release_part(srk_public: bytes, device_id: str, record: SecretRecord, value: bytes,
                 offset: int, rng: Random) -> Part:
    """Wrap part ``offset`` of ``value`` for the TPM holding ``srk_public``."""
    if offset < 0 or offset % PART_LEN or offset >= len(value):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "secret part offset")
    key, nonce = rng(KEY_LEN), rng(NONCE_LEN)
    auth_policy = b""
    if record.selection:
        auth_policy = authorize_policy(name_of(record.policy_public, code=ErrorCode.INTERNAL),
                                       policy_ref(device_id, record.name, record.version))
    public, duplicate, seed = wrap_sealed_data(srk_public, key, rng, auth_policy)
    chunk = value[offset:offset + PART_LEN]
    aad = part_aad(device_id, record.name, record.version, offset, len(value))
    ciphertext = AESGCM(key).encrypt(nonce, chunk, aad)
    return Part(record.version, offset, len(value), public, duplicate, seed, nonce, ciphertext,
                record.selection, record.policy_public, record.policies)
