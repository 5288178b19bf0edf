"""Views and text rendering for ``attestgate-admin``.

``*_view`` functions turn records into JSON-ready maps (the ``--json`` output);
``render_*`` functions turn those maps into aligned text for people. Neither
ever includes a secret: no PSK (sealed or not), no token secret, no private key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from shared.errors import AttestgateError
from shared.eventlog.render import component_lines
from shared.records import AuditEntry, Baseline, Device, status_view
from shared.tpm.constants import Alg, Curve
from shared.tpm.ekcert import load_ek_cert
from shared.tpm.pcrs import diff_view
from shared.tpm.structures import EccParms, RsaParms, parse_public

Doc = dict[str, Any]


def iso(ts: float) -> str | None:
    """ISO 8601 UTC to the second; None for 0 ("never")."""
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


# -- views (JSON) ----------------------------------------------------------------------


def device_row(d: Device) -> Doc:
    return {
        "name": d.name,
        "device_id": d.device_id,
        "status": d.status.value,
        "failures": d.failures,
        "enrolled_at": iso(d.enrolled_at),
        "last_attest_at": iso(d.last_attest_at),
    }


def baseline_view(b: Baseline) -> Doc:
    doc: Doc = {"id": b.baseline_id, "selection": b.selection,
                "pcrs": {str(i): v.hex() for i, v in b.values}}
    if b.log:
        doc["event_log"] = b.log  # SHA-256 of the stored measured-boot log
    return doc


def baseline_row(b: Baseline, now: float) -> Doc:
    """One line of ``baseline list``: id, state (current, superseded until its expiry,
    expired), when approved (None: the enrolled one) and until when it is accepted."""
    state = "expired" if not b.live(now) else "superseded" if b.expires_at else "current"
    return {**baseline_view(b), "state": state, "approved_at": iso(b.approved_at),
            "expires_at": iso(b.expires_at)}


def render_baselines(doc: Doc) -> str:
    lines = [f"baselines of {doc['name']} ({doc['device_id']}):"]
    for b in doc["baselines"]:
        when = f"approved {b['approved_at']}" if b["approved_at"] else "enrolled"
        until = f", accepted until {b['expires_at']}" if b["expires_at"] else ""
        lines.append(f"  {b['id']}  {b['state']:<10} {b['selection']}  {when}{until}")
        lines += [f"      PCR {i:>2} {v}" for i, v in b["pcrs"].items()]
    return "\n".join(lines)


def render_tokens(doc: Doc) -> str:
    if not doc["tokens"]:
        return "(no enrollment tokens in the audit log)"
    rows = [("TOKEN ID", "STATE", "CREATED", "EXPIRES", "DEVICE")] + [
        (t["token_id"], t["state"], t["created_at"] or "-", t["expires_at"] or "-",
         t.get("device_id") or "") for t in doc["tokens"]]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
                      + ("  " + r[4] if r[4] else "") for r in rows)


def key_view(public: bytes) -> Doc:
    """Public facts about a TPM2B_PUBLIC: type, size, TPM name. Never key material."""
    if not public:
        return {"bytes": 0}
    out: Doc = {"bytes": len(public)}
    try:
        pub = parse_public(public)
        out["name"] = pub.name.hex()
    except AttestgateError:
        out["error"] = "not a parseable TPM2B_PUBLIC"
        return out
    p = pub.parameters
    if isinstance(p, RsaParms):
        out["type"] = f"rsa-{p.key_bits}"
    elif isinstance(p, EccParms):
        out["type"] = "ecc-" + _enum_name(Curve, p.curve).lower().replace("nist_", "")
    else:
        out["type"] = _enum_name(Alg, pub.type).lower()
    return out


def _enum_name(enum: type[IntEnum], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return f"{value:#x}"


def ek_cert_view(cert_der: bytes) -> Doc | None:
    if not cert_der:
        return None
    try:
        cert = load_ek_cert(cert_der)
    except AttestgateError:
        return {"error": "not a parseable certificate"}
    return {
        "subject": cert.subject.rfc4514(),
        "issuer": cert.issuer.rfc4514(),
        "serial": f"{cert.serial:x}",
        "not_after": cert.not_after.isoformat(timespec="seconds"),
    }


def device_detail(d: Device) -> Doc:
    """Everything an operator may see about a device (status_view plus keys and PCRs)."""
    out: Doc = dict(status_view(d))
    out.update(
        enrolled_at=iso(d.enrolled_at),
        last_attest_at=iso(d.last_attest_at),
        last_reset_count=d.last_reset_count,
        last_clock=d.last_clock,
        noise_public=d.noise_public.hex(),
        keys={
            "ek": {"fingerprint": d.ek_fingerprint, **key_view(d.ek_public),
                   "certificate": ek_cert_view(d.ek_cert)},
            "ak": key_view(d.ak_public),
            "srk": key_view(d.srk_public),
            "post": key_view(d.post_public),
        },
        baselines=[baseline_view(b) for b in d.baselines],
        last_refused=baseline_view(d.last_refused) if d.last_refused else None,
        last_diff=diff_view(d.last_diff),
        last_eventlog=_eventlog_doc(d.last_eventlog),
    )
    return out


def _eventlog_doc(text: str) -> Doc | None:
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return {"error": "unreadable"}
    return doc if isinstance(doc, dict) else {"error": "unreadable"}


def audit_view(e: AuditEntry) -> Doc:
    try:
        detail: Any = json.loads(e.detail)
    except ValueError:
        detail = e.detail
    return {"entry_id": e.entry_id, "time": iso(e.ts), "event": e.event,
            "device_id": e.device_id, "detail": detail}


# -- text ----------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart; None shows as "-"."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def pairs(items: Sequence[tuple[str, object]], indent: str = "") -> str:
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(
        f"{indent}{k.ljust(width)}  {'-' if v is None else v}".rstrip() for k, v in items
    )


def render_devices(doc: Doc) -> str:
    devices = doc["devices"]
    if not devices:
        return "no devices enrolled"
    cols = ("name", "device_id", "status", "failures", "enrolled_at", "last_attest_at")
    heads = ("NAME", "DEVICE ID", "STATUS", "FAILURES", "ENROLLED", "LAST ATTESTATION")
    return table(heads, [[d[c] for c in cols] for d in devices])


def _key_text(k: Mapping[str, Any]) -> str:
    if "error" in k:
        return f"{k['bytes']} bytes, {k['error']}"
    if not k.get("bytes"):
        return "none"
    return f"{k['type']}, name {k['name']}"


def _baseline_text(b: Mapping[str, Any], title: str) -> str:
    rows = [[f"pcr {i}", v] for i, v in sorted(b["pcrs"].items(), key=lambda kv: int(kv[0]))]
    return f"{title} ({b['selection']}):\n" + table(("PCR", "VALUE"), rows)


def render_device(doc: Doc) -> str:
    keys = doc["keys"]
    ek = keys["ek"]
    cert = ek["certificate"]
    head = pairs([
        ("name", doc["name"]),
        ("device id", doc["device_id"]),
        ("status", doc["status"]),
        ("failures", doc["failures"]),
        ("enrolled at", doc["enrolled_at"]),
        ("last attestation", doc["last_attest_at"] or "never"),
        ("TPM reset count", doc["last_reset_count"] if doc["last_reset_count"] >= 0 else None),
        ("noise key", doc["noise_public"]),
        ("EK fingerprint", ek["fingerprint"]),
        ("EK", _key_text(ek)),
        ("EK certificate", "none" if cert is None else cert.get("error", "")),
        *([] if cert is None or "error" in cert else [
            ("  subject", cert["subject"]), ("  issuer", cert["issuer"]),
            ("  serial", cert["serial"]), ("  not after", cert["not_after"])]),
        ("AK", _key_text(keys["ak"])),
        ("SRK", _key_text(keys["srk"])),
        ("post key", _key_text(keys["post"])),
        ("PCR selection", doc["selection"]),
    ])
    parts = [head]
    for n, b in enumerate(doc["baselines"]):
        parts.append(_baseline_text(b, "enrolled baseline" if n == 0 else f"approved baseline {n}"))
    if doc["last_refused"]:
        parts.append(_baseline_text(doc["last_refused"], "last refused state"))
    else:
        parts.append("last refused state: none")
    if doc["last_diff"]:
        rows = [[c["pcr"], c["enrolled"] or "-", c["current"] or "-"] for c in doc["last_diff"]]
        parts.append("last difference:\n" + table(("PCR", "ENROLLED", "REFUSED"), rows))
    evlog = doc.get("last_eventlog")
    if evlog and "error" not in evlog:
        parts.append(f"what changed (event log): {evlog.get('summary', '')}\n"
                     f"verdict: {evlog.get('verdict', '?')}\n"
                     + "\n".join(component_lines(evlog)))
        rules = evlog.get("rules")
        if isinstance(rules, dict) and rules.get("reasons"):
            parts.append(f"not accepted by the {rules.get('policy', '?')} rule policy "
                         f"(rule: {', '.join(rules.get('rules') or [])}):\n"
                         + "\n".join(f"  - {r}" for r in rules["reasons"]))
    return "\n\n".join(parts)


def render_audit(doc: Doc) -> str:
    lines = []
    entries = doc["entries"]
    if entries:
        rows = [[e["time"], e["event"], e["device_id"] or "-",
                 json.dumps(e["detail"], sort_keys=True, separators=(",", ":"))] for e in entries]
        lines.append(table(("TIME", "EVENT", "DEVICE", "DETAIL"), rows))
    else:
        lines.append("no audit entries")
    if "problems" in doc:
        problems = doc["problems"]
        if problems:
            lines.append(f"audit chain BROKEN: {len(problems)} problem(s)")
            lines.append(table(("ENTRY", "PROBLEM"),
                               [[p["entry_id"] or "(empty log)", p["problem"]] for p in problems]))
        else:
            lines.append(f"audit chain verified: {doc['checked']} entries, head matches")
    return "\n".join(lines)
