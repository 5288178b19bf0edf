"""Event logs in attestation: check the log a device sent, compare it with its baselines' logs.

Pure functions over the store and values. A log is only ever used together with the PCR
values its quote vouches for (``transport.checked_state``): a log that does not replay is
LOG_INCONSISTENT, never ignored. The comparison picks, among the device's baselines that
have a stored log, the one closest to the current PCRs (fewest differing; the newest on a
tie), so that after an approval the diff is against the state the device left.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from shared.codec import pack
from shared.errors import AttestgateError, ErrorCode
from shared.eventlog import MachineState, StateDiff, Verdict, diff_states
from shared.eventlog.diff import summarize
from shared.eventlog.transport import checked_state, decompress, log_digest
from shared.records import Baseline, Device
from shared.store.interface import Store, forget_unreferenced_logs
from shared.tpm.pcrs import pcr_diff

# The event-log diff a refusal carries (push, audit entry, device record) stays under this
# many msgpack bytes; changes beyond it are dropped from the end and counted in "omitted".
EVENTLOG_BUDGET: Final = 16 * 1024
MAX_COMPARED: Final = 8  # baselines with a log looked at per refusal (the newest)


@dataclass(frozen=True)
class SentLog:
    """A device's log, checked against its quote: raw size, digest, stored form, state."""

    digest: str
    blob: bytes  # compressed, as the bus and the store carry it
    state: MachineState


def bank_of(selection: str) -> str:
    """The hash bank of a single-bank selection text (``sha256:0,1`` -> ``sha256``)."""
    return selection.split(":", 1)[0].strip().lower()


def check_sent(blob: bytes, selection: str, pcrs: Mapping[int, bytes]) -> SentLog:
    """Decompress and check a sent log against the quoted PCRs (already verified).
    Raises LOG_INCONSISTENT, TOO_LARGE or BAD_REQUEST (not zlib: the gateway's fault)."""
    log = decompress(blob)
    return SentLog(log_digest(log), blob, checked_state(log, bank_of(selection), pcrs))


def compare(store: Store, device: Device, current: MachineState,
            pcrs: Mapping[int, bytes]) -> StateDiff | None:
    """The diff against the closest baseline that has a usable stored log; None if none."""
    for b, old in reference_states(store, device, pcrs):
        return with_undescribed(diff_states(old, current), old, current, b, pcrs)
    return None


def reference_states(store: Store, device: Device, pcrs: Mapping[int, bytes],
                     now: float | None = None) -> Iterator[tuple[Baseline, MachineState]]:
    """The device's baselines with a usable stored log and their states, closest to ``pcrs``
    first (fewest differing PCRs; the newest on a tie); with ``now``, live ones only."""
    with_log = [b for b in device.baselines if b.log and (now is None or b.live(now))]
    for _, _, b in sorted(_ranked(with_log[-MAX_COMPARED:], pcrs),
                          key=lambda t: (t[0], -t[1])):
        old = _baseline_state(store, device.device_id, b)
        if old is not None:
            yield b, old


def with_undescribed(diff: StateDiff, old: MachineState, new: MachineState, baseline: Baseline,
                     pcrs: Mapping[int, bytes]) -> StateDiff:
    return _with_undescribed(diff, old, new, [c.index for c in pcr_diff(baseline.as_dict(), pcrs)])


def _with_undescribed(diff: StateDiff, old: MachineState, new: MachineState,
                      changed: list[int]) -> StateDiff:
    """A quoted PCR that changed although neither log extends it (PCR 16, say) is a change the
    logs cannot explain: ``unknown_change``, never "nothing changed"."""
    bank = old.primary_bank
    described = set(old.replayed.get(bank, {})) | set(new.replayed.get(bank, {}))
    missing = [p for p in changed if p not in described]
    if not missing:
        return diff
    problems = (*diff.problems,
                f"PCR {', '.join(map(str, missing))} changed; no event log describes it")
    found = {v for v in diff.verdicts if v is not Verdict.UNCHANGED} | {Verdict.UNKNOWN_CHANGE}
    verdicts = tuple(v for v in Verdict if v in found)  # Verdict lists most serious first
    return StateDiff(verdicts[0], verdicts, tuple(sorted({*diff.changed_pcrs, *missing})),
                     diff.changes, problems, summarize(verdicts, diff.changes, problems))


def _ranked(baselines: list[Baseline], pcrs: Mapping[int, bytes]
            ) -> list[tuple[int, int, Baseline]]:
    return [(len(pcr_diff(b.as_dict(), pcrs)), n, b) for n, b in enumerate(baselines)]


def _baseline_state(store: Store, device_id: str, b: Baseline) -> MachineState | None:
    blob = store.get_event_log(device_id, b.log)
    if blob is None:
        return None
    try:
        return checked_state(decompress(blob), bank_of(b.selection), b.as_dict())
    except AttestgateError as exc:
        if exc.code is ErrorCode.STORE_UNAVAILABLE:
            raise
        return None  # a stored log that no longer checks out is not evidence of anything


def capped(diff: StateDiff) -> dict[str, Any]:
    """``diff.as_dict()`` within EVENTLOG_BUDGET (changes dropped from the end if needed)."""
    doc = diff.as_dict()
    changes = list(doc["changes"])
    omitted = 0
    while len(pack(doc)) > EVENTLOG_BUDGET and changes:
        changes.pop()
        omitted += 1
        doc = {**doc, "changes": changes, "omitted": omitted}
    return doc


def forget_refused_log(store: Store, before: Device, after: Device) -> None:
    """Delete the log of the state refused before, once a newer refused state replaced it and
    no baseline refers to it: a device keeps at most one log beyond its baselines' (a device
    under the ``alert`` consequence could otherwise store a log per refusal, forever)."""
    forget_unreferenced_logs(store, before, after)
