"""Extension points: custom attestation policies and consequences, as Python entry points.

A distribution registers callables under two entry-point groups::

    [project.entry-points."attestgate.policies"]
    business-hours = "mypkg.rules:business_hours"       # (Evidence) -> Decision

    [project.entry-points."attestgate.consequences"]
    revoke-on-rollback = "mypkg.rules:revoke_on_rollback"   # (Refused) -> Action

The attestor loads both groups once at start (:func:`load`) and is given them (deps).

* A **policy** runs after the built-in checks accepted a quote (signature, binding to the
  session, clock, PCRs equal to an approved baseline). It gets the verified
  :class:`Evidence` and returns :class:`Decision` — ``Decision.accept()`` or
  ``Decision.refuse("reason")``. Any refusal refuses the attestation with the code
  ``policy_refused`` and counts as a failure (the built-in consequences then apply).
* A **consequence** runs after each refusal (built-in or policy). It gets a
  :class:`Refused` and returns :class:`Action`: ``Action.none()`` or an action among
  ``lock``, ``revoke``, ``reenroll``, ``alert``; the strictest action of all plugins is
  applied at once (on top of the built-in threshold), audited as ``consequence_<action>``.

Fail closed: a plugin that cannot be imported, is not callable, raises, or returns
anything but the type above refuses the attestation (a policy) or leaves the refusal
as it is (a consequence); each such failure is audited (``plugin_failed``) and logged.
Plugins see only frozen views: no key, no secret, no store. They run in the attestor's
worker, synchronously: keep them short (the gateway's bus deadline applies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import entry_points
from typing import Any, Final

log = logging.getLogger("attestgate.plugins")

POLICY_GROUP: Final = "attestgate.policies"
CONSEQUENCE_GROUP: Final = "attestgate.consequences"


@dataclass(frozen=True)
class DeviceView:
    """What a plugin may know about the device (no key material, no secret)."""

    device_id: str
    name: str
    status: str  # active | locked | revoked | reenroll
    failures: int  # consecutive failed attestations before this one
    enrolled_at: float
    last_attest_at: float
    ek_fingerprint: str
    selection: str  # the PCR selection, e.g. "sha256:0,7,16"
    approved_baselines: int


@dataclass(frozen=True)
class QuoteView:
    """The verified quote's facts beyond the PCRs."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int


@dataclass(frozen=True)
class Evidence:
    """A quote the built-in checks accepted: the device, its PCR values, the quote."""

    device: DeviceView
    pcrs: Mapping[int, bytes]  # read-only
    quote: QuoteView
    now: float  # seconds since the epoch
    reattest: bool  # a periodic re-attestation inside a session (else a connect)


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason: str = ""

    @staticmethod
    def accept() -> Decision:
        return Decision(True)

    @staticmethod
    def refuse(reason: str) -> Decision:
        return Decision(False, reason)


class ActionKind(StrEnum):
    LOCK = "lock"
    REVOKE = "revoke"
    REENROLL = "reenroll"
    ALERT = "alert"


@dataclass(frozen=True)
class Refused:
    """A refused attestation: the device (before this refusal), the code, the failure count
    after it, the PCR difference (empty if not about PCRs), the evidence if the quote was
    verified (a policy refusal), else None."""

    device: DeviceView
    code: str
    failures: int
    changed: tuple[Mapping[str, Any], ...]
    evidence: Evidence | None
    now: float


@dataclass(frozen=True)
class Action:
    kind: ActionKind | None
    reason: str = ""

    @staticmethod
    def none() -> Action:
        return Action(None)

    @staticmethod
    def of(kind: ActionKind, reason: str = "") -> Action:
        return Action(kind, reason)


@dataclass(frozen=True)
class Plugin:
    """A loaded entry point: ``fn`` is the callable, or None with ``error`` saying why not."""

    name: str
    fn: Callable[[Any], Any] | None
    error: str = ""


@dataclass(frozen=True)
class Plugins:
    policies: tuple[Plugin, ...] = ()
    consequences: tuple[Plugin, ...] = ()


NO_PLUGINS: Final = Plugins()


def load(group: str) -> tuple[Plugin, ...]:
    """Every entry point of ``group``, sorted by name; one that cannot be loaded is kept as
    a failed :class:`Plugin` (it then fails closed each time it would run)."""
    found = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception as exc:  # a plugin's import may fail in any way
            log.error("plugin not loaded group=%s name=%s value=%s error=%s", group, ep.name,
                      ep.value, type(exc).__name__)
            found.append(Plugin(ep.name, None, f"import failed: {type(exc).__name__}"))
            continue
        if not callable(obj):
            log.error("plugin not callable group=%s name=%s value=%s", group, ep.name, ep.value)
            found.append(Plugin(ep.name, None, "not callable"))
            continue
        log.info("plugin loaded group=%s name=%s value=%s", group, ep.name, ep.value)
        found.append(Plugin(ep.name, obj))
    return tuple(found)


def load_all() -> Plugins:
    return Plugins(load(POLICY_GROUP), load(CONSEQUENCE_GROUP))
