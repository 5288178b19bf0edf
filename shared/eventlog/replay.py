"""Replay: the PCR values a log claims, per bank, computed from its digests alone."""

from __future__ import annotations

from shared.eventlog.parse import EventLog
from shared.eventlog.types import EV_NO_ACTION, HASH_BY_NAME, SIZE_BY_NAME


def replay(log: EventLog) -> dict[str, dict[int, bytes]]:
    """``{bank: {pcr: value}}`` for every bank we can hash and every PCR the log extends.

    Each PCR starts at zero; PCR 0 starts at ``00..00 || locality`` when the log holds a
    StartupLocality event (TCG PC Client PFP 1.05, 10.4.5.3). EV_NO_ACTION events are
    not extended.
    """
    out: dict[str, dict[int, bytes]] = {}
    for bank in log.banks:
        hasher = HASH_BY_NAME.get(bank)
        if hasher is None:
            continue
        size = SIZE_BY_NAME[bank]
        pcrs: dict[int, bytes] = {}
        for ev in log.events:
            if ev.type == EV_NO_ACTION:
                continue
            start = pcrs.get(ev.pcr)
            if start is None:
                start = bytes(size - 1) + bytes([(log.startup_locality or 0) if ev.pcr == 0 else 0])
            pcrs[ev.pcr] = hasher(start + ev.digests[bank])
        out[bank] = pcrs
    return out
