"""The event-log diff of a refusal (``StateDiff.as_dict()``, as pushed, audited and stored)
as plain lines, for the device's CLI and the operator's ``attestgate-admin show``."""

from __future__ import annotations

from typing import Any


def component_lines(evlog: dict[str, Any]) -> list[str]:
    """The event-log diff (``StateDiff.as_dict()``) as lines: one per changed component,
    old -> new, each marked verified (the log's data is authenticated by the quote) or hint
    (a name no digest covers, such as a file path)."""
    changes = evlog.get("changes") or []
    lines = [f"What changed, from the event log ({len(changes)} component(s)):"] if changes else []
    for c in changes:
        if not isinstance(c, dict):
            continue
        old, new = c.get("old") or {}, c.get("new") or {}
        mark = "verified" if c.get("verified") else "hint" if (
            old.get("hint") or new.get("hint")) else "unverified"
        what = str(new.get("name") or old.get("name") or "(no name in the log)")
        lines.append(f"  PCR {c.get('pcr', '?'):>2} {c.get('kind', '?')} {what} "
                     f"[{c.get('verdict', '?')}, {mark}]")
        for label, side in (("was", old), ("now", new)):
            if side:
                value = f" {side.get('value')}" if side.get("value") else ""
                lines.append(f"      {label} {side.get('digest', '')[:16]}{value}")
            else:
                lines.append(f"      {label} (absent)")
    if evlog.get("omitted"):
        lines.append(f"  ... and {evlog['omitted']} more (see attestgate-admin show)")
    for p in evlog.get("problems") or []:
        lines.append(f"  problem: {p}")
    return lines
