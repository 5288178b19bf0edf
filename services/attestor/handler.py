"""The attestor: enrollment evidence, session quotes, policy and audit. Pure handler.

Ops: ``enroll_begin``, ``enroll_finish`` (see ``enroll.py``) and ``attest``: the
quote that must be the first message of every reconnect (and of every
re-attestation), bound to the session's handshake hash ``h``. Read-only operator ops
for the web console: ``read_audit`` (newest entries, filtered by device and event) and
``verify_audit`` (the whole chain against its head and the checkpoint file).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from services.attestor import enroll, plugins, rules
from services.attestor.eventlogs import SentLog, capped, check_sent, compare, forget_refused_log
from services.attestor.policy import (
    AttestPolicy,
    Outcome,
    accepted,
    check_clock,
    in_window,
    matching_baseline,
    refused,
)
from shared.audit import AuditKey, ChainProblem, Checkpoint, canonical, verify_chain
from shared.binding import quote_nonce, reattest_nonce
from shared.bus.interface import Reply, Request
from shared.codec import Fields, pack
from shared.errors import AttestgateError, ErrorCode
from shared.handlers import Op, Refusal, dispatch
from shared.keys import Random
from shared.plugins import NO_PLUGINS, Action, Evidence, Plugins, Refused
from shared.records import Baseline, Device, refusal_for
from shared.store.interface import Store, forget_unreferenced_logs
from shared.timing import CONNECT_TS_AHEAD
from shared.tpm.keycache import KeyCache
from shared.tpm.pcrs import PcrChange, PcrSelection, diff_view, pcr_diff
from shared.tpm.quote import QuoteInfo, verify_quote
from shared.vault import Vault
from shared.wire import (
    HASH_LEN,
    MAX_BUS_MESSAGE,
    MAX_EVIDENCE_FIELD,
    MAX_LOG_BUS,
    MAX_LOG_TRANSFER,
    MAX_PCRS,
    REPLY_ENVELOPE_RESERVE,
)

_log = logging.getLogger("attestgate.attestor")

# Quote failures that count against the device: the evidence came over an
# authenticated channel, so a bad quote is the device's (or an attacker holding
# its keys') doing, not noise.
_COUNTED = frozenset({ErrorCode.QUOTE_INVALID, ErrorCode.QUOTE_BINDING, ErrorCode.PCR_DIGEST,
                      ErrorCode.CLOCK_ROLLBACK})


AUDIT_READ_MAX: Final = 500  # entries one read_audit reply may hold
AUDIT_PROBLEMS_MAX: Final = 100  # problems one verify_audit reply lists (all are counted)
AUDIT_BUDGET: Final = MAX_BUS_MESSAGE - REPLY_ENVELOPE_RESERVE
_AUDIT_ALL: Final = 1 << 62


@dataclass(frozen=True)
class AuditAnchor:
    """What ``verify_audit`` checks against: the audit key, and a reader of the checkpoint
    lines (None: no checkpoint file). The worker passes its own; tests pass fixed ones."""

    key: AuditKey
    checkpoints: Callable[[], list[Checkpoint | None] | None]


@dataclass(frozen=True)
class AttestorDeps:
    store: Store
    vault: Vault
    enroll: enroll.EnrollSettings
    policy: AttestPolicy
    rng: Random = os.urandom
    audit: AuditAnchor | None = None  # None: verify_audit answers not_found
    # AKs parsed once per device (re-parsed when a device's AK bytes change).
    keys: KeyCache = field(default_factory=KeyCache)
    plugins: Plugins = NO_PLUGINS  # custom policies and consequences (shared/plugins.py)


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
    connect_ts = f.integer("ts", 0, 2**63 - 1, default=-1)
    attest = f.blob("attest", MAX_EVIDENCE_FIELD, min_len=1)
    signature = f.blob("signature", MAX_EVIDENCE_FIELD, min_len=1)
    pcrs = f.pcr_map("pcrs", MAX_PCRS, HASH_LEN)
    # Protocol 3: the client says it has an event log (log_size); the gateway forwards it
    # (log_z) only after this op answered need_log for a quote that matches no baseline.
    log_size = f.integer("log_size", 0, MAX_LOG_TRANSFER, default=0)
    log_z = f.blob("log_z", MAX_LOG_BUS, optional=True)
    device = _confirmed(deps, device_id, connect_ts, now)
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
                            selection=_selection(selection_text), pcr_values=pcrs)
        check_clock(device, info.reset_count, info.clock)
    except AttestgateError as exc:
        if exc.code not in _COUNTED:
            raise
        return _refuse(deps, device_id, exc.code, exc.detail, (), None, now)
    sent: SentLog | None = None
    if log_z:
        try:
            sent = check_sent(log_z, selection_text, pcrs)
        except AttestgateError as exc:
            if exc.code is not ErrorCode.LOG_INCONSISTENT:
                raise
            return _refuse(deps, device_id, exc.code, exc.detail, (), None, now)
    by_rule: rules.RuleOutcome | None = None
    if matching_baseline(device, pcrs, now) is None:
        if log_size and sent is None:
            # Not counted, not audited: the same quote comes back with the log.
            return Reply(req.id, {"need_log": True})
        by_rule = rules.decide(deps.store, device, sent.state, pcrs, now) if sent else None
        if by_rule is None or not by_rule.accepted:
            return _mismatch(deps, device, selection_text, pcrs, sent, now, by_rule)
    if deps.plugins.policies:
        refusal = _custom_policies(deps, device, pcrs, info, now, bool(server_nonce))
        if refusal is not None:
            return refusal
    return _accept(req.id, deps, device, h, bool(server_nonce), info, by_rule, pcrs, now)


@functools.lru_cache(maxsize=64)
def _selection(text: str) -> PcrSelection:
    """A device's selection text, parsed once (a fleet has few; the result is immutable)."""
    return PcrSelection.parse(text)


def _accept(req_id: str, deps: AttestorDeps, device: Device, h: bytes, reattest: bool,
            info: QuoteInfo, by_rule: rules.RuleOutcome | None, pcrs: dict[int, bytes],
            now: float) -> Reply:
    """Count an accepted attestation and audit it (with the rules, when by rule)."""
    device_id = device.device_id
    new = deps.store.update_device(device_id,
                                   lambda d: accepted(d, now, info.reset_count, info.clock))
    forget_unreferenced_logs(deps.store, device, new)  # baselines past their grace
    detail: dict[str, Any] = {"h": h.hex()[:16], "reattest": reattest,
                              "reset_count": info.reset_count}
    if by_rule is None:
        deps.store.append_audit("attest_ok", device_id, detail, now)
    else:  # not by an exact baseline: the entry names the policy and the rules that accepted
        deps.store.append_audit("attest_ok_by_rule", device_id,
                                {**detail, "rules": by_rule.as_dict()}, now)
    # The server's view for the client to keep (``attestgate check`` compares with it); a
    # state accepted by rule is one the device is accepted in, too.
    view = accepted_view(new, now)
    if by_rule is not None:
        view = [{str(i): v for i, v in sorted(pcrs.items())}, *view][:SERVER_VIEW_BASELINES]
    return Reply(req_id, {"device_id": device_id, "name": device.name,
                          "status": new.status.value, "baselines": view})


def _mismatch(deps: AttestorDeps, device: Device, selection: str, pcrs: dict[int, bytes],
              sent: SentLog | None, now: float, by_rule: rules.RuleOutcome | None) -> Reply:
    """PCRs that match no baseline: refused with the PCR diff and, when both this log and a
    baseline's are there, what changed in the event log's words (and, under a rule policy,
    why no rule accepted it)."""
    diff = pcr_diff(device.baselines[0].as_dict(), pcrs)
    evdiff = None
    if sent is not None:
        deps.store.put_event_log(device.device_id, sent.digest, sent.blob)
        found = (by_rule.diff if by_rule is not None and by_rule.diff is not None
                 else compare(deps.store, device, sent.state, pcrs))
        evdiff = capped(found) if found is not None else None
    return _refuse(deps, device.device_id, ErrorCode.PCR_MISMATCH, "pcrs differ", diff,
                   Baseline.of(selection, pcrs, sent.digest if sent else ""), now, evdiff,
                   rule_doc=by_rule.as_dict() if by_rule is not None else None)


def _confirmed(deps: AttestorDeps, device_id: str, connect_ts: int, now: float
               ) -> Device | None:
    """The device (None: unknown). The gateway sends message 1's timestamp (< 0: none,
    a re-attestation) with the first transport message, which decrypted: the device's TPM
    computed the session PSK. Only now does the replay guard advance (never past the clock
    + CONNECT_TS_AHEAD), in the same store round trip as the device's read; concurrent
    sessions of one device may confirm out of order, so an older timestamp is not an error
    here."""
    ceiling = int((now + CONNECT_TS_AHEAD) * 1e9)
    return deps.store.confirm_connect(device_id, min(connect_ts, ceiling))


def _custom_policies(deps: AttestorDeps, device: Device, pcrs: dict[int, bytes], info: QuoteInfo,
                     now: float, reattest: bool) -> Reply | None:
    """Run the policy plugins over the verified evidence; a refusal (or a failing plugin:
    fail closed) is counted and audited like any other."""
    ev = plugins.evidence(device, pcrs, info, now, reattest)
    verdict = plugins.run_policies(deps.plugins.policies, ev)
    if verdict.accepted:
        return None
    _plugin_failures(deps, device.device_id, verdict.failures, now)
    deps.store.append_audit("policy_refused", device.device_id,
                            {"plugin": verdict.plugin, "reason": verdict.reason}, now)
    return _refuse(deps, device.device_id, ErrorCode.POLICY_REFUSED,
                   f"plugin {verdict.plugin}: {verdict.reason}", (), None, now, ev=ev)


SERVER_VIEW_BASELINES: Final = 16  # newest accepted baselines sent to the client


def accepted_view(device: Device, now: float) -> list[dict[str, bytes]]:
    """The baselines the device is accepted in now (newest first), PCR index text -> value."""
    live = [b for b in device.baselines if b.live(now)]
    live.sort(key=lambda b: b.approved_at, reverse=True)
    return [{str(i): v for i, v in b.values} for b in live[:SERVER_VIEW_BASELINES]]


def _refuse(deps: AttestorDeps, device_id: str, code: ErrorCode, detail: str,
            diff: tuple[PcrChange, ...], state: Baseline | None, now: float,
            evdiff: dict[str, Any] | None = None, ev: Evidence | None = None,
            rule_doc: dict[str, Any] | None = None) -> Reply:
    """Count and audit a refusal; ``evdiff`` (event-log diff, capped) rides along when
    both logs were there: in the push, the audit entry and the device record; so does
    ``rule_doc``, why the rule policy did not accept the state. A consequence plugin sees
    ``ev`` and may escalate."""
    extra = {**({"eventlog": evdiff} if evdiff else {}),
             **({"rules": rule_doc} if rule_doc else {})}
    outcomes: list[Outcome] = []
    action = _plugin_action(deps, device_id, code, diff, ev, now)

    def change(d: Device) -> Device:
        out = plugins.escalate(refused(d, deps.policy, diff, state), action)
        if state is not None:  # a new refused state: its log diff (or none) replaces the old
            out = dataclasses.replace(out, device=dataclasses.replace(
                out.device, last_eventlog=canonical({**evdiff, **({"rules": rule_doc} if rule_doc
                                                                  else {})}) if evdiff else ""))
        outcomes.append(out)  # the last try is the one stored
        return outcomes[-1].device

    before = deps.store.get_device(device_id)
    deps.store.update_device(device_id, change)
    outcome = outcomes[-1]
    if before is not None and state is not None:
        forget_refused_log(deps.store, before, outcome.device)
    changed = diff_view(diff)
    deps.store.append_audit("attest_refused", device_id,
                            {"code": code.value, "changed": changed,
                             "failures": outcome.device.failures, **extra}, now)
    if outcome.consequence is not None:
        deps.store.append_audit(f"consequence_{outcome.consequence.value}", device_id,
                                {"failures": outcome.device.failures,
                                 "status": outcome.device.status.value}, now)
        _log.warning("ALERT device=%s failures=%d consequence=%s status=%s", device_id,
                     outcome.device.failures, outcome.consequence.value,
                     outcome.device.status.value)
    body = {"changed": changed, "failures": outcome.device.failures,
            "max_failures": deps.policy.max_failures, "status": outcome.device.status.value,
            **extra}
    raise Refusal(code, detail, body, outcome.events)


def _plugin_action(deps: AttestorDeps, device_id: str, code: ErrorCode,
                   diff: tuple[PcrChange, ...], ev: Evidence | None, now: float) -> Action:
    """What the consequence plugins ask for after this refusal (audited when they act)."""
    if not deps.plugins.consequences:
        return Action.none()
    device = deps.store.get_device(device_id)
    if device is None:
        return Action.none()
    verdict = plugins.run_consequences(
        deps.plugins.consequences,
        Refused(plugins.device_view(device), code.value, device.failures + 1,
                tuple(diff_view(diff)), ev, now))
    _plugin_failures(deps, device_id, verdict.failures, now)
    if verdict.action.kind is not None:
        deps.store.append_audit("plugin_action", device_id,
                                {"plugin": verdict.plugin, "action": verdict.action.kind.value,
                                 "reason": verdict.action.reason[:200]}, now)
    return verdict.action


def _plugin_failures(deps: AttestorDeps, device_id: str,
                     failures: tuple[plugins.Failure, ...], now: float) -> None:
    for f in failures:
        _log.error("plugin failed (fail closed) plugin=%s device=%s problem=%s", f.plugin,
                   device_id, f.problem)
        deps.store.append_audit("plugin_failed", device_id,
                                {"plugin": f.plugin, "problem": f.problem}, now)


# -- read-only operator views (services/console) -----------------------------------------


def _read_audit(req: Request, deps: AttestorDeps, now: float) -> Reply:
    """The newest ``limit`` entries (newest first) of one device and/or one event."""
    f = Fields(req.body)
    device_id = f.text("device_id", 64, optional=True) or None
    event = f.text("event", 64, optional=True)
    limit = f.integer("limit", 1, AUDIT_READ_MAX, default=100)
    entries = [e for e in deps.store.read_audit(device_id, _AUDIT_ALL)
               if not event or e.event == event]
    views: list[dict[str, Any]] = []
    used = 0
    for e in reversed(entries[-limit:]):
        view = {"entry_id": e.entry_id, "ts": e.ts, "event": e.event,
                "device_id": e.device_id, "detail": e.detail}
        used += len(pack(view))
        if used > AUDIT_BUDGET:
            break
        views.append(view)
    return Reply(req.id, {"entries": views, "total": len(entries)})


def _verify_audit(req: Request, deps: AttestorDeps, now: float) -> Reply:
    """Check the whole chain, as ``attestgate-admin audit --verify`` does."""
    if deps.audit is None:
        raise AttestgateError(ErrorCode.NOT_FOUND, "no audit key given to this worker")
    chain = list(deps.store.read_audit(None, _AUDIT_ALL))
    checkpoints = deps.audit.checkpoints()
    problems = verify_chain(chain, deps.store.audit_head(), deps.audit.key, checkpoints or [])
    if checkpoints is None and chain:
        problems.append(ChainProblem("", "unanchored"))
    return Reply(req.id, {
        "checked": len(chain), "problem_count": len(problems),
        "problems": [{"entry_id": p.entry_id, "check": p.problem}
                     for p in problems[:AUDIT_PROBLEMS_MAX]]})


_OPS: dict[str, Op[AttestorDeps]] = {
    "enroll_begin": _enroll_begin,
    "enroll_finish": _enroll_finish,
    "attest": _attest,
    "read_audit": _read_audit,
    "verify_audit": _verify_audit,
}


def handle(request: Request, deps: AttestorDeps, now: float) -> Reply:
    return dispatch(_OPS, request, deps, now, _log)


