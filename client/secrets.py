"""``attestgate secret get``: fetch a secret inside an attested session and open it.

The server answers each request with one :class:`~shared.secrets.Part`: a fresh AES
key wrapped to this TPM's SRK and the part's ciphertext under it. The TPM imports and
unseals the key; the plaintext exists only in this process and where ``--out`` says.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from client import state as st
from client.channel import Channel
from shared.codec import pack, unpack_map
from shared.errors import AttestgateError, ErrorCode
from shared.secret_policy import policy_ref
from shared.secrets import MAX_SECRET, PART_LEN, Part, check_name
from shared.wire import Command

if TYPE_CHECKING:  # the CLI imports this module even where tpm2-pytss is not installed
    from client.tpm import Tpm

CACHE_DIR = "secrets"
CACHE_FORMAT = "attestgate-secret-cache/1"
MAX_CACHE = 2 * MAX_SECRET
# A rotate between two parts of one fetch starts the fetch over, this many times at most.
_ATTEMPTS = 3


def open_part(tpm: Tpm, device_id: str, name: str, part: Part) -> bytes:
    """Unwrap the part's key in the TPM (under its PCR policy if bound) and decrypt."""
    if part.selection:
        key = tpm.unwrap_bound_secret_key(
            part.public, part.duplicate, part.seed, selection=part.selection,
            policy_public=part.policy_public, policy_ref=policy_ref(device_id, name, part.version),
            policies=part.policies)
    else:
        key = tpm.unwrap_secret_key(part.public, part.duplicate, part.seed)
    return part.decrypt(key, device_id, name)


def _cache_path(home: Path, name: str) -> Path:
    return home / CACHE_DIR / f"{check_name(name)}.blob"


def save_cache(home: Path, name: str, device_id: str, parts: list[Part]) -> None:
    """Keep a PCR-bound secret's parts (wrapped key objects, ciphertext, signed policies:
    nothing in clear) for ``attestgate secret unseal`` (0600, atomic)."""
    directory = home / CACHE_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = pack({"format": CACHE_FORMAT, "name": name, "device_id": device_id,
                 "parts": [p.to_body() for p in parts]})
    _write_atomic(_cache_path(home, name), data)


def unseal_cached(tpm: Tpm, home: Path, state: st.ClientState, name: str) -> tuple[bytes, int]:
    """Open a cached PCR-bound secret offline, with the TPM only. NOT_FOUND when there is
    no cache; PCR_MISMATCH when the PCRs are in no approved state; CREDENTIAL_FAILED or
    BAD_REQUEST when the cache was altered."""
    try:
        raw = _cache_path(home, name).read_bytes()
    except FileNotFoundError:
        raise AttestgateError(ErrorCode.NOT_FOUND,
                              f"no cached secret {name!r}: run `attestgate secret get` "
                              "once while the server is reachable") from None
    f = unpack_map(raw, max_size=MAX_CACHE)
    parts_raw = f.get("parts")
    if (f.get("format") != CACHE_FORMAT or f.get("name") != name
            or f.get("device_id") != state.device_id or not isinstance(parts_raw, list)
            or not 1 <= len(parts_raw) <= MAX_SECRET // PART_LEN + 1):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "secret cache")
    parts = [Part.from_body(p) for p in parts_raw]
    value = bytearray()
    for part in parts:
        if (part.offset != len(value) or not part.selection
                or (part.version, part.total) != (parts[0].version, parts[0].total)):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "secret cache parts")
        value += open_part(tpm, state.device_id, name, part)
    if len(value) != parts[0].total:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "secret cache length")
    return bytes(value), parts[0].version


def get(tpm: Tpm, state: st.ClientState, ch: Channel, name: str,
        home: Path | None = None) -> tuple[bytes, int]:
    """(value, version) of secret ``name``; Refused (NOT_FOUND, REVOKED, ...) from the
    server, CREDENTIAL_FAILED if a part does not open, PROTOCOL if parts disagree.
    A PCR-bound secret's parts are cached in ``home`` for :func:`unseal_cached`."""
    check_name(name)
    for _ in range(_ATTEMPTS):
        value, offset, first = bytearray(), 0, None
        parts: list[Part] = []
        while True:
            part = Part.from_body(ch.request(Command.SECRET_GET, name=name, offset=offset))
            if part.offset != offset:
                raise AttestgateError(ErrorCode.PROTOCOL, "secret part offset")
            if first is not None and (part.version, part.total) != (first.version, first.total):
                break  # rotated meanwhile: start over
            first = first or part
            parts.append(part)
            value += open_part(tpm, state.device_id, name, part)
            offset = len(value)
            if offset >= part.total:
                if offset != part.total or offset > MAX_SECRET:
                    raise AttestgateError(ErrorCode.PROTOCOL, "secret length")
                if part.selection and home is not None:
                    save_cache(home, name, state.device_id, parts)
                return bytes(value), part.version
    raise AttestgateError(ErrorCode.PROTOCOL, "the secret kept changing while fetched")


def write_out(value: bytes, out: str | None) -> None:
    """To ``out`` (0600, written to a temporary file beside it then renamed), or stdout."""
    if out is None or out == "-":
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
        return
    _write_atomic(Path(out), value)


def _write_atomic(path: Path, value: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
