"""Running the custom policies and consequences (shared/plugins.py). Pure functions.

Every way a plugin can fail — not loaded, raises, returns the wrong type — is a
:class:`Failure` the caller audits; for a policy it refuses the attestation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from services.attestor.policy import Outcome
from shared.bus.interface import BusEvent
from shared.config import Consequence
from shared.plugins import (
    Action,
    ActionKind,
    Decision,
    DeviceView,
    Evidence,
    Plugin,
    QuoteView,
    Refused,
)
from shared.records import Device, DeviceStatus
from shared.tpm.quote import QuoteInfo
from shared.wire import Event

log = logging.getLogger("attestgate.attestor")

# The strictest action wins; an action changes an ACTIVE device only (as the built-ins).
_RANK: Final = {ActionKind.ALERT: 0, ActionKind.REENROLL: 1, ActionKind.LOCK: 2,
                ActionKind.REVOKE: 3}
_APPLY: Final = {
    ActionKind.LOCK: (DeviceStatus.LOCKED, Event.DEVICE_LOCKED),
    ActionKind.REVOKE: (DeviceStatus.REVOKED, Event.DEVICE_REVOKED),
    ActionKind.REENROLL: (DeviceStatus.REENROLL, Event.DEVICE_LOCKED),
}


@dataclass(frozen=True)
class Failure:
    plugin: str
    problem: str


@dataclass(frozen=True)
class PolicyVerdict:
    accepted: bool
    plugin: str = ""  # the plugin that refused (or failed)
    reason: str = ""
    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True)
class ActionVerdict:
    action: Action
    plugin: str = ""
    failures: tuple[Failure, ...] = ()


def device_view(d: Device) -> DeviceView:
    return DeviceView(d.device_id, d.name, d.status.value, d.failures, d.enrolled_at,
                      d.last_attest_at, d.ek_fingerprint,
                      d.baselines[0].selection if d.baselines else "", len(d.baselines))


def evidence(d: Device, pcrs: Mapping[int, bytes], info: QuoteInfo, now: float,
             reattest: bool) -> Evidence:
    return Evidence(device_view(d), MappingProxyType(dict(pcrs)),
                    QuoteView(info.clock, info.reset_count, info.restart_count, info.safe,
                              info.firmware_version), now, reattest)


def _call(plugin: Plugin, arg: object, want: type) -> tuple[Any, Failure | None]:
    if plugin.fn is None:
        return None, Failure(plugin.name, plugin.error or "not loaded")
    try:
        result = plugin.fn(arg)
    except Exception as exc:  # fail closed on anything a plugin raises
        log.exception("plugin failed plugin=%s", plugin.name)
        return None, Failure(plugin.name, f"raised {type(exc).__name__}")
    if not isinstance(result, want):
        return None, Failure(plugin.name, f"returned {type(result).__name__}, "
                                          f"not {want.__name__}")
    return result, None


def run_policies(plugins: tuple[Plugin, ...], ev: Evidence) -> PolicyVerdict:
    """Accepted only if every policy accepts; the first refusal or failure decides."""
    for plugin in plugins:
        decision, failure = _call(plugin, ev, Decision)
        if failure is not None:
            return PolicyVerdict(False, plugin.name, failure.problem, (failure,))
        if not decision.accepted:
            return PolicyVerdict(False, plugin.name, str(decision.reason)[:200])
    return PolicyVerdict(True)


def run_consequences(plugins: tuple[Plugin, ...], refused: Refused) -> ActionVerdict:
    """The strictest action any consequence plugin asks for; failures are listed."""
    best = Action.none()
    by = ""
    failures = []
    for plugin in plugins:
        action, failure = _call(plugin, refused, Action)
        if failure is not None:
            failures.append(failure)
            continue
        if not isinstance(action.kind, ActionKind | None):
            failures.append(Failure(plugin.name, "action kind is not an ActionKind"))
            continue
        if action.kind is not None and (best.kind is None
                                        or _RANK[action.kind] > _RANK[best.kind]):
            best, by = action, plugin.name
    return ActionVerdict(best, by, tuple(failures))


def escalate(outcome: Outcome, action: Action) -> Outcome:
    """``outcome`` with ``action`` applied, if it is stricter than what already applied."""
    if action.kind is None or action.kind is ActionKind.ALERT:
        return outcome
    device = outcome.device
    if device.status is not DeviceStatus.ACTIVE:
        return outcome
    status, event = _APPLY[action.kind]
    return Outcome(dataclasses.replace(device, status=status),
                   (*outcome.events, BusEvent(event.value, {"device_id": device.device_id,
                                                            "status": status.value})),
                   Consequence(action.kind.value))
