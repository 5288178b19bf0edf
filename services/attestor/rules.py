"""Acceptance by rule: a quote that matches no baseline, with a log that replays to it, is
accepted when the device's rule policy (``shared.eventlog.rules``) accepts every change
against one of its live reference states. Pure functions over the store and values.

The policy is the device's own, else the default for all; with neither, nothing changes
(the quote is refused as before). A policy that cannot be read refuses (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.attestor.eventlogs import reference_states, with_undescribed
from shared.errors import AttestgateError
from shared.eventlog import MachineState, StateDiff, diff_states
from shared.eventlog.rules import Rule, RuleDecision, RulePolicy, evaluate, parse_policy, refuse
from shared.records import Device
from shared.store.interface import Store


@dataclass(frozen=True)
class RuleOutcome:
    scope: str  # "device" or "default"
    policy: str  # the policy's digest ("" when it could not be read)
    baseline: str  # the reference baseline's id ("" when there was none)
    verdict: str  # the event-log verdict against that baseline
    decision: RuleDecision
    # The diff against that baseline: a refusal shows it (no second verification of its log).
    diff: StateDiff | None = field(default=None, compare=False)

    @property
    def accepted(self) -> bool:
        return self.decision.accepted

    def as_dict(self) -> dict[str, Any]:
        return {"policy": self.scope, "policy_digest": self.policy, "baseline": self.baseline,
                "verdict": self.verdict, **self.decision.as_dict()}


def policy_for(store: Store, device_id: str) -> tuple[str, bytes] | None:
    """(scope, stored document) of the policy that applies to a device, or None."""
    own = store.get_rule_policy(device_id)
    if own is not None:
        return "device", own
    default = store.get_rule_policy("")
    return ("default", default) if default is not None else None


def decide(store: Store, device: Device, current: MachineState, pcrs: Mapping[int, bytes],
           now: float) -> RuleOutcome | None:
    """The rule decision for a verified current state, or None when no policy applies."""
    found = policy_for(store, device.device_id)
    if found is None:
        return None
    scope, raw = found
    try:
        policy: RulePolicy = parse_policy(raw)
    except AttestgateError as exc:
        return RuleOutcome(scope, "", "", "", refuse(
            Rule.UNKNOWN_EVENTS, f"the {scope} rule policy cannot be read: {exc.detail}"))
    first: RuleOutcome | None = None
    for baseline, old in reference_states(store, device, pcrs, now):
        diff = with_undescribed(diff_states(old, current), old, current, baseline, pcrs)
        outcome = RuleOutcome(scope, policy.digest, baseline.baseline_id, diff.verdict.value,
                              evaluate(policy, old, current, diff, pcrs.keys()), diff)
        if outcome.accepted:
            return outcome
        first = first or outcome  # the closest reference explains the refusal
    return first or RuleOutcome(scope, policy.digest, "", "", refuse(
        Rule.APPROVAL, "no accepted baseline has an event log to compare with (approve one "
                       "with a log, or add one: attestgate-admin baseline add DEV --event-log "
                       "FILE)"))
