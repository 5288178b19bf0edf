"""Enrollment evidence: verify, challenge, and verify the answer. Pure functions of their inputs.

Order of checks (cheap and identity-revealing first): name, EK (certificate chain
or allowlist, and EK public = certificate key), AK attributes, the quote bound to
this session's handshake hash, the AK's certifications of SRK and post key.
Then the challenge: MakeCredential(EK, AK name, challenge) and the device PSK
wrapped to the certified SRK. Only a client whose TPM holds both the EK and the
AK can recover the challenge, and only the TPM holding the SRK can use the PSK.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.attestor.eventlogs import check_sent
from shared.binding import activation_message, quote_nonce
from shared.codec import Fields, pack, unpack_map
from shared.config import EnrollPolicy
from shared.errors import AttestgateError, ErrorCode
from shared.keys import Random, device_id_for
from shared.records import Baseline, Device, DeviceStatus
from shared.store.interface import PENDING_ENROLLED, Store
from shared.store.serialize import device_from_bytes, device_to_bytes
from shared.tpm.attributes import check_ak, check_post_key, check_srk
from shared.tpm.certify import verify_certify
from shared.tpm.credential import make_credential, wrap_hmac_key
from shared.tpm.ekcert import (
    EkCaStore,
    check_ek_allowlist,
    ek_fingerprint,
    ek_matches_cert,
    load_ek_cert,
    verify_ek_chain,
)
from shared.tpm.pcrs import PcrSelection
from shared.tpm.quote import verify_quote
from shared.vault import Vault
from shared.wire import (
    DH_LEN,
    HASH_LEN,
    MAX_EVIDENCE_FIELD,
    MAX_LOG_BUS,
    MAX_NAME_LEN,
    MAX_PCRS,
    NAME_PATTERN,
    TOKEN_ID_LEN,
)

PENDING_BEGIN = "begin:"
PENDING_TTL = 120.0
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class EnrollSettings:
    policy: EnrollPolicy
    ca_store: EkCaStore | None
    allowlist: frozenset[str]
    selection: str

    @staticmethod
    def load(policy: EnrollPolicy, ca_dir: Path | None, allowlist: Path | None,
             selection: str) -> EnrollSettings:
        store = EkCaStore.from_dir(ca_dir) if ca_dir is not None and ca_dir.is_dir() else None
        allowed: frozenset[str] = frozenset()
        if allowlist is not None and allowlist.is_file():
            allowed = frozenset(
                line.split("#")[0].strip().lower()
                for line in allowlist.read_text().splitlines()
                if line.split("#")[0].strip()
            )
        PcrSelection.parse(selection)  # fail at start-up, not at the first enrollment
        return EnrollSettings(policy, store, allowed, selection)


@dataclass(frozen=True)
class Evidence:
    name: str
    ek_public: bytes
    ek_cert: bytes
    ak_public: bytes
    srk_public: bytes
    srk_attest: bytes
    srk_signature: bytes
    post_public: bytes
    post_attest: bytes
    post_signature: bytes
    quote_attest: bytes
    quote_signature: bytes
    pcrs: dict[int, bytes]

    @staticmethod
    def parse(body: dict[str, Any] | Any) -> Evidence:
        f = Fields(body)
        blob = MAX_EVIDENCE_FIELD
        return Evidence(
            name=f.text("name", MAX_NAME_LEN),
            ek_public=f.blob("ek_public", blob, min_len=1),
            ek_cert=f.blob("ek_cert", blob, optional=True),
            ak_public=f.blob("ak_public", blob, min_len=1),
            srk_public=f.blob("srk_public", blob, min_len=1),
            srk_attest=f.blob("srk_attest", blob, min_len=1),
            srk_signature=f.blob("srk_signature", blob, min_len=1),
            post_public=f.blob("post_public", blob, min_len=1),
            post_attest=f.blob("post_attest", blob, min_len=1),
            post_signature=f.blob("post_signature", blob, min_len=1),
            quote_attest=f.blob("quote_attest", blob, min_len=1),
            quote_signature=f.blob("quote_signature", blob, min_len=1),
            pcrs=f.pcr_map("pcrs", MAX_PCRS, HASH_LEN),
        )


def activation_mac(psk: bytes, h: bytes) -> bytes:
    return hmac.new(psk, activation_message(h), hashlib.sha256).digest()


def check_ek(ev: Evidence, settings: EnrollSettings, now: float) -> str:
    """Trust decision on the EK; returns its fingerprint. Raises EK_UNTRUSTED / EK_MISMATCH."""
    if ev.ek_cert:
        cert = load_ek_cert(ev.ek_cert)
        ek_matches_cert(ev.ek_public, cert)
    if settings.policy is EnrollPolicy.REQUIRE_EK_CERT:
        if not ev.ek_cert:
            raise AttestgateError(ErrorCode.EK_UNTRUSTED, "no EK certificate")
        if settings.ca_store is None:
            raise AttestgateError(ErrorCode.EK_UNTRUSTED, "no EK CA configured")
        verify_ek_chain(ev.ek_cert, settings.ca_store, datetime.fromtimestamp(now, UTC))
    elif settings.policy is EnrollPolicy.ALLOWLIST:
        check_ek_allowlist(ev.ek_public, settings.allowlist)
    return ek_fingerprint(ev.ek_public)


def reenrolling(store: Store, ek_fpr: str) -> Device | None:
    """The device this EK enrolls again in place of (status REENROLL: the consequence
    ``reenroll`` or ``attestgate-admin allow-reenroll``), None for a new EK; raises
    ALREADY_ENROLLED when the EK belongs to a device in any other status."""
    existing = store.device_by_ek(ek_fpr)
    if existing is None:
        return None
    if existing.status is not DeviceStatus.REENROLL:
        raise AttestgateError(ErrorCode.ALREADY_ENROLLED, f"ek {ek_fpr[:16]}")
    return existing


@dataclass(frozen=True)
class Challenge:
    id_object: bytes
    encrypted_secret: bytes
    psk_public: bytes
    psk_duplicate: bytes
    psk_seed: bytes


def begin(body: dict[str, Any] | Any, store: Store, vault: Vault, settings: EnrollSettings,
          now: float, rng: Random) -> Challenge:
    """Verify enrollment evidence and issue the credential challenge; keeps a pending record."""
    f = Fields(body)
    h = f.blob("h", HASH_LEN, min_len=HASH_LEN)
    noise_public = f.blob("noise_public", DH_LEN, min_len=DH_LEN)
    f.text("token_id", 2 * TOKEN_ID_LEN, optional=True)
    log_z = f.blob("log_z", MAX_LOG_BUS, optional=True)  # protocol 3: the event log, if any
    ev = Evidence.parse(body)
    if not _NAME.fullmatch(ev.name):
        raise AttestgateError(ErrorCode.INVALID_NAME, ev.name[:64])
    named = store.device_by_name(ev.name)
    if named is not None and named.status is not DeviceStatus.REENROLL:
        raise AttestgateError(ErrorCode.NAME_TAKEN, ev.name)
    if store.device_by_noise(noise_public) is not None:
        raise AttestgateError(ErrorCode.ALREADY_ENROLLED, "noise key")
    ek_fpr = check_ek(ev, settings, now)
    replaces = reenrolling(store, ek_fpr)
    # A name held by a device in REENROLL is free only for that device's own TPM.
    if named is not None and (replaces is None or named.device_id != replaces.device_id):
        raise AttestgateError(ErrorCode.NAME_TAKEN, ev.name)
    ak = check_ak(ev.ak_public)
    nonce = quote_nonce(h)
    selection = PcrSelection.parse(settings.selection)
    verify_quote(ev.ak_public, ev.quote_attest, ev.quote_signature, qualifying_data=nonce,
                 selection=selection, pcr_values=ev.pcrs)
    # The log must replay to the quoted PCRs (LOG_INCONSISTENT otherwise); it is stored
    # with the baseline once the credential is activated (``finish``).
    log_ref = check_sent(log_z, str(selection), ev.pcrs).digest if log_z else ""
    check_srk(ev.srk_public)
    verify_certify(ev.ak_public, ev.srk_attest, ev.srk_signature,
                   certified_public=ev.srk_public, qualifying_data=nonce)
    check_post_key(ev.post_public)
    verify_certify(ev.ak_public, ev.post_attest, ev.post_signature,
                   certified_public=ev.post_public, qualifying_data=nonce)

    challenge, psk = rng(32), rng(32)
    id_object, enc_secret = make_credential(ev.ek_public, ak.name, challenge, rng)
    psk_public, psk_dup, psk_seed = wrap_hmac_key(ev.srk_public, psk, rng)
    device_id = device_id_for(noise_public)
    device = Device(
        device_id=device_id, name=ev.name, noise_public=noise_public,
        status=DeviceStatus.ACTIVE, enrolled_at=now, ek_public=ev.ek_public,
        ek_cert=ev.ek_cert, ek_fingerprint=ek_fpr, ak_public=ev.ak_public,
        srk_public=ev.srk_public, post_public=ev.post_public,
        baselines=(Baseline.of(str(selection), ev.pcrs, log_ref),),
        psk_sealed=vault.seal(psk, device_id, rng),
    )
    pending = pack({"device": device_to_bytes(device), "challenge": challenge, "log_z": log_z})
    store.put_pending(PENDING_BEGIN + h.hex(), pending, PENDING_TTL)
    return Challenge(id_object, enc_secret, psk_public, psk_dup, psk_seed)


def finish(body: dict[str, Any] | Any, store: Store, vault: Vault) -> Device:
    """Check the activated challenge and the TPM's HMAC over ``h``; hand the device to the
    registry (pending ``enrolled:<h>``). Raises CREDENTIAL_FAILED or PROTOCOL."""
    f = Fields(body)
    h = f.blob("h", HASH_LEN, min_len=HASH_LEN)
    answer = f.blob("challenge", 64, min_len=1)
    mac = f.blob("mac", HASH_LEN, min_len=HASH_LEN)
    raw = store.take_pending(PENDING_BEGIN + h.hex())
    if raw is None:
        raise AttestgateError(ErrorCode.PROTOCOL, "no enrollment in progress for this session")
    pending = Fields(unpack_map(raw, max_size=2 << 20))
    device = device_from_bytes(pending.blob("device", 1 << 20))
    challenge = pending.blob("challenge", 64)
    log_z = pending.blob("log_z", MAX_LOG_BUS, optional=True)
    psk = vault.unseal(device.psk_sealed, device.device_id)
    if not hmac.compare_digest(answer, challenge):
        raise AttestgateError(ErrorCode.CREDENTIAL_FAILED, "challenge answer differs")
    if not hmac.compare_digest(mac, activation_mac(psk, h)):
        raise AttestgateError(ErrorCode.CREDENTIAL_FAILED, "psk mac differs")
    if log_z and device.baselines[0].log:
        store.put_event_log(device.device_id, device.baselines[0].log, log_z)
    store.put_pending(PENDING_ENROLLED + h.hex(), device_to_bytes(device), PENDING_TTL)
    return device
