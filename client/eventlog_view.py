"""``attestgate eventlog``: the measured-boot log as components per PCR, and its PCR values.

Reading and rendering only; the parsing and the trust rules are ``shared.eventlog``'s.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.eventlog_source import ENV_EVENT_LOG, LINUX_EVENT_LOG
from shared.errors import AttestgateError, ErrorCode
from shared.eventlog import MachineState, replay, verify
from shared.eventlog.parse import parse_log
from shared.eventlog.types import MAX_LOG_BYTES

__all__ = ["ENV_EVENT_LOG", "LINUX_EVENT_LOG", "Examined", "default_log_path", "examine",
           "read_log", "to_json", "to_text"]
_TEXT_WIDTH = 120  # characters of a component shown in the human view (--json has all)
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]+")


def default_log_path(env: Mapping[str, str], linux_path: str = LINUX_EVENT_LOG) -> str:
    """$ATTESTGATE_EVENT_LOG, else the Linux log when readable; BAD_REQUEST (usage) otherwise."""
    if env.get(ENV_EVENT_LOG):
        return env[ENV_EVENT_LOG]
    if os.access(linux_path, os.R_OK):
        return linux_path
    raise AttestgateError(
        ErrorCode.BAD_REQUEST,
        f"no event log given: pass FILE or set {ENV_EVENT_LOG} ({linux_path} is not "
        "readable here; it needs root)")


def read_log(path: str) -> bytes:
    """The log's bytes (at most the parser's cap; base64 text, as Keylime stores it, decoded)."""
    try:
        with Path(path).open("rb") as fh:
            data = fh.read(MAX_LOG_BYTES * 2 + 1)
    except OSError as exc:
        raise AttestgateError(ErrorCode.BAD_REQUEST,
                              f"cannot read {path}: {exc.strerror or exc}") from None
    if data[:1] != b"\x00" and _BASE64_TEXT.fullmatch(data):
        with contextlib.suppress(binascii.Error, ValueError):
            data = base64.b64decode(b"".join(data.split()), validate=True)
    if len(data) > MAX_LOG_BYTES:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"{path}: more than {MAX_LOG_BYTES} B")
    return data


@dataclass(frozen=True)
class Examined:
    state: MachineState
    pcrs: Mapping[str, Mapping[int, bytes]]  # the replay of every bank the log holds


def examine(data: bytes, tpm_sha256: Mapping[int, bytes] | None) -> Examined:
    """Parse, replay and check the log; against the TPM's sha256 PCRs when given."""
    log = parse_log(data)
    state = verify(log, None if tpm_sha256 is None else {"sha256": tpm_sha256})
    return Examined(state, state.replayed if tpm_sha256 is None else replay(log))


def to_json(path: str, seen: Examined, tpm_sha256: Mapping[int, bytes] | None
            ) -> dict[str, Any]:
    """The ``--json`` document. Key names are a contract (see the issue and the tests)."""
    state = seen.state
    events = []
    for ce in state.events:
        ev = ce.event
        item: dict[str, Any] = dict(ce.fields)
        item.update(index=ev.index, pcr=ev.pcr, type=ev.type_name,
                    digests={b: d.hex() for b, d in ev.digests.items()},
                    verified=ce.verified)
        events.append(item)
    components: dict[str, list[dict[str, Any]]] = {}
    for c in state.components:
        components.setdefault(str(c.pcr), []).append(
            {"kind": c.kind, "name": c.name, "value": c.value, "digest": c.digest,
             "verified": c.verified, "hint": c.hint, "event": c.event_index})
    doc: dict[str, Any] = {
        "file": path,
        "format": "crypto_agile" if _agile(state) else "sha1",
        "banks": list(state.banks),
        "pcrs": {bank: {str(i): v.hex() for i, v in sorted(values.items())}
                 for bank, values in seen.pcrs.items()},
        "events": events,
        "components": components,
        "secure_boot": state.secure_boot,
        "anomalies": list(state.anomalies),
        "pcrs_compared": state.pcrs_compared,
    }
    if tpm_sha256 is not None:
        doc["tpm"] = {"bank": "sha256",
                      "pcrs": {str(i): v.hex() for i, v in sorted(tpm_sha256.items())},
                      "match": not state.mismatched,
                      "mismatched": [p for _, p in state.mismatched]}
    return doc


def _agile(state: MachineState) -> bool:
    return state.banks != ("sha1",)


def to_text(path: str, seen: Examined, tpm_sha256: Mapping[int, bytes] | None) -> str:
    from client.explain import pcr_meaning  # noqa: PLC0415 (~90 ms of every start-up)

    state = seen.state
    n = len(state.events)
    lines = [f"event log {path}: {n} events, banks {', '.join(state.banks)}"]
    if tpm_sha256 is None:
        lines.append("not compared with a TPM: 'data ok' only means an event's data matches its"
                     " own digest; give --tpm to verify against the PCRs")
    mark_ok = "verified" if tpm_sha256 is not None else "data ok"
    by_pcr: dict[int, list[str]] = {}
    for c in state.components:
        mark = mark_ok if c.verified else ("hint" if c.hint else "unverified")
        text = c.name + (f": {c.value}" if c.value else "")
        text = text if len(text) <= _TEXT_WIDTH else text[: _TEXT_WIDTH - 1] + "…"
        by_pcr.setdefault(c.pcr, []).append(f"    [{mark:>10}] {c.kind:<20} {text}")
    for pcr in sorted(by_pcr):
        lines.append(f"PCR {pcr} ({pcr_meaning(pcr)})")
        lines += by_pcr[pcr]
    if state.secure_boot is not None:
        lines.append(f"Secure Boot: {'enabled' if state.secure_boot else 'disabled'}")
    lines += [f"anomaly: {a}" for a in state.anomalies]
    for bank, values in seen.pcrs.items():
        lines.append(f"replayed PCR values ({bank}):")
        for i, v in sorted(values.items()):
            tail = ""
            if tpm_sha256 is not None and bank == "sha256":
                tpm_value = tpm_sha256.get(i)
                tail = ("  = TPM" if tpm_value == v else
                        f"  != TPM {tpm_value.hex() if tpm_value else '(not read)'}")
            lines.append(f"  {i:>2}: {v.hex()}{tail}")
    if tpm_sha256 is not None:
        lines.append("the log matches the TPM's sha256 PCRs" if state.consistent else
                     "the log does NOT match the TPM's sha256 PCRs "
                     f"{sorted({p for _, p in state.mismatched})}: do not trust its contents")
    return "\n".join(lines)
