"""Fuzz the attestor's evidence handling through its pure handler.

``handle(request, deps, now)`` is what a worker runs for every bus request; its
dispatcher turns our own errors into reply codes and lets anything else escape,
so an input that escapes here would be an ``internal`` reply (and a traceback) in
production. Bodies are what the gateway forwards: a genuine enrollment (software
AK and post key, swtpm EK/certificate and SRK) or reconnect quote, mutated one
field at a time (bytes, type, presence) or as msgpack bytes.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest
import tpm_kat_data as kat
from cryptography.hazmat.primitives.asymmetric import ec
from device_builders import NOW, SELECTION, VAULT_KEY, make_device, pcr_values
from tpm_builders import post_key_public, quote_attest, sign_data, tpm_name
from tpm_unit_helpers import certify_attest, ecc_public, ecdsa_sig

from services.attestor.enroll import PENDING_BEGIN, EnrollSettings, activation_mac
from services.attestor.handler import AttestorDeps, handle
from services.attestor.policy import AttestPolicy
from shared.binding import quote_nonce, reattest_nonce
from shared.bus.interface import Request
from shared.codec import unpack_map
from shared.config import Consequence, EnrollPolicy
from shared.errors import AttestgateError
from shared.store.memory import MemoryStore
from shared.store.serialize import device_from_bytes
from shared.tpm.structures import name_of
from shared.vault import Vault
from tests.support.fuzz import FUZZ_INPUTS, BodyMutator, check_reply, run

# A loaded CI machine may run a target several times slower than its ~10-60 s here; the
# per-input hang check (tests.support.fuzz.HANG_S) is what catches a hang.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

H = hashlib.sha256(b"handshake hash").digest()
NOISE_PUBLIC = b"\x07" * 32
AK_KEY = ec.derive_private_key(0x1111, ec.SECP256R1())
POST_KEY = ec.derive_private_key(0x2222, ec.SECP256R1())
VAULT = Vault(VAULT_KEY)
POLICY = AttestPolicy(SELECTION, 3, Consequence.LOCK, None)

def _deps(store: MemoryStore, policy: EnrollPolicy = EnrollPolicy.TOFU) -> AttestorDeps:
    return AttestorDeps(store, VAULT, EnrollSettings(policy, None, frozenset(), SELECTION),
                        POLICY, rng=random.Random(3).randbytes)


def _enroll_body() -> dict[str, Any]:
    nonce = quote_nonce(H)
    ak = ecc_public(AK_KEY).marshal()
    post = post_key_public(POST_KEY)
    pcrs = pcr_values()
    quote = quote_attest(pcrs, extra_data=nonce, signer=tpm_name(ak))
    srk_attest = certify_attest(name_of(kat.SRK_PUBLIC), extra=nonce)
    post_attest = certify_attest(name_of(post), extra=nonce)
    return {"name": "fuzz-dev", "ek_public": kat.EK_RSA_PUBLIC, "ek_cert": kat.EK_RSA_CERT,
            "ak_public": ak, "srk_public": kat.SRK_PUBLIC, "srk_attest": srk_attest,
            "srk_signature": ecdsa_sig(AK_KEY, srk_attest), "post_public": post,
            "post_attest": post_attest, "post_signature": ecdsa_sig(AK_KEY, post_attest),
            "quote_attest": quote, "quote_signature": sign_data(AK_KEY, quote),
            "pcrs": {str(i): v for i, v in pcrs.items()}, "h": H, "noise_public": NOISE_PUBLIC,
            "token_id": ""}


# See test_fuzz_tpm.test_fuzz_ek_certificate_loading: cryptography warns, and loads.
@pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")
def test_fuzz_attestor_enroll_begin_and_finish() -> None:
    genuine = _enroll_body()
    p384 = {**genuine, "ek_public": kat.EK_P384_PUBLIC, "ek_cert": kat.EK_P384_CERT}
    no_cert = {**genuine, "ek_cert": b""}
    begun = MemoryStore()
    reply = handle(Request("r0", "attestor", "enroll_begin", genuine, NOW + 5), _deps(begun), NOW)
    assert reply.ok, reply
    pending = dict(begun.pending)
    challenge = unpack_map(pending[PENDING_BEGIN + H.hex()], max_size=1 << 20)["challenge"]
    psk = VAULT.unseal(*_psk_of(pending))
    finish = {"h": H, "challenge": challenge, "mac": activation_mac(psk, H)}
    begin_bodies = BodyMutator([genuine, p384, no_cert])
    finish_bodies = BodyMutator([finish])

    def generate(rng: random.Random) -> tuple[str, dict[str, Any]]:
        if rng.random() < 0.8:
            return "enroll_begin", begin_bodies(rng)
        return "enroll_finish", finish_bodies(rng)

    def check(case: tuple[str, dict[str, Any]]) -> None:
        op, body = case
        store = MemoryStore()
        if op == "enroll_finish":
            store.pending.update(pending)
        reply = handle(Request("r1", "attestor", op, body, NOW + 5), _deps(store), NOW)
        check_reply(reply)
        if reply.error is not None:
            raise AttestgateError(reply.error)  # counted by code in the summary
        assert not store.devices  # the attestor never stores a device itself

    result = run("attestor enroll_begin/enroll_finish", generate, check)
    assert result.inputs >= FUZZ_INPUTS


def _psk_of(pending: dict[str, bytes]) -> tuple[bytes, str]:
    raw = unpack_map(pending[PENDING_BEGIN + H.hex()], max_size=1 << 20)["device"]
    device = device_from_bytes(raw)
    return device.psk_sealed, device.device_id


def test_fuzz_attestor_attest() -> None:
    """The reconnect quote (and a re-attestation's), evidence every enrolled device sends."""
    dev = make_device("alice", vault=VAULT)
    bodies = []
    for server_nonce in (None, b"s" * 32):
        nonce = quote_nonce(H) if server_nonce is None else reattest_nonce(H, server_nonce)
        attest = quote_attest(dev.pcrs, extra_data=nonce, signer=tpm_name(dev.record.ak_public))
        body = {"device_id": dev.device_id, "h": H, "attest": attest,
                "signature": sign_data(dev.ak, attest),
                "pcrs": {str(i): v for i, v in dev.pcrs.items()}}
        if server_nonce is not None:
            body["nonce"] = server_nonce
        bodies.append(body)
    store = MemoryStore()
    store.devices[dev.device_id] = dev.record
    assert handle(Request("r0", "attestor", "attest", bodies[0], NOW + 5), _deps(store), NOW).ok
    mutate = BodyMutator(bodies)

    def check(body: dict[str, Any]) -> None:
        store = MemoryStore()
        store.devices[dev.device_id] = dev.record
        reply = handle(Request("r1", "attestor", "attest", body, NOW + 5), _deps(store), NOW)
        check_reply(reply)
        if reply.error is not None:
            raise AttestgateError(reply.error)

    assert run("attestor attest (reconnect quote)", mutate, check).inputs >= FUZZ_INPUTS
