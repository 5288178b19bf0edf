# PYTHON_ARGCOMPLETE_OK  (argcomplete: this program answers tab completion itself)
"""``attestgate-admin``: the operator's command line, run on the server.

It talks to Redis directly (``ATTESTGATE_REDIS_URL`` or ``--redis-url``), reads
the server home (``ATTESTGATE_SERVER_HOME``) for the gateway's Noise key and the
audit key (commands that write an audit entry append its checkpoint there too), and
publishes revocations to the gateways' events endpoints (``ATTESTGATE_EVENTS``).
Every command takes ``--json`` (one JSON document on stdout). Exit codes are
the ``EXIT_*`` constants below; errors go to stderr as
``attestgate-admin: <words> (<code>)``. Nothing prints a secret except
``token create``, once, the token it has just made.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from services.registry import admin_output as out
from services.registry import health
from shared import cli_conventions as conv
from shared.audit import (
    AuditKey,
    ChainProblem,
    Checkpoint,
    checkpoint_doc,
    latest_checkpoint,
    parse_checkpoint,
    verify_chain,
)
from shared.audit_anchor import CHECKPOINT_FILE, CheckpointFile
from shared.board_settings import BoardSettings
from shared.bus.interface import BusEvent
from shared.bus.zmq_bus import ZmqPublisher
from shared.config import ConfigError, ServerConfig
from shared.console_settings import ConsoleSettings
from shared.console_token import API_TTL, LOGIN_TTL, TokenKind, load_or_create_key, make_token
from shared.errors import AttestgateError, ErrorCode
from shared.keys import Random, enroll_psk, fingerprint
from shared.ops_settings import OpsSettings
from shared.post_display import format_post
from shared.posts import Problem, check_post, post_view
from shared.records import AuditEntry, Baseline, Device, DeviceStatus, Token
from shared.store.interface import forget_unreferenced_logs, referenced_logs
from shared.store.redis_store import RedisStore
from shared.timing import PUBLISH_CONNECT_TIMEOUT, TOKEN_DEFAULT_TTL
from shared.vault import (
    AUDIT_KEY_FILE,
    KEY_FILES,
    ServerKeyError,
    StoreUsage,
    audit_key,
    init_server_home,
    server_static,
)
from shared.wire import TOKEN_ID_LEN, Event

PROG = "attestgate-admin"
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_REFUSED, EXIT_STORE = 0, 1, 2, 3, 4
TOKEN_SECRET_LEN = 32
_AUDIT_ALL = 1 << 62  # XRANGE COUNT: the whole log (Store.read_audit defaults to 10 000)
_POST_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
_EK_FPR = re.compile(r"[0-9a-f]{64}")
_PROBLEM_WORDS = {"hash": "edited", "link": "missing or reordered", "head": "tail cut",
                  "truncated": "tail cut (checkpoint counts more entries)",
                  "deleted": "log deleted (checkpoint counts entries)",
                  "rewritten": "rewritten (differs from its checkpoint)",
                  "checkpoint": "checkpoint forged or corrupt",
                  "unanchored": "no checkpoint file"}
_EXPORT_FORMAT = "attestgate-audit-export/1"
_MAX_EXPORT_READ = 1 << 30
_EXIT_FOR = {ErrorCode.STORE_UNAVAILABLE: EXIT_STORE, ErrorCode.BAD_REQUEST: EXIT_USAGE,
             ErrorCode.INTERNAL: EXIT_INTERNAL}


class AdminError(Exception):
    """A refusal to report: exit code, short machine code, plain words for the operator."""

    def __init__(self, exit_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.exit_code, self.code, self.message = exit_code, code, message


@dataclass(frozen=True)
class Outcome:
    doc: out.Doc
    text: str
    failure: AdminError | None = None  # printed after the document (audit --verify)


@dataclass
class Context:
    config: ServerConfig
    redis_url: str
    now: float
    rng: Random
    warn: Callable[[str], None]
    board: BoardSettings = field(default_factory=BoardSettings.defaults)
    env: Mapping[str, str] = field(default_factory=dict)
    _store: RedisStore | None = field(default=None, init=False)

    @property
    def store(self) -> RedisStore:
        """The store; it can append audit entries when the audit key is in the server home."""
        if self._store is None:
            try:
                key: AuditKey | None = audit_key(self.config.server_home)
            except ServerKeyError:
                key = None  # read-only commands work without it; writers check first
            self._store = RedisStore(self.redis_url, audit_key=key,
                                     checkpoints=self.checkpoints)
        return self._store

    @property
    def checkpoints(self) -> CheckpointFile:
        return CheckpointFile(self.config.server_home / CHECKPOINT_FILE)

    def audit_key(self) -> AuditKey:
        """The audit key; raises AdminError before anything is changed when it is absent."""
        try:
            return audit_key(self.config.server_home)
        except ServerKeyError as exc:
            raise AdminError(EXIT_REFUSED, "no_audit_key", exc.message) from None

    def reset_store(self) -> None:
        """Forget the store connection (it re-reads the audit key when next used)."""
        self.close()
        self._store = None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _safe_url(url: str) -> str:
    """The Redis URL without credentials, for messages."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{f':{u.port}' if u.port else ''}{u.path}"


def _find(ctx: Context, ref: str) -> Device | None:
    return ctx.store.get_device(ref) or ctx.store.device_by_name(ref)


def _device(ctx: Context, ref: str) -> Device:
    device = _find(ctx, ref)
    if device is None:
        raise AdminError(EXIT_REFUSED, ErrorCode.UNKNOWN_DEVICE.value,
                         f"no device named or with id {ref!r}")
    return device


def _label(d: Device) -> str:
    return f"{d.name} ({d.device_id})"


def read_source(source: str, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes from a file or ``-`` (stdin); AdminError (exit 2) beyond it or
    when the file cannot be read."""
    try:
        if source == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(source, "rb") as fh:
                data = fh.read(limit + 1)
    except OSError as exc:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         f"cannot read {source}: {exc.strerror}") from None
    if len(data) > limit:
        raise AdminError(EXIT_USAGE, ErrorCode.TOO_LARGE.value,
                         f"the {what} is larger than {limit} bytes")
    return data


# -- commands ------------------------------------------------------------------------------


def cmd_server_key(args: argparse.Namespace, ctx: Context) -> Outcome:
    home = ctx.config.server_home
    try:
        fpr = fingerprint(server_static(home).public)
    except ServerKeyError as exc:
        raise AdminError(EXIT_REFUSED, "no_server_key", exc.message) from None
    return Outcome({"fingerprint": fpr, "server_home": str(home)}, fpr)


def cmd_init(args: argparse.Namespace, ctx: Context) -> Outcome:
    home = ctx.config.server_home

    def usage() -> StoreUsage:
        devices, entries = ctx.store.usage()
        return StoreUsage(devices, entries)

    archived: dict[str, Any] = {}
    if args.new_audit_key:
        archived = _new_audit_key(ctx)
    try:
        created = init_server_home(home, usage, ctx.rng)
        from services.registry import admin_secrets  # noqa: PLC0415 - it imports this module

        created = (*created, *admin_secrets.init_policy_key(ctx, store_optional=True))
        fpr = fingerprint(server_static(home).public)
    except ServerKeyError as exc:
        raise AdminError(EXIT_REFUSED, "keys_lost", exc.message) from None
    if archived:
        ctx.reset_store()  # opened without an audit key to count what the store holds
        ctx.store.append_audit("audit_rekeyed", "", archived, ctx.now)
    doc = {"server_home": str(home), "created": list(created), "fingerprint": fpr,
           **({"audit_archived": archived} if archived else {})}
    text = (f"created {', '.join(created)} in {home} (mode 0600; back them up)" if created
            else f"{home} already holds {', '.join(KEY_FILES)}") + f"\nserver key {fpr}"
    if archived:
        text += (f"\nthe old audit log ({archived['entries']} entries) was moved to "
                 f"{archived['archive']}; the new log starts with an 'audit_rekeyed' entry")
    return Outcome(doc, text)


def _new_audit_key(ctx: Context) -> dict[str, Any]:
    """Start a new audit chain under a new key: the old log (which no key here can verify,
    e.g. written before audit keys existed, or whose key is lost) is kept aside in Redis."""
    home = ctx.config.server_home
    if (home / AUDIT_KEY_FILE).exists():
        raise AdminError(EXIT_REFUSED, "audit_key_present",
                         f"{home / AUDIT_KEY_FILE} exists: --new-audit-key only replaces a "
                         "missing audit key")
    others = [f for f in KEY_FILES if f != AUDIT_KEY_FILE and not (home / f).exists()]
    if others:
        raise AdminError(EXIT_REFUSED, "keys_lost",
                         f"{home} has no {' and '.join(others)}: --new-audit-key replaces only "
                         "the audit key; restore the others from backup first")
    archive, count, head = ctx.store.archive_audit(f"archived-{int(ctx.now)}")
    checkpoints = ""
    if ctx.checkpoints.exists():
        moved = ctx.checkpoints.path.with_name(f"{CHECKPOINT_FILE}.archived-{int(ctx.now)}")
        os.replace(ctx.checkpoints.path, moved)
        checkpoints = str(moved)
    return {"archive": archive if count else "", "entries": count, "head": head,
            "checkpoints": checkpoints}


def cmd_devices(args: argparse.Namespace, ctx: Context) -> Outcome:
    doc = {"devices": [out.device_row(d) for d in ctx.store.list_devices()]}
    return Outcome(doc, out.render_devices(doc))


def cmd_show(args: argparse.Namespace, ctx: Context) -> Outcome:
    from services.registry import admin_policy  # noqa: PLC0415 - it imports this module

    device = _device(ctx, args.device)
    doc = {**out.device_detail(device),
           "rule_policy": admin_policy.applying(ctx, device.device_id)}
    text = out.render_device(doc) + "\n\nrule policy: " + admin_policy.applying_text(
        doc["rule_policy"])
    return Outcome(doc, text)


def cmd_approve(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    device = _device(ctx, args.device)
    before: list[Device] = []
    grace = ctx.config.baseline_grace
    keep = args.baselines == "keep"  # --replace (the default) or --keep
    superseded: list[str] = []

    def change(d: Device) -> Device:
        before[:] = [d]
        refused = d.last_refused
        if refused is None:
            raise AdminError(EXIT_REFUSED, ErrorCode.NOT_FOUND.value,
                             f"device {_label(d)} has no refused PCR state to approve")
        state = dataclasses.replace(refused, approved_at=ctx.now, expires_at=0.0)
        others = [b for b in d.baselines
                  if b.live(ctx.now) and b.baseline_id != state.baseline_id]
        if keep:
            baselines: tuple[Baseline, ...] = (*others, state)
        else:  # the refused state replaces the current baselines (kept for the grace only)
            old = [b for b in others if grace > 0]
            superseded[:] = [b.baseline_id for b in others]
            baselines = (state, *(b if b.expires_at else
                                  dataclasses.replace(b, expires_at=ctx.now + grace)
                                  for b in old))
        status = DeviceStatus.ACTIVE if d.status is DeviceStatus.LOCKED else d.status
        return dataclasses.replace(d, baselines=baselines, failures=0, status=status,
                                   last_refused=None)

    new = ctx.store.update_device(device.device_id, change)
    old = before[0]
    forget_unreferenced_logs(ctx.store, old, new)
    adopted = out.baseline_view(old.last_refused) if old.last_refused else {}
    mode = "keep" if keep else "replace"
    detail = {**adopted, "baselines": len(new.baselines), "from": old.status.value,
              "status": new.status.value, "mode": mode, "superseded": superseded,
              "grace": 0.0 if keep else grace}
    ctx.store.append_audit("approved", new.device_id, detail, ctx.now)
    from services.registry import admin_secrets  # noqa: PLC0415 - it imports this module

    signed = admin_secrets.after_approve(ctx, new)  # PCR-bound secrets: sign the new state
    doc = {"device_id": new.device_id, "name": new.name, **detail, "secrets_signed": signed}
    if keep:
        kept = f"kept beside the {len(new.baselines) - 1} other baseline(s)"
    elif superseded and grace > 0:
        kept = (f"replacing {len(superseded)} baseline(s), still accepted for {grace:g} s "
                "(ATTESTGATE_BASELINE_GRACE)")
    else:
        kept = f"replacing {len(superseded)} baseline(s), no longer accepted"
    text = (f"approved the last refused PCR state of {_label(new)} as baseline "
            f"{adopted['id']} ({adopted['selection']}), {kept}; failures reset to 0; "
            f"status {old.status.value} -> {new.status.value}")
    if new.status is DeviceStatus.REENROLL:
        text += ("\nthe device must still enroll again (status reenroll); "
                 f"or make it active: attestgate-admin unlock {new.name}")
    elif new.status is DeviceStatus.REVOKED:
        text += ("\nthe device stays revoked; to let its TPM enroll again: "
                 f"attestgate-admin delete {new.name} --yes")
    return Outcome(doc, text)


def cmd_baseline_list(args: argparse.Namespace, ctx: Context) -> Outcome:
    d = _device(ctx, args.device)
    doc = {"device_id": d.device_id, "name": d.name,
           "baselines": [out.baseline_row(b, ctx.now) for b in d.baselines]}
    return Outcome(doc, out.render_baselines(doc))


def cmd_baseline_remove(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    device = _device(ctx, args.device)
    wanted = set(args.ids)
    before: list[Device] = []

    def change(d: Device) -> Device:
        ids = {b.baseline_id for b in d.baselines}
        unknown = sorted(wanted - ids)
        if unknown:
            raise AdminError(EXIT_REFUSED, ErrorCode.NOT_FOUND.value,
                             f"device {_label(d)} has no baseline {', '.join(unknown)} "
                             f"(see: attestgate-admin baseline list {d.name})")
        before[:] = [d]
        rest = tuple(b for b in d.baselines if b.baseline_id not in wanted)
        if not any(b.live(ctx.now) for b in rest):
            raise AdminError(EXIT_REFUSED, "last_baseline",
                             f"refusing to remove the last accepted baseline of {_label(d)}: "
                             "approve another state first, or delete the device")
        return dataclasses.replace(d, baselines=rest)

    new = ctx.store.update_device(device.device_id, change)
    forget_unreferenced_logs(ctx.store, before[0], new)
    from services.registry import admin_secrets  # noqa: PLC0415 - it imports this module

    admin_secrets.after_approve(ctx, new)  # PCR-bound secrets: only the remaining states
    removed = sorted(wanted)
    ctx.store.append_audit("baseline_removed", new.device_id,
                           {"removed": removed, "baselines": len(new.baselines)}, ctx.now)
    doc = {"device_id": new.device_id, "name": new.name, "removed": removed,
           "baselines": [out.baseline_row(b, ctx.now) for b in new.baselines]}
    return Outcome(doc, f"removed baseline(s) {', '.join(removed)} of {_label(new)}; "
                        f"{len(new.baselines)} left")


def cmd_delete(args: argparse.Namespace, ctx: Context) -> Outcome:
    device = _device(ctx, args.device)
    if not args.yes:
        raise AdminError(EXIT_REFUSED, "not_confirmed",
                         f"delete removes the record of {_label(device)} (its audit history "
                         "and posts stay) and lets its TPM enroll again; run it again with "
                         "--yes")
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    gone = ctx.store.delete_device(device.device_id)
    if gone is None:
        raise AdminError(EXIT_REFUSED, ErrorCode.UNKNOWN_DEVICE.value,
                         f"device {_label(device)} was deleted meanwhile")
    # What only this record referred to goes with it: its secrets and its event logs.
    secrets = sorted(ctx.store.list_secrets(gone.device_id))
    for name in secrets:
        ctx.store.delete_secret(gone.device_id, name)
    for digest in sorted(referenced_logs(gone)):
        ctx.store.delete_event_log(gone.device_id, digest)
    ctx.store.append_audit("deleted", gone.device_id,
                           {"name": gone.name, "ek": gone.ek_fingerprint,
                            "status": gone.status.value, "secrets": secrets}, ctx.now)
    reached = _publish(ctx, BusEvent(Event.DEVICE_REVOKED.value, {"device_id": gone.device_id}))
    doc = {"device_id": gone.device_id, "name": gone.name, "was": gone.status.value,
           "gateways_notified": reached, "gateways": len(ctx.config.events_endpoints)}
    return Outcome(doc, f"deleted {_label(gone)} (was {gone.status.value}); its audit history "
                        "stays; the machine may enroll again (attestgate enroll --force ...)")


def cmd_allow_reenroll(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    # Also by EK fingerprint: a machine that lost its home knows only its TPM.
    by_ek = ctx.store.device_by_ek(args.device.lower()) if _EK_FPR.fullmatch(
        args.device.lower()) else None
    device = by_ek or _device(ctx, args.device)
    before: list[Device] = []

    def change(d: Device) -> Device:
        before[:] = [d]
        return dataclasses.replace(d, status=DeviceStatus.REENROLL)

    new = ctx.store.update_device(device.device_id, change)
    was = before[0].status
    ctx.store.append_audit("reenroll_allowed", new.device_id,
                           {"name": new.name, "from": was.value}, ctx.now)
    doc = {"device_id": new.device_id, "name": new.name, "status": new.status.value,
           "from": was.value}
    return Outcome(doc, f"{_label(new)} may enroll again once from the same TPM (status "
                        f"{was.value} -> reenroll; it cannot connect until it does): on the "
                        "machine run `attestgate enroll --force` with its --server and --name")


def cmd_token_list(args: argparse.Namespace, ctx: Context) -> Outcome:
    """Tokens as the audit log knows them (created, used, burned, revoked) and the store."""
    tokens: dict[str, dict[str, Any]] = {}
    for e in ctx.store.read_audit(None, _AUDIT_ALL):
        try:
            detail = json.loads(e.detail)
        except ValueError:
            continue
        if not isinstance(detail, dict):
            continue
        tid = detail.get("token_id") if e.event.startswith("token_") else detail.get("token")
        if not isinstance(tid, str) or not tid:
            continue
        if e.event == "token_created":
            tokens[tid] = {"token_id": tid, "created_at": out.iso(e.ts),
                           "expires_ts": float(detail.get("expires_at") or 0), "state": ""}
        elif tid in tokens and e.event in ("enrolled", "reenrolled"):
            tokens[tid].update(state="used", device_id=e.device_id, used_at=out.iso(e.ts))
        elif tid in tokens and e.event in ("token_burned", "token_revoked"):
            tokens[tid]["state"] = e.event.removeprefix("token_")
    rows = []
    for t in tokens.values():
        expires = t.pop("expires_ts")
        if not t["state"]:
            live = ctx.store.get_token(t["token_id"], ctx.now) is not None
            t["state"] = "unused" if live else "expired" if expires <= ctx.now else "gone"
        rows.append({**t, "expires_at": out.iso(expires)})
    doc = {"tokens": rows}
    return Outcome(doc, out.render_tokens(doc))


def cmd_token_revoke(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    token_id = args.token_id.split(".", 1)[0].lower()
    if not re.fullmatch(f"[0-9a-f]{{{2 * TOKEN_ID_LEN}}}", token_id):
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         f"not a token id: {token_id[:40]!r} (see: attestgate-admin token list)")
    if not ctx.store.burn_token(token_id):
        raise AdminError(EXIT_REFUSED, ErrorCode.NOT_FOUND.value,
                         f"no usable token {token_id}: unknown, used, expired or already "
                         "revoked (see: attestgate-admin token list)")
    ctx.store.append_audit("token_revoked", "", {"token_id": token_id}, ctx.now)
    return Outcome({"token_id": token_id, "state": "revoked"},
                   f"revoked token {token_id}: it can no longer enroll a device")


def cmd_revoke(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    device = _device(ctx, args.device)
    before: list[Device] = []

    def change(d: Device) -> Device:
        before[:] = [d]
        return dataclasses.replace(d, status=DeviceStatus.REVOKED)

    new = ctx.store.update_device(device.device_id, change)
    was = before[0].status
    if was is not DeviceStatus.REVOKED:
        ctx.store.append_audit("revoked", new.device_id, {"name": new.name, "from": was.value},
                               ctx.now)
    # Published even when already revoked: closing live sessions is idempotent.
    endpoints = ctx.config.events_endpoints
    reached = _publish(ctx, BusEvent(Event.DEVICE_REVOKED.value, {"device_id": new.device_id}))
    if reached < len(endpoints):
        ctx.warn(f"the revocation event reached {reached} of {len(endpoints)} gateway(s) "
                 f"({', '.join(endpoints)}) within {PUBLISH_CONNECT_TIMEOUT:g} s; their live "
                 "sessions stay open until re-attestation, and the attestor refuses the device "
                 "on its next connect anyway")
    doc = {"device_id": new.device_id, "name": new.name, "status": new.status.value,
           "from": was.value, "gateways_notified": reached, "gateways": len(endpoints)}
    text = (f"revoked {_label(new)} (was {was.value}); "
            f"{reached} of {len(endpoints)} gateway(s) told to close its sessions")
    return Outcome(doc, text)


def _publish(ctx: Context, event: BusEvent) -> int:
    """Best effort: how many gateways subscribed in time (0 on any failure, with a warning)."""
    try:
        publisher = ZmqPublisher(ctx.config.events_endpoints)
    # The publisher may raise ZeroMQ's own errors (a malformed endpoint), which this
    # module must not import; any failure here only costs the live-session kick.
    except Exception as exc:
        ctx.warn(f"could not publish to {', '.join(ctx.config.events_endpoints)}: "
                 f"{type(exc).__name__}")
        return 0
    try:
        publisher.publish(event)
        return publisher.subscribers
    finally:
        publisher.close()


def cmd_unlock(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    device = _device(ctx, args.device)
    before: list[Device] = []

    def change(d: Device) -> Device:
        before[:] = [d]
        if d.status is DeviceStatus.REVOKED:
            raise AdminError(EXIT_REFUSED, ErrorCode.REVOKED.value,
                             f"device {_label(d)} is revoked, which is permanent: "
                             "to let its TPM enroll again, run `attestgate-admin delete "
                             f"{d.name} --yes`")
        return dataclasses.replace(d, status=DeviceStatus.ACTIVE, failures=0)

    new = ctx.store.update_device(device.device_id, change)
    old = before[0]
    changed = old.status is not DeviceStatus.ACTIVE or old.failures != 0
    if changed:
        ctx.store.append_audit("unlocked", new.device_id,
                               {"from": old.status.value, "failures": old.failures}, ctx.now)
    doc = {"device_id": new.device_id, "name": new.name, "status": new.status.value,
           "from": old.status.value, "failures_before": old.failures, "changed": changed}
    text = (f"unlocked {_label(new)}: status {old.status.value} -> active, "
            f"failures {old.failures} -> 0" if changed else f"{_label(new)} was already active")
    return Outcome(doc, text)


def cmd_token_create(args: argparse.Namespace, ctx: Context) -> Outcome:
    ctx.audit_key()  # refuse before changing anything if no entry can be written
    token_id = ctx.rng(TOKEN_ID_LEN).hex()
    secret = base64.urlsafe_b64encode(ctx.rng(TOKEN_SECRET_LEN)).rstrip(b"=").decode()
    expires = ctx.now + args.ttl
    # The client derives the PSK from the text after the dot, exactly as typed.
    ctx.store.put_token(Token(token_id, enroll_psk(secret.encode()).value, ctx.now, expires))
    ctx.store.append_audit("token_created", "", {"token_id": token_id, "expires_at": expires},
                           ctx.now)
    token = f"{token_id}.{secret}"
    doc = {"token": token, "token_id": token_id, "expires_at": out.iso(expires),
           "ttl": args.ttl}
    text = (f"{token}\none-time enrollment token, valid until {out.iso(expires)}; "
            "it is shown only now: attestgate enroll ... --token <token>")
    return Outcome(doc, text)


def _read_checkpoints(ctx: Context) -> list[Checkpoint | None] | None:
    """The checkpoint file's lines; None when there is no file."""
    try:
        return ctx.checkpoints.read()
    except FileNotFoundError:
        return None


def _external_checkpoint(path: str) -> Checkpoint | None:
    """The checkpoint of an ``audit export`` file (or of a bare checkpoint document)."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_EXPORT_READ)
        doc = json.loads(data)
    except ValueError:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         f"{path} is not an audit export (JSON)") from None
    if isinstance(doc, dict) and isinstance(doc.get("checkpoint"), dict):
        doc = doc["checkpoint"]
    cp = parse_checkpoint(doc) if isinstance(doc, dict) else None
    if cp is None:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value,
                         f"{path} holds no audit checkpoint")
    return cp


def _verify(ctx: Context, chain: list[AuditEntry], extra: list[Checkpoint | None]
            ) -> list[ChainProblem]:
    key = ctx.audit_key()
    checkpoints = _read_checkpoints(ctx)
    problems = verify_chain(chain, ctx.store.audit_head(), key, (checkpoints or []) + extra)
    if checkpoints is None and chain:
        problems.append(ChainProblem("", "unanchored"))
    return problems


def _problem_docs(problems: list[ChainProblem]) -> list[dict[str, str]]:
    return [{"entry_id": p.entry_id, "problem": _PROBLEM_WORDS[p.problem], "check": p.problem}
            for p in problems]


def cmd_audit(args: argparse.Namespace, ctx: Context) -> Outcome:
    if args.device == "export":
        return _audit_export(args, ctx)
    device_id, device = None, None
    if args.device:
        device = _find(ctx, args.device)
        device_id = device.device_id if device else args.device
    entries = ctx.store.read_audit(device_id, _AUDIT_ALL)
    if args.device and device is None and not entries:
        _device(ctx, args.device)  # raises: unknown device
    shown = entries[-args.limit:] if args.limit else entries
    doc: out.Doc = {"entries": [out.audit_view(e) for e in shown]}
    failure = None
    if args.verify or args.checkpoint:
        chain = list(entries if device_id is None else ctx.store.read_audit(None, _AUDIT_ALL))
        extra = [_external_checkpoint(args.checkpoint)] if args.checkpoint else []
        problems = _verify(ctx, chain, extra)
        doc["checked"] = len(chain)
        doc["problems"] = _problem_docs(problems)
        if problems:
            failure = AdminError(EXIT_REFUSED, "audit_broken",
                                 f"audit log verification failed: {len(problems)} problem(s)")
    return Outcome(doc, out.render_audit(doc), failure)


_POST_PROBLEMS = {
    Problem.DEVICE: "its device is not in the registry",
    Problem.SIGNATURE: "the device id, time, key or text differ from what the device signed",
    Problem.AUTHOR: "the store holds an author that is not the registry's name of the device",
    Problem.TIME: "the signed time is further than ATTESTGATE_POST_CLOCK_SKEW from when the "
                  "board stored it",
}


def _audit_export(args: argparse.Namespace, ctx: Context) -> Outcome:
    """Every entry with its chain fields and the newest checkpoint, to keep off the machine."""
    key = ctx.audit_key()
    chain = list(ctx.store.read_audit(None, _AUDIT_ALL))
    checkpoints = _read_checkpoints(ctx) or []
    latest = latest_checkpoint(key, checkpoints)
    problems = _verify(ctx, chain, [])
    doc: out.Doc = {
        "format": _EXPORT_FORMAT,
        "exported_at": out.iso(ctx.now),
        "server_home": str(ctx.config.server_home),
        "count": len(chain),
        "head": ctx.store.audit_head(),
        "checkpoint": checkpoint_doc(latest) if latest else None,
        "problems": _problem_docs(problems),
        "entries": [{**out.audit_view(e), "ts": e.ts, "detail_json": e.detail, "prev": e.prev,
                     "hash": e.hash} for e in chain],
    }
    text = json.dumps(doc, indent=2)
    if args.output:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        text = (f"exported {len(chain)} audit entries and the checkpoint at entry "
                f"{latest.count if latest else 0} to {args.output}; keep it off this machine and "
                f"check later with: {PROG} audit --verify --checkpoint {args.output}")
    failure = None
    if problems:
        failure = AdminError(EXIT_REFUSED, "audit_broken",
                             f"audit log verification failed: {len(problems)} problem(s)")
    return Outcome(doc, text, failure)


def cmd_verify_post(args: argparse.Namespace, ctx: Context) -> Outcome:
    """Check all a reader is shown: the signature over device id, time, key and text under
    the device's post key, the author (the registry's name), the time's plausibility."""
    post = ctx.store.get_post(args.post_id) if _POST_ID.fullmatch(args.post_id) else None
    if post is None:
        raise AdminError(EXIT_REFUSED, ErrorCode.NOT_FOUND.value, f"no post {args.post_id!r}")
    device = ctx.store.get_device(post.device_id)
    problems = check_post(device, post, ctx.board.clock_skew)
    doc = {**post_view(post, device, verified=not problems), "received_at": post.received_at,
           "problems": [p.value for p in problems]}
    failure = None
    if problems:
        code = ErrorCode.UNKNOWN_DEVICE if Problem.DEVICE in problems else ErrorCode.BAD_SIGNATURE
        failure = AdminError(EXIT_REFUSED, code.value,
                             f"post {post.post_id} does NOT verify: "
                             + "; ".join(f"{p.value}: {_POST_PROBLEMS[p]}" for p in problems))
    text = "\n".join([format_post(doc), "verified" if not problems else
                      "NOT verified (" + ", ".join(p.value for p in problems) + ")"])
    return Outcome(doc, text, failure)


def cmd_console_token(args: argparse.Namespace, ctx: Context) -> Outcome:
    """A login link for the web console (or, with --bearer, a token for scripts). Touches
    neither Redis nor the services: only the console key in the server home."""
    settings = ConsoleSettings.from_env(ctx.env)
    key = load_or_create_key(ctx.config.server_home, ctx.rng)
    kind = TokenKind.API if args.bearer else TokenKind.LOGIN
    ttl = args.ttl or (API_TTL if args.bearer else LOGIN_TTL)
    try:
        token = make_token(key, kind, ctx.now, ttl, ctx.rng)
    except ValueError as exc:
        raise AdminError(EXIT_USAGE, ErrorCode.BAD_REQUEST.value, f"--ttl: {exc}") from None
    expires = out.iso(ctx.now + ttl)
    if args.bearer:
        return Outcome({"token": token, "kind": kind.value, "expires_at": expires,
                        "url": settings.url},
                       f"{token}\nbearer token for {settings.url}, valid until {expires}: "
                       f"curl -H 'Authorization: Bearer <token>' {settings.url}/devices")
    link = f"{settings.url}/login?token={token}"
    return Outcome({"link": link, "kind": kind.value, "expires_at": expires},
                   f"{link}\nopen this link in a browser before {expires} (it works once)")


def cmd_purge(args: argparse.Namespace, ctx: Context) -> Outcome:
    if not args.yes:
        raise AdminError(EXIT_REFUSED, "not_confirmed",
                         "purge deletes every attestgate key in Redis (devices, tokens, posts; "
                         "the audit log too with --include-audit) and cannot be undone; run it "
                         "again with --yes")
    ctx.audit_key()  # the purge itself is recorded in the chain
    if not args.include_audit:
        n = ctx.store.purge(keep_audit=True)
        ctx.store.append_audit("purged", "", {"deleted": n, "audit": "kept"}, ctx.now)
        return Outcome({"deleted": n, "audit_kept": True},
                       f"deleted {n} key(s) from {_safe_url(ctx.redis_url)}; the audit log is "
                       "kept and records the purge")
    old = ctx.store.read_audit(None, _AUDIT_ALL)
    old_head = ctx.store.audit_head()
    n = ctx.store.purge()
    # The old checkpoints describe the deleted log: keep them beside the new one, renamed,
    # and open the new chain with an entry that says what was dropped.
    archived = ""
    if ctx.checkpoints.exists():
        archive = ctx.checkpoints.path.with_name(f"{CHECKPOINT_FILE}.purged-{int(ctx.now)}")
        os.replace(ctx.checkpoints.path, archive)
        archived = str(archive)
    ctx.store.append_audit("audit_purged", "", {"deleted": n, "entries": len(old),
                                                "head": old_head, "checkpoints": archived},
                           ctx.now)
    return Outcome({"deleted": n, "audit_kept": False, "audit_entries_dropped": len(old),
                    "checkpoints_archived": archived},
                   f"deleted {n} key(s) from {_safe_url(ctx.redis_url)}, the audit log "
                   f"({len(old)} entries) included; the new log starts with an 'audit_purged' "
                   "entry" + (f"; old checkpoints kept in {archived}" if archived else ""))


def cmd_health(args: argparse.Namespace, ctx: Context) -> Outcome:
    """Reads only addresses (Redis URL, listen and metrics ports): no key, no token."""
    ops = OpsSettings.from_env(ctx.env)
    checks = health.run_checks(ctx.redis_url, _safe_url(ctx.redis_url),
                               (ctx.config.listen_host, ctx.config.listen_port),
                               ops.metrics_address("gateway"))
    down = [c.name for c in checks if not c.ok]
    failure = AdminError(EXIT_STORE, "unhealthy", "down: " + ", ".join(down)) if down else None
    return Outcome({"checks": [c.view() for c in checks], "down": down},
                   health.text_report(checks), failure)


# -- parser and main -------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 10 * 365 * 86400:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


_DESCRIPTION = """\
Operate an attestgate server: list and inspect enrolled devices, approve a new
PCR state, revoke or unlock devices, issue enrollment tokens, read and verify
the hash-chained audit log. Runs on the server and talks to Redis directly."""

_EPILOG = """\
environment: ATTESTGATE_REDIS_URL (store), ATTESTGATE_SERVER_HOME (server keys, audit checkpoints),
ATTESTGATE_EVENTS (gateway events endpoints, for revoke and delete),
ATTESTGATE_BASELINE_GRACE (seconds a baseline superseded by approve stays accepted; default 0)
exit codes: 0 ok, 1 internal error, 2 usage, 3 refused or not found, 4 store unreachable
(health: something is down), 130 interrupted"""

# Examples shown in each command's --help (a command not listed gets one built from its usage).
_EXAMPLES: dict[str, list[str]] = {
    "server-key": ["attestgate-admin server-key",
                   "attestgate enroll --server gw --name n1 --server-key "
                   "$(attestgate-admin server-key)"],
    "init": ["attestgate-admin init", "attestgate-admin init --new-audit-key"],
    "devices": ["attestgate-admin devices", "attestgate-admin devices --json | jq '.devices[]'"],
    "show": ["attestgate-admin show kiosk-7", "attestgate-admin show kiosk-7 --json"],
    "approve": ["attestgate-admin approve kiosk-7"],
    "revoke": ["attestgate-admin revoke kiosk-7"],
    "unlock": ["attestgate-admin unlock kiosk-7"],
    "audit": ["attestgate-admin audit --limit 20", "attestgate-admin audit kiosk-7",
              "attestgate-admin audit --verify",
              "attestgate-admin audit export --output audit-$(date +%F).json"],
    "verify-post": ["attestgate-admin verify-post 1700000000000-0"],
    "console-token": ["attestgate-admin console-token", "attestgate-admin console-token --bearer"],
    "purge": ["attestgate-admin purge --yes"],
    "token": ["attestgate-admin token create --ttl 3600", "attestgate-admin token list"],
    "health": ["attestgate-admin health", "attestgate-admin health --json"],
    "delete": ["attestgate-admin delete kiosk-7 --yes"],
    "allow-reenroll": ["attestgate-admin allow-reenroll kiosk-7"],
    "token create": ["attestgate-admin token create",
                     "attestgate-admin token create --ttl 3600 --json"],
}
GLOBAL_OPTIONS: list[conv.GlobalOption] = [
    (("--json",), {"action": "store_true", "help": "print one JSON document on stdout"}),
    (("--redis-url",), {"metavar": "URL", "help": "Redis URL (default: $ATTESTGATE_REDIS_URL)"}),
]


def cmd_completion(args: argparse.Namespace, ctx: Context) -> Outcome:
    script = conv.completion_script(PROG, args.shell)
    return Outcome({"shell": args.shell, "script": script}, script.rstrip("\n"))


# name -> (handler, help, description: what it does and what it changes)
_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace, Context], Outcome], str, str]] = {
    "server-key": (cmd_server_key, "print the gateway's key fingerprint for clients to pin",
                   "Print the fingerprint of the gateway's Noise static key, for clients to pin "
                   "with --server-key. Never creates a key: with no key in "
                   "ATTESTGATE_SERVER_HOME it says so (exit 3). Read-only."),
    "init": (cmd_init, "create the server keys in the server home (first install)",
             "Create the server keys that are missing in ATTESTGATE_SERVER_HOME (Noise static "
             "key, storage key, audit key; mode 0600), as the gateway's first start does. "
             "Refused (exit 3) when a key is missing while Redis holds what it protects "
             "(devices, audit entries): restore it from backup instead. Prints the server key "
             "fingerprint. With --new-audit-key, when audit.key is missing (lost, or a log "
             "from before audit keys): the old log is moved aside in Redis (ag:{audit}:log:"
             "archived-TIME) with its checkpoints, a new audit key is created, and the new log "
             "starts with an 'audit_rekeyed' entry naming the archive."),
    "devices": (cmd_devices, "list enrolled devices",
                "List every enrolled device: name, id, status, failures, enrollment and last "
                "attestation time (UTC). Read-only."),
    "show": (cmd_show, "show everything about one device",
             "Show one device: public key facts (EK fingerprint and certificate, AK/SRK/post key "
             "types and TPM names), PCR selection and every approved baseline, the last refused "
             "state and difference, failures, status. Never shows secrets. Read-only."),
    "approve": (cmd_approve, "approve a device's last refused PCR state",
                "Adopt the device's last refused PCR state as its approved baseline, reset its "
                "failure count, and make a LOCKED device ACTIVE again (a REVOKED or REENROLL "
                "device keeps its status). With --replace (the default) the new state "
                "replaces the current baselines: they are no longer accepted, or only for "
                "ATTESTGATE_BASELINE_GRACE seconds; with --keep they stay accepted too. "
                "Writes an 'approved' audit entry. Refused (exit 3) when no refused state is "
                "recorded. Example: attestgate-admin approve dev1 --keep"),
    "revoke": (cmd_revoke, "revoke a device permanently and close its sessions",
               "Set the device's status to REVOKED (permanent), write a 'revoked' audit entry, "
               "and tell the gateways to close its live sessions. If no gateway hears the "
               "event, a warning is printed and the exit code is still 0."),
    "delete": (cmd_delete, "delete a device's record so that its TPM may enroll again",
               "Delete the device's record and its indexes (name, EK, Noise key): the name is "
               "free and the same TPM may enroll again (attestgate enroll --force). Its audit "
               "history and its posts stay; writes a 'deleted' audit entry and tells the "
               "gateways to close its live sessions. Refused (exit 3) without --yes. "
               "Example: attestgate-admin delete dev1 --yes"),
    "allow-reenroll": (cmd_allow_reenroll, "let a device's TPM enroll again once, replacing it",
                       "DEVICE is a name, a device id or the TPM's EK fingerprint (what a "
                       "machine refused as already_enrolled is told). "
                       "Set the device's status to REENROLL: it cannot connect, and the next "
                       "enrollment from the same TPM (same EK; attestgate enroll --force, with "
                       "its name or a new one) replaces the record, audited 'reenrolled'. The "
                       "way back for a device enrolled with --bind-pcrs whose PCRs changed. "
                       "Writes a 'reenroll_allowed' audit entry. "
                       "Example: attestgate-admin allow-reenroll dev1"),
    "unlock": (cmd_unlock, "make a LOCKED or REENROLL device ACTIVE again",
               "Set a LOCKED or REENROLL device ACTIVE and reset its failure count; writes an "
               "'unlocked' audit entry. A REVOKED device is refused (exit 3)."),
    "audit": (cmd_audit, "print, verify or export the audit log",
              "Print audit entries (time, event, device, detail), all or one device's. With "
              "--verify, check the whole HMAC chain (audit key in ATTESTGATE_SERVER_HOME) "
              "against the stored head and the checkpoints kept in the server home (and "
              "--checkpoint FILE, an earlier export), and name every entry that was edited, "
              "removed or reordered, a cut tail or a deleted log (exit 3). `audit export "
              "[--output FILE]` prints every entry with its chain fields and the newest "
              "checkpoint as JSON, to keep off the machine (a device named 'export' is "
              "shown by its id). Read-only."),
    "verify-post": (cmd_verify_post, "check a board post's TPM signature again",
                    "Verify a stored post again: its signature under its device's post key over "
                    "device id, time, key and text; the author shown is the registry's name; "
                    "exit 3 naming what differs if anything does, or if the post is unknown. "
                    "Read-only."),
    "console-token": (cmd_console_token, "print a login link for the web console",
                      "Print a link that logs a browser into the web console "
                      "(services/console; ATTESTGATE_CONSOLE_URL) for one session; the link "
                      "works once, within --ttl (default 300 s). With --bearer, print a token "
                      "for scripts (Authorization: Bearer; default 24 h). Signed with "
                      "console.key in ATTESTGATE_SERVER_HOME (created 0600 if missing; delete "
                      "it and restart the console to invalidate every token and session). "
                      "Touches no store."),
    "health": (cmd_health, "check that Redis, the bus, every service and the gateway are up",
               "Check Redis (PING), the gateway's health endpoint (ATTESTGATE_METRICS_LISTEN), "
               "the bus and how many workers of each service are alive, and the gateway's "
               "listener (ATTESTGATE_LISTEN). Exit 4 naming what is down. Reads no secret; "
               "read-only."),
    "purge": (cmd_purge, "delete ALL attestgate data from Redis",
              "Delete every attestgate key in Redis: devices, tokens and posts; the audit log "
              "is kept and records a 'purged' entry. With --include-audit the audit log goes "
              "too: the checkpoint file is renamed beside it and the new log starts with an "
              "'audit_purged' entry. Irreversible; refused (exit 3) without --yes. Server keys "
              "on disk stay."),
}


def build_parser() -> conv.Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout instead of text")
    common.add_argument("--redis-url", metavar="URL", default=argparse.SUPPRESS,
                        help="Redis URL (default: $ATTESTGATE_REDIS_URL)")
    p = conv.Parser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
                    global_options=GLOBAL_OPTIONS)
    p.add_argument("--version", action="version", version=f"%(prog)s {conv.package_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, (handler, help_, desc) in _COMMANDS.items():
        parsers[name] = sub.add_parser(name, help=help_, description=desc, parents=[common],
                                       examples=_EXAMPLES.get(name, ()))
        parsers[name].set_defaults(handler=handler)
    for name in ("show", "approve", "revoke", "unlock", "delete", "allow-reenroll"):
        parsers[name].add_argument("device", metavar="DEVICE", help="device name or device id")
    how = parsers["approve"].add_mutually_exclusive_group()
    how.add_argument("--replace", dest="baselines", action="store_const", const="replace",
                     help="the refused state replaces the current baselines (default)")
    how.add_argument("--keep", dest="baselines", action="store_const", const="keep",
                     help="keep the current baselines accepted too")
    parsers["delete"].add_argument("--yes", action="store_true",
                                   help="confirm that the device's record is to be deleted")
    _add_baseline_parser(sub, common)
    parsers["audit"].add_argument("device", metavar="DEVICE", nargs="?",
                                  help="only this device's entries (name or id); or 'export'")
    parsers["audit"].add_argument("--verify", action="store_true",
                                  help="verify the whole hash chain; exit 3 if it is broken")
    parsers["audit"].add_argument("--limit", type=_count, metavar="N",
                                  help="show only the newest N entries")
    parsers["audit"].add_argument("--checkpoint", metavar="FILE",
                                  help="also verify against the checkpoint of an earlier export")
    parsers["audit"].add_argument("--output", metavar="FILE",
                                  help="with 'export': write the JSON to FILE (0600)")
    parsers["verify-post"].add_argument("post_id", metavar="POST_ID", help="e.g. 1700000000000-0")
    parsers["init"].add_argument("--new-audit-key", action="store_true",
                                 help="replace a missing audit key; the old log is kept aside")
    parsers["console-token"].add_argument("--bearer", action="store_true",
                                          help="a token for scripts instead of a login link")
    parsers["console-token"].add_argument("--ttl", type=_seconds, metavar="SECONDS",
                                          help="validity (default 300 s, --bearer 24 h)")
    parsers["purge"].add_argument("--yes", action="store_true",
                                  help="confirm that everything is to be deleted")
    parsers["purge"].add_argument("--include-audit", action="store_true",
                                  help="delete the audit log too (recorded in the new log)")
    token = sub.add_parser("token", help="enrollment tokens",
                           description="Manage one-time enrollment tokens.",
                           examples=_EXAMPLES["token"])
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = tsub.add_parser(
        "create", parents=[common], help="issue a one-time enrollment token",
        description="Issue a one-time enrollment token and print it (the only time its secret "
                    "is shown). Stores only the token id and the PSK derived from the secret, "
                    "expiring after --ttl; writes a 'token_created' audit entry (id only).",
        examples=_EXAMPLES["token create"])
    create.add_argument("--ttl", type=_seconds, default=TOKEN_DEFAULT_TTL, metavar="SECONDS",
                        help=f"validity in seconds (default {TOKEN_DEFAULT_TTL:g})")
    create.set_defaults(handler=cmd_token_create)
    tlist = tsub.add_parser(
        "list", parents=[common], help="list enrollment tokens (never their secrets)",
        description="List the enrollment tokens the audit log records: id, created, expires, "
                    "state (unused, used with the device, burned, revoked, expired). Read-only. "
                    "Example: attestgate-admin token list --json")
    tlist.set_defaults(handler=cmd_token_list)
    trevoke = tsub.add_parser(
        "revoke", parents=[common], help="revoke an unused enrollment token",
        description="Delete an unused enrollment token so that it can never enroll a device; "
                    "writes a 'token_revoked' audit entry. Exit 3 if the token is unknown, "
                    "used, expired or already revoked. Example: attestgate-admin token revoke "
                    "0123456789abcdef0123456789abcdef")
    trevoke.add_argument("token_id", metavar="TOKEN_ID", help="the token id (before the dot)")
    trevoke.set_defaults(handler=cmd_token_revoke)
    conv.add_completion_command(sub, PROG).set_defaults(handler=cmd_completion)
    from services.registry import admin_secrets  # noqa: PLC0415 - it imports this module

    admin_secrets.add_parser(sub, common)
    from services.registry import admin_policy  # noqa: PLC0415 - it imports this module

    admin_policy.add_policy_parser(sub, common)
    return p


def _add_baseline_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    baseline = sub.add_parser("baseline", help="a device's approved PCR baselines",
                              description="List, add or remove a device's approved PCR baselines.")
    bsub = baseline.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    blist = bsub.add_parser(
        "list", parents=[common], help="list a device's baselines with their ids",
        description="List a device's baselines: stable id, state (current; superseded, "
                    "accepted until its expiry; expired), when approved, the PCR values. "
                    "Read-only. Example: attestgate-admin baseline list dev1")
    blist.add_argument("device", metavar="DEVICE", help="device name or device id")
    blist.set_defaults(handler=cmd_baseline_list)
    bremove = bsub.add_parser(
        "remove", parents=[common], help="remove baselines by id",
        description="Remove baselines of a device by id (attestgate-admin baseline list): "
                    "the device is no longer accepted in those states. Refused (exit 3) for an "
                    "unknown id or when no accepted baseline would be left; writes a "
                    "'baseline_removed' audit entry. "
                    "Example: attestgate-admin baseline remove dev1 3f2a9c01b7de")
    bremove.add_argument("device", metavar="DEVICE", help="device name or device id")
    bremove.add_argument("ids", metavar="ID", nargs="+", help="baseline id(s)")
    bremove.set_defaults(handler=cmd_baseline_remove)
    from services.registry import admin_policy  # noqa: PLC0415 - it imports this module

    admin_policy.add_baseline_add_parser(bsub, common)


def main(argv: list[str] | None = None) -> int:
    return run(argv, env=os.environ, stdout=sys.stdout, stderr=sys.stderr, clock=time.time,
               rng=os.urandom)


def run(argv: list[str] | None, *, env: Mapping[str, str], stdout: TextIO,
        stderr: TextIO, clock: Callable[[], float], rng: Random) -> int:
    """``main`` with its environment, streams, clock and randomness as parameters."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    conv.enable_completion(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except conv.UsageError as err:
        return conv.print_usage_error(PROG, err, conv.wants_json(argv), stdout, stderr)

    def warn(text: str) -> None:
        print(f"{PROG}: warning: {text}", file=stderr)

    def fail(err: AdminError) -> int:
        if args.json and not printed:
            print(json.dumps({"ok": False, "error": err.code, "message": err.message}), file=stdout)
        print(f"{PROG}: {err.message} ({err.code})", file=stderr)
        return err.exit_code

    printed = False
    ctx: Context | None = None
    try:
        config = ServerConfig.from_env(env)
        ctx = Context(config, args.redis_url or config.redis_url, clock(), rng, warn,
                      BoardSettings.from_env(env), env)
        outcome = args.handler(args, ctx)
        doc: dict[str, Any] = {"ok": outcome.failure is None, **outcome.doc}
        print(json.dumps(doc, indent=2) if args.json else outcome.text, file=stdout)
        printed = True
        return fail(outcome.failure) if outcome.failure else EXIT_OK
    except AdminError as err:
        return fail(err)
    except conv.UsageError as err:
        return conv.print_usage_error(PROG, err, args.json, stdout, stderr)
    except KeyboardInterrupt:
        return conv.EXIT_INTERRUPTED
    except ConfigError as exc:
        return fail(AdminError(EXIT_USAGE, "bad_setting", str(exc)))
    except AttestgateError as exc:
        words = {ErrorCode.STORE_UNAVAILABLE: "cannot reach the store at "
                 + _safe_url(ctx.redis_url if ctx else "")}.get(exc.code, exc.detail or "failed")
        return fail(AdminError(_EXIT_FOR.get(exc.code, EXIT_REFUSED), exc.code.value, words))
    except OSError as exc:  # the server home: permissions, disk
        return fail(AdminError(EXIT_INTERNAL, ErrorCode.INTERNAL.value,
                               f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}"))
    except Exception as exc:  # a bug: one line here, the traceback in the log
        if env.get("ATTESTGATE_LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exc(file=stderr)
        return fail(AdminError(EXIT_INTERNAL, ErrorCode.INTERNAL.value,
                               conv.report_crash(PROG, exc, env, time.time())))
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
