"""The console's HTML: pure functions from bus replies to escaped markup.

Every value that is not a constant of this module goes through :func:`esc`
(``html.escape`` with quotes): post text, device names, audit details, ids — all of
it may be hostile. :class:`Markup` marks text that is already safe; :func:`h` fills a
constant template with escaped values. No inline script or style anywhere (the CSP
forbids both): behaviour lives in ``static/*.js``, looks in ``static/console.css``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

STATUSES: Final = ("active", "locked", "reenroll", "revoked")
ALERT_STATUSES: Final = frozenset({"locked", "revoked", "reenroll"})
PROBLEM_WORDS: Final = {  # as `attestgate-admin audit --verify` words them
    "hash": "edited", "link": "missing or reordered", "head": "tail cut",
    "truncated": "tail cut (checkpoint counts more entries)",
    "deleted": "log deleted (checkpoint counts entries)",
    "rewritten": "rewritten (differs from its checkpoint)",
    "checkpoint": "checkpoint forged or corrupt", "unanchored": "no checkpoint file"}
NAV: Final = (("board", "/board"), ("devices", "/devices"), ("audit", "/audit"))


class Markup(str):
    """Text that is safe to put into HTML as it is."""

    __slots__ = ()


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def h(template: str, **values: object) -> Markup:
    """``template`` (a constant of this module) with every value escaped."""
    return Markup(template.format(**{k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Markup]) -> Markup:
    return Markup("".join(esc(p) for p in parts))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def when(ts: object) -> Markup:
    """A time the browser shows local and relative (static/time.js); UTC without script."""
    if not isinstance(ts, int | float) or isinstance(ts, bool) or ts <= 0:
        return Markup("never")
    stamp = iso(float(ts))
    return h('<time datetime="{d}" data-ts="{ts}">{t} UTC</time>', d=stamp,
             ts=f"{float(ts):.3f}", t=stamp.replace("T", " ").removesuffix("+00:00"))


def device_href(device_id: object) -> str:
    return "/devices/" + quote(str(device_id), safe="")


def status_badge(status: object) -> Markup:
    s = str(status)
    cls = s if s in STATUSES else "unknown"
    return h('<span class="status status-{c}">{s}</span>', c=cls, s=s)


def layout(title: str, active: str, body: Markup, scripts: Sequence[str] = ()) -> Markup:
    nav = join(h('<a href="{u}"{cur}>{n}</a>', u=u, n=n,
                 cur=Markup(' aria-current="page"') if n == active else Markup(""))
               for n, u in NAV)
    js = join(h('<script src="/static/{s}" defer></script>', s=s)
              for s in ("time.js", *scripts))
    return h('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
             '<meta name="viewport" content="width=device-width, initial-scale=1">'
             '<title>{title} · attestgate console</title>'
             '<link rel="stylesheet" href="/static/console.css">{js}</head>'
             '<body><header class="top"><span class="brand">attestgate console</span>'
             '<nav>{nav}</nav><a class="logout" href="/logout">log out</a></header>'
             '<main><h1>{title}</h1>{body}</main></body></html>\n',
             title=title, js=js, nav=nav, body=body)


def login_needed(reason: str) -> Markup:
    body = h('<p class="notice">{r}</p><p>On the server, run <code>attestgate-admin '
             'console-token</code> and open the link it prints (valid for a few minutes, '
             'once). Scripts send <code>Authorization: Bearer TOKEN</code> with a token from '
             '<code>attestgate-admin console-token --bearer</code>.</p>', r=reason)
    return h('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
             '<title>login needed · attestgate console</title>'
             '<link rel="stylesheet" href="/static/console.css"></head>'
             '<body><main><h1>login needed</h1>{b}</main></body></html>\n', b=body)


def error_box(what: str, code: str) -> Markup:
    return h('<p class="error">{w}: {c}</p>', w=what, c=code)


# -- board ------------------------------------------------------------------------------


def post(view: Mapping[str, Any]) -> Markup:
    verified = view.get("verified") is True
    author = view.get("author") or "(device not in the registry)"
    return h('<article class="post" data-post-id="{pid}"><div class="meta">'
             '<span class="author">{author}</span> <a class="device" href="{href}">{did}</a> '
             '{t} <span class="sig {cls}">{sig}</span></div><pre class="text">{text}</pre>'
             '</article>',
             pid=view.get("post_id", ""), author=author,
             href=device_href(view.get("device_id", "")),
             did=str(view.get("device_id", ""))[:12], t=when(view.get("ts")),
             cls="verified" if verified else "unverified",
             sig="verified TPM signature" if verified else "signature NOT verified",
             text=view.get("text", ""))


def board(posts: Sequence[Mapping[str, Any]], error: Markup | None = None) -> Markup:
    items = join(post(p) for p in reversed(posts))
    body = h('{e}<p class="live" id="live">live: new posts appear at the top</p>'
             '<section id="posts">{items}</section>{empty}',
             e=error or Markup(""), items=items,
             empty=Markup('<p class="empty" id="empty">no posts yet</p>') if not posts
             else Markup(""))
    return layout("board", "board", body, ("board.js",))


# -- devices ----------------------------------------------------------------------------


def diff_list(changes: object) -> Markup:
    if not isinstance(changes, list) or not changes:
        return Markup("-")
    items = join(h('<li>PCR {p}: <code>{a}</code> → <code>{b}</code></li>',
                   p=c.get("pcr", "?"), a=_short(c.get("enrolled")),
                   b=_short(c.get("current"))) for c in changes if isinstance(c, Mapping))
    return h('<ul class="diff">{i}</ul>', i=items)


def _short(value: object) -> str:
    s = str(value or "-")
    return s if len(s) <= 16 else s[:16] + "…"


def devices(rows: Sequence[Mapping[str, Any]], status: str, more: bool,
            error: Markup | None = None) -> Markup:
    counts = {s: sum(1 for r in rows if r.get("status") == s) for s in STATUSES}
    alerts = [f"{counts[s]} {s}" for s in ("locked", "revoked", "reenroll") if counts[s]]
    filters = join(h('<a href="{u}"{cur}>{n}</a>', u="/devices" + (f"?status={s}" if s else ""),
                     n=s or "all",
                     cur=Markup(' aria-current="true"') if s == status else Markup(""))
                   for s in ("", *STATUSES))
    body_rows = join(h(
        '<tr class="row-{cls}" data-device-id="{did}"><td><a href="{href}">{name}</a></td>'
        '<td class="id">{short}</td><td class="status-cell">{st}</td><td>{fail}</td>'
        '<td>{enr}</td><td>{att}</td><td>{diff}</td></tr>',
        cls=r.get("status") if r.get("status") in STATUSES else "unknown",
        did=r.get("device_id", ""), href=device_href(r.get("device_id", "")),
        name=r.get("name", ""), short=str(r.get("device_id", ""))[:12],
        st=status_badge(r.get("status")), fail=r.get("failures", 0),
        enr=when(r.get("enrolled_at")), att=when(r.get("last_attest_at")),
        diff=diff_list(r.get("last_diff"))) for r in rows)
    body = h('{e}<p class="summary{alert}">{n} device(s){a}</p>'
             '<p class="filters">status: {f}</p>'
             '<p class="live" id="live" hidden></p>'
             '<table class="devices"><thead><tr><th>name</th><th>device id</th>'
             '<th>status</th><th>failures</th><th>enrolled</th><th>last attestation</th>'
             '<th>last refusal: PCRs that differed</th></tr></thead><tbody>{rows}</tbody>'
             '</table>{more}',
             e=error or Markup(""), n=len(rows),
             alert=" alert" if alerts else "",
             a=(": " + ", ".join(alerts)) if alerts else "", f=filters, rows=body_rows,
             more=Markup('<p class="notice">more devices than one page holds</p>') if more
             else Markup(""))
    return layout("devices", "devices", body, ("devices.js",))


def _key_text(k: Mapping[str, Any]) -> str:
    if "error" in k:
        return f"{k.get('bytes')} bytes, {k['error']}"
    if not k.get("bytes"):
        return "none"
    return f"{k.get('type')}, name {k.get('name')}"


def _pairs(items: Sequence[tuple[str, object]]) -> Markup:
    return h('<dl class="pairs">{i}</dl>',
             i=join(h("<dt>{k}</dt><dd>{v}</dd>", k=k, v="-" if v is None else v)
                    for k, v in items))


def _baseline(b: Mapping[str, Any], title: str) -> Markup:
    pcrs = b.get("pcrs") or {}
    rows = join(h("<tr><td>{i}</td><td><code>{v}</code></td></tr>", i=i, v=v)
                for i, v in sorted(pcrs.items(), key=lambda kv: int(kv[0])))
    return h('<h3>{t} <small>{s}</small></h3><table class="pcrs"><thead><tr><th>PCR</th>'
             '<th>value</th></tr></thead><tbody>{r}</tbody></table>',
             t=title, s=b.get("selection", ""), r=rows)


def device(doc: Mapping[str, Any], audit: Sequence[Mapping[str, Any]],
           audit_error: Markup | None = None) -> Markup:
    keys = doc.get("keys") or {}
    ek = keys.get("ek") or {}
    cert = ek.get("certificate")
    reset = doc.get("last_reset_count")
    items: list[tuple[str, object]] = [
        ("name", doc.get("name")), ("device id", doc.get("device_id")),
        ("status", status_badge(doc.get("status"))), ("failures", doc.get("failures")),
        ("enrolled at", when(doc.get("enrolled_ts"))),
        ("last attestation", when(doc.get("last_attest_ts"))),
        ("TPM reset count", reset if isinstance(reset, int) and reset >= 0 else None),
        ("noise key", doc.get("noise_public")), ("EK fingerprint", ek.get("fingerprint")),
        ("EK", _key_text(ek)),
        ("EK certificate", "none" if cert is None else cert.get("error", "")),
    ]
    if isinstance(cert, Mapping) and "error" not in cert:
        items += [("  subject", cert.get("subject")), ("  issuer", cert.get("issuer")),
                  ("  serial", cert.get("serial")), ("  not after", cert.get("not_after"))]
    items += [("AK", _key_text(keys.get("ak") or {})), ("SRK", _key_text(keys.get("srk") or {})),
              ("post key", _key_text(keys.get("post") or {})),
              ("PCR selection", doc.get("selection"))]
    parts = [_pairs(items), Markup("<h2>baselines</h2>")]
    for n, b in enumerate(doc.get("baselines") or []):
        parts.append(_baseline(b, "enrolled baseline" if n == 0 else f"approved baseline {n}"))
    parts.append(Markup("<h2>last refusal</h2>"))
    refused = doc.get("last_refused")
    parts.append(_baseline(refused, "last refused state") if refused
                 else Markup("<p>last refused state: none</p>"))
    diff = doc.get("last_diff") or []
    if diff:
        parts.append(h('<table class="diff"><thead><tr><th>PCR</th><th>enrolled</th>'
                       '<th>refused</th></tr></thead><tbody>{r}</tbody></table>',
                       r=join(h("<tr><td>{p}</td><td><code>{a}</code></td><td><code>{b}"
                                "</code></td></tr>", p=c.get("pcr"), a=c.get("enrolled") or "-",
                                b=c.get("current") or "-") for c in diff)))
    parts.append(h('<h2>recent audit entries <a class="more" href="{u}">all</a></h2>',
                   u="/audit?" + urlencode({"device": str(doc.get("device_id", ""))})))
    parts.append(audit_error or audit_table(audit))
    cls = " alert" if doc.get("status") in ALERT_STATUSES else ""
    body = h('<section class="device{c}">{p}</section>', c=cls, p=join(parts))
    return layout(f"device {doc.get('name', '')}", "devices", body)


# -- audit ------------------------------------------------------------------------------


def _detail(text: object) -> str:
    try:
        value = json.loads(str(text))
    except ValueError:
        return str(text)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def audit_table(entries: Sequence[Mapping[str, Any]]) -> Markup:
    if not entries:
        return Markup('<p class="empty">no audit entries</p>')
    rows = join(h('<tr class="ev-{cls}"><td>{t}</td><td><a href="{eu}">{ev}</a></td>'
                  '<td>{dev}</td><td><code>{d}</code></td></tr>',
                  cls="alert" if _alarming(str(e.get("event", ""))) else "plain",
                  t=when(e.get("ts")), eu="/audit?" + urlencode({"event": str(e.get("event"))}),
                  ev=e.get("event", ""),
                  dev=h('<a href="{u}">{d}</a>', u="/audit?" + urlencode(
                      {"device": str(e.get("device_id"))}), d=str(e.get("device_id"))[:12])
                  if e.get("device_id") else "-",
                  d=_detail(e.get("detail", ""))) for e in entries)
    return h('<table class="audit"><thead><tr><th>time</th><th>event</th><th>device</th>'
             '<th>detail</th></tr></thead><tbody>{r}</tbody></table>', r=rows)


def _alarming(event: str) -> bool:
    return event.endswith("_refused") or event.startswith("consequence_") or event in (
        "revoked", "purged", "audit_purged")


def verification(result: Mapping[str, Any] | None, error: Markup | None) -> Markup:
    if error is not None:
        return error
    if result is None:
        return Markup("")
    problems = result.get("problems") or []
    count = result.get("problem_count", len(problems))
    if not count:
        return h('<p class="chain ok">audit chain verified: {n} entries, head matches</p>',
                 n=result.get("checked", 0))
    rows = join(h("<li><code>{e}</code>: {w}</li>", e=p.get("entry_id") or "(empty log)",
                  w=PROBLEM_WORDS.get(str(p.get("check")), str(p.get("check"))))
                for p in problems)
    return h('<div class="chain broken"><p>audit chain BROKEN: {n} problem(s) in {c} '
             'entries</p><ul>{r}</ul></div>', n=count, c=result.get("checked", 0), r=rows)


def audit(entries: Sequence[Mapping[str, Any]], total: int, device_ref: str, event: str,
          chain: Markup, error: Markup | None = None) -> Markup:
    shown = ", ".join(f"{k} {v}" for k, v in (("device", device_ref), ("event", event)) if v)
    body = h('{chain}<p class="filters">filter: <input id="f-device" value="{dv}" '
             'placeholder="device name or id" aria-label="device"> <input id="f-event" '
             'value="{ev}" placeholder="event, e.g. attest_refused" aria-label="event"> '
             '<button id="f-apply" type="button">filter</button> <a href="/audit">clear</a>'
             '</p><p class="summary">{n} of {t} entries{s}, newest first</p>{e}{table}',
             chain=chain, dv=device_ref, ev=event, n=len(entries), t=total,
             s=f" ({shown})" if shown else "", e=error or Markup(""),
             table=audit_table(entries))
    return layout("audit", "audit", body, ("audit.js",))
