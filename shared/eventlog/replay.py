"""Replay: the PCR values a log claims, per bank, computed from its digests alone."""

from __future__ import annotations

from collections.abc import Iterable

from shared.eventlog.parse import EventLog
from shared.eventlog.types import EV_NO_ACTION, NEW_HASH, SIZE_BY_NAME


def replay(log: EventLog, banks: Iterable[str] | None = None) -> dict[str, dict[int, bytes]]:
    """``{bank: {pcr: value}}`` for every bank we can hash (or those of ``banks`` the log
    holds) and every PCR the log extends.

    Each PCR starts at zero; PCR 0 starts at ``00..00 || locality`` when the log holds a
    StartupLocality event (TCG PC Client PFP 1.05, 10.4.5.3). EV_NO_ACTION events are
    not extended.
    """
    out: dict[str, dict[int, bytes]] = {}
    locality = log.startup_locality or 0
    wanted = log.banks if banks is None else tuple(b for b in banks if b in log.banks)
    extended = [ev for ev in log.events if ev.type != EV_NO_ACTION]
    for bank in wanted:
        new_hash = NEW_HASH.get(bank)
        if new_hash is None:
            continue
        size = SIZE_BY_NAME[bank]
        zero = bytes(size)
        pcrs: dict[int, bytes] = {0: bytes(size - 1) + bytes([locality])}
        for ev in extended:
            pcr = ev.pcr
            pcrs[pcr] = new_hash(pcrs.get(pcr, zero) + ev.digests[bank]).digest()
        if not any(ev.pcr == 0 for ev in extended):
            del pcrs[0]
        out[bank] = pcrs
    return out
