"""The attestor: enrollment evidence, session quotes, policy and audit. Pure handler.

Ops: ``enroll_begin``, ``enroll_finish`` (see ``enroll.py``) and ``attest``: the
quote that must be the first message of every reconnect (and of every
re-attestation), bound to the session's handshake hash ``h``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from services.attestor import enroll
from services.attestor.policy import (
    AttestPolicy,
    Outcome,
    accepted,
    check_clock,
    in_window,
    matching_baseline,
    refused,
)
from shared.binding import quote_nonce, reattest_nonce
from shared.bus.interface import Reply, Request
from shared.codec import Fields
from shared.errors import AttestgateError, ErrorCode
from shared.handlers import Op, Refusal, dispatch
from shared.keys import Random
from shared.records import Baseline, Device, refusal_for
from shared.store.interface import Store
from shared.tpm.keycache import KeyCache
from shared.tpm.pcrs import PcrChange, PcrSelection, diff_view, pcr_diff
from shared.tpm.quote import verify_quote
from shared.vault import Vault
from shared.wire import HASH_LEN, MAX_EVIDENCE_FIELD, MAX_PCRS

_log = logging.getLogger("attestgate.attestor")

# Quote failures that count against the device: the evidence came over an
# authenticated channel, so a bad quote is the device's (or an attacker holding
# its keys') doing, not noise.
_COUNTED = frozenset({ErrorCode.QUOTE_INVALID, ErrorCode.QUOTE_BINDING, ErrorCode.PCR_DIGEST,
                      ErrorCode.CLOCK_ROLLBACK})


@dataclass(frozen=True)
class AttestorDeps:
    store: Store
    vault: Vault
    enroll: enroll.EnrollSettings
    policy: AttestPolicy
    rng: Random = os.urandom
    # AKs parsed once per device (re-parsed when a device's AK bytes change).
    keys: KeyCache = field(default_factory=KeyCache)


def _enroll_begin(req: Request, deps: AttestorDeps, now: float) -> Reply:
    try:
        c = enroll.begin(req.body, deps.store, deps.vault, deps.enroll, now, deps.rng)
    except AttestgateError as exc:
        deps.store.append_audit("enroll_refused", "", {"code": exc.code.value,
                                                       "name": str(req.body.get("name", ""))[:64]},
                                now)
        raise
    return Reply(req.id, {"id_object": c.id_object, "encrypted_secret": c.encrypted_secret,
                          "psk_public": c.psk_public, "psk_duplicate": c.psk_duplicate,
                          "psk_seed": c.psk_seed})


def _enroll_finish(req: Request, deps: AttestorDeps, now: float) -> Reply:
    device = enroll.finish(req.body, deps.store, deps.vault)
    return Reply(req.id, {"device_id": device.device_id})


def _attest(req: Request, deps: AttestorDeps, now: float) -> Reply:
    f = Fields(req.body)
    device_id = f.text("device_id", 64)
    h = f.blob("h", HASH_LEN, min_len=HASH_LEN)
    server_nonce = f.blob("nonce", 64, optional=True)
    attest = f.blob("attest", MAX_EVIDENCE_FIELD, min_len=1)
    signature = f.blob("signature", MAX_EVIDENCE_FIELD, min_len=1)
    pcrs = f.pcr_map("pcrs", MAX_PCRS, HASH_LEN)
    device = deps.store.get_device(device_id)
    if device is None:
        raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, device_id)
    code = refusal_for(device.status)
    if code is not None:
        raise AttestgateError(code, device_id)
    if not in_window(deps.policy.window, now):
        deps.store.append_audit("attest_refused", device_id, {"code": "outside_window"}, now)
        raise AttestgateError(ErrorCode.OUTSIDE_WINDOW, device_id)
    nonce = reattest_nonce(h, server_nonce) if server_nonce else quote_nonce(h)
    selection_text = device.baselines[0].selection
    try:
        ak = deps.keys.get(device_id, "ak", device.ak_public, code=ErrorCode.AK_INVALID)
        info = verify_quote(ak, attest, signature, qualifying_data=nonce,
                            selection=PcrSelection.parse(selection_text), pcr_values=pcrs)
        check_clock(device, info.reset_count, info.clock)
    except AttestgateError as exc:
        if exc.code not in _COUNTED:
            raise
        return _refuse(deps, device_id, exc.code, exc.detail, (), None, now)
    if matching_baseline(device, pcrs) is None:
        diff = pcr_diff(device.baselines[0].as_dict(), pcrs)
        return _refuse(deps, device_id, ErrorCode.PCR_MISMATCH, "pcrs differ", diff,
                       Baseline.of(selection_text, pcrs), now)
    deps.store.update_device(device_id, lambda d: accepted(d, now, info.reset_count, info.clock))
    deps.store.append_audit("attest_ok", device_id,
                            {"h": h.hex()[:16], "reattest": bool(server_nonce),
                             "reset_count": info.reset_count}, now)
    return Reply(req.id, {"device_id": device_id, "name": device.name})


def _refuse(deps: AttestorDeps, device_id: str, code: ErrorCode, detail: str,
            diff: tuple[PcrChange, ...], state: Baseline | None, now: float) -> Reply:
    outcomes: list[Outcome] = []

    def change(d: Device) -> Device:
        outcomes.append(refused(d, deps.policy, diff, state))  # the last try is the one stored
        return outcomes[-1].device

    deps.store.update_device(device_id, change)
    outcome = outcomes[-1]
    changed = diff_view(diff)
    deps.store.append_audit("attest_refused", device_id,
                            {"code": code.value, "changed": changed,
                             "failures": outcome.device.failures}, now)
    if outcome.consequence is not None:
        deps.store.append_audit(f"consequence_{outcome.consequence.value}", device_id,
                                {"failures": outcome.device.failures,
                                 "status": outcome.device.status.value}, now)
        _log.warning("ALERT device=%s failures=%d consequence=%s status=%s", device_id,
                     outcome.device.failures, outcome.consequence.value,
                     outcome.device.status.value)
    body = {"changed": changed, "failures": outcome.device.failures,
            "max_failures": deps.policy.max_failures, "status": outcome.device.status.value}
    raise Refusal(code, detail, body, outcome.events)


_OPS: dict[str, Op[AttestorDeps]] = {
    "enroll_begin": _enroll_begin,
    "enroll_finish": _enroll_finish,
    "attest": _attest,
}


def handle(request: Request, deps: AttestorDeps, now: float) -> Reply:
    return dispatch(_OPS, request, deps, now, _log)


