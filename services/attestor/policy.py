"""The policy engine: what an attestation result does to a device. Pure functions.

Accepted: the failure counter resets and the TPM clock is remembered. Refused:
the counter goes up, the refused state is kept for ``approve``, and at
``max_failures`` consecutive failures the configured consequence applies
(lock, revoke, require re-enrollment, or only alert).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from shared.bus.interface import BusEvent
from shared.config import Consequence
from shared.errors import AttestgateError, ErrorCode
from shared.records import Baseline, Device, DeviceStatus
from shared.tpm.pcrs import PcrChange, pcr_diff
from shared.wire import Event

CLOCK_SKEW_MS = 60_000  # TPM clock (ms) may lag the newest seen by this much in one boot


@dataclass(frozen=True)
class AttestPolicy:
    selection: str
    max_failures: int
    consequence: Consequence
    window: tuple[int, int] | None  # minutes since midnight UTC [start, end), or None

    @staticmethod
    def parse_window(text: str) -> tuple[int, int] | None:
        """``"HH:MM-HH:MM"`` (UTC) or "" for always; raises BAD_REQUEST."""
        if not text:
            return None
        try:
            a, b = text.split("-")
            return _minutes(a), _minutes(b)
        except ValueError:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"connect window {text!r}") from None


def _minutes(hhmm: str) -> int:
    h, m = hhmm.strip().split(":")
    value = int(h) * 60 + int(m)
    # Minutes past 59 would wrap silently: "08:75-09:00" became a window over midnight.
    if not 0 <= int(m) < 60 or not 0 <= value <= 24 * 60:
        raise ValueError(hhmm)
    return value


def in_window(window: tuple[int, int] | None, now: float) -> bool:
    if window is None:
        return True
    t = datetime.fromtimestamp(now, UTC)
    minute = t.hour * 60 + t.minute
    start, end = window
    return start <= minute < end if start <= end else minute >= start or minute < end


def matching_baseline(device: Device, values: Mapping[int, bytes],
                      now: float | None = None) -> Baseline | None:
    """The approved baseline ``values`` match; with ``now``, only baselines still live
    (a superseded one past its grace period is no longer accepted)."""
    for b in device.baselines:
        if now is not None and not b.live(now):
            continue
        if not pcr_diff(b.as_dict(), values):
            return b
    return None


@dataclass(frozen=True)
class Outcome:
    device: Device
    events: tuple[BusEvent, ...]
    consequence: Consequence | None  # applied now, if any


def accepted(device: Device, now: float, reset_count: int, clock: int) -> Device:
    return dataclasses.replace(
        device, failures=0, last_attest_at=now, last_reset_count=reset_count, last_clock=clock,
        baselines=live_baselines(device, now),
    )


def live_baselines(device: Device, now: float) -> tuple[Baseline, ...]:
    """The device's baselines without the expired ones (never empty: the first stays)."""
    live = tuple(b for b in device.baselines if b.live(now))
    return live or device.baselines[:1]


def refused(device: Device, policy: AttestPolicy, diff: tuple[PcrChange, ...],
            state: Baseline | None) -> Outcome:
    """Count one failed attestation and apply the consequence at the threshold."""
    failures = device.failures + 1
    new = dataclasses.replace(
        device, failures=failures, last_diff=diff or device.last_diff,
        last_refused=state or device.last_refused,
    )
    if failures < policy.max_failures or device.status is not DeviceStatus.ACTIVE:
        return Outcome(new, (), None)
    status, event = {
        Consequence.LOCK: (DeviceStatus.LOCKED, Event.DEVICE_LOCKED),
        Consequence.REVOKE: (DeviceStatus.REVOKED, Event.DEVICE_REVOKED),
        Consequence.REENROLL: (DeviceStatus.REENROLL, Event.DEVICE_LOCKED),
        Consequence.ALERT: (DeviceStatus.ACTIVE, None),
    }[policy.consequence]
    new = dataclasses.replace(new, status=status)
    events = (
        (BusEvent(event.value, {"device_id": device.device_id, "status": status.value}),)
        if event is not None
        else ()
    )
    return Outcome(new, events, policy.consequence)


def check_clock(device: Device, reset_count: int, clock: int) -> None:
    """The TPM's reset counter and clock must not go backwards (a rolled-back TPM).

    A reboot increments resetCount and may move the clock back a little (swtpm
    persists it only periodically), so the clock is compared only within one boot,
    and with CLOCK_SKEW_MS of slack: concurrent sessions of one device may have
    their quotes verified out of order. Replay needs no clock: quotes are bound to
    the session's handshake hash.
    """
    if reset_count < device.last_reset_count or (
        reset_count == device.last_reset_count and clock + CLOCK_SKEW_MS < device.last_clock
    ):
        raise AttestgateError(
            ErrorCode.CLOCK_ROLLBACK,
            f"reset {device.last_reset_count}->{reset_count} clock {device.last_clock}->{clock}",
        )
