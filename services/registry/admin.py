"""``attestgate-admin``: the operator's command line, run on the server.

It talks to Redis directly (``ATTESTGATE_REDIS_URL`` or ``--redis-url``), reads
the server home (``ATTESTGATE_SERVER_HOME``) for the gateway's Noise key, and
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
from shared.audit import verify_chain
from shared.board_settings import BoardSettings
from shared.bus.interface import BusEvent
from shared.bus.zmq_bus import ZmqPublisher
from shared.config import ServerConfig
from shared.errors import AttestgateError, ErrorCode
from shared.keys import Random, enroll_psk, fingerprint
from shared.post_display import format_post
from shared.posts import Problem, check_post, post_view
from shared.records import Device, DeviceStatus, Token
from shared.store.redis_store import RedisStore
from shared.timing import PUBLISH_CONNECT_TIMEOUT, TOKEN_DEFAULT_TTL
from shared.vault import NOISE_KEY_FILE, server_static
from shared.wire import TOKEN_ID_LEN, Event

PROG = "attestgate-admin"
EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_REFUSED, EXIT_STORE = 0, 1, 2, 3, 4
TOKEN_SECRET_LEN = 32
_AUDIT_ALL = 1 << 62  # XRANGE COUNT: the whole log (Store.read_audit defaults to 10 000)
_POST_ID = re.compile(r"\d{1,20}(-\d{1,20})?")
_PROBLEM_WORDS = {"hash": "edited", "link": "missing or reordered", "head": "tail cut"}
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
    _store: RedisStore | None = field(default=None, init=False)

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            self._store = RedisStore(self.redis_url)
        return self._store

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


# -- commands ------------------------------------------------------------------------------


def cmd_server_key(args: argparse.Namespace, ctx: Context) -> Outcome:
    home = ctx.config.server_home
    created = not (home / NOISE_KEY_FILE).exists()
    fpr = fingerprint(server_static(home, ctx.rng).public)
    if created:
        ctx.warn(f"created a new gateway key in {home}")
    return Outcome({"fingerprint": fpr, "server_home": str(home), "created": created}, fpr)


def cmd_devices(args: argparse.Namespace, ctx: Context) -> Outcome:
    doc = {"devices": [out.device_row(d) for d in ctx.store.list_devices()]}
    return Outcome(doc, out.render_devices(doc))


def cmd_show(args: argparse.Namespace, ctx: Context) -> Outcome:
    doc = out.device_detail(_device(ctx, args.device))
    return Outcome(doc, out.render_device(doc))


def cmd_approve(args: argparse.Namespace, ctx: Context) -> Outcome:
    device = _device(ctx, args.device)
    before: list[Device] = []

    def change(d: Device) -> Device:
        before[:] = [d]
        state = d.last_refused
        if state is None:
            raise AdminError(EXIT_REFUSED, ErrorCode.NOT_FOUND.value,
                             f"device {_label(d)} has no refused PCR state to approve")
        baselines = d.baselines if state in d.baselines else (*d.baselines, state)
        status = DeviceStatus.ACTIVE if d.status is DeviceStatus.LOCKED else d.status
        return dataclasses.replace(d, baselines=baselines, failures=0, status=status,
                                   last_refused=None)

    new = ctx.store.update_device(device.device_id, change)
    old = before[0]
    adopted = out.baseline_view(old.last_refused) if old.last_refused else {}
    detail = {**adopted, "baselines": len(new.baselines), "from": old.status.value,
              "status": new.status.value}
    ctx.store.append_audit("approved", new.device_id, detail, ctx.now)
    doc = {"device_id": new.device_id, "name": new.name, **detail}
    text = (f"approved the last refused PCR state of {_label(new)} as baseline "
            f"{len(new.baselines)} ({adopted['selection']}); failures reset to 0; "
            f"status {old.status.value} -> {new.status.value}")
    return Outcome(doc, text)


def cmd_revoke(args: argparse.Namespace, ctx: Context) -> Outcome:
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
    device = _device(ctx, args.device)
    before: list[Device] = []

    def change(d: Device) -> Device:
        before[:] = [d]
        if d.status is DeviceStatus.REVOKED:
            raise AdminError(EXIT_REFUSED, ErrorCode.REVOKED.value,
                             f"device {_label(d)} is revoked, which is permanent: "
                             "the machine must enroll again")
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


def cmd_audit(args: argparse.Namespace, ctx: Context) -> Outcome:
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
    if args.verify:
        chain = entries if device_id is None else ctx.store.read_audit(None, _AUDIT_ALL)
        problems = verify_chain(chain, ctx.store.audit_head())
        doc["checked"] = len(chain)
        doc["problems"] = [{"entry_id": p.entry_id, "problem": _PROBLEM_WORDS[p.problem],
                            "check": p.problem} for p in problems]
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


def cmd_purge(args: argparse.Namespace, ctx: Context) -> Outcome:
    if not args.yes:
        raise AdminError(EXIT_REFUSED, "not_confirmed",
                         "purge deletes every attestgate key in Redis (devices, tokens, posts, "
                         "audit log) and cannot be undone; run it again with --yes")
    n = ctx.store.purge()
    return Outcome({"deleted": n}, f"deleted {n} key(s) from {_safe_url(ctx.redis_url)}")


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
environment: ATTESTGATE_REDIS_URL (store), ATTESTGATE_SERVER_HOME (gateway key),
ATTESTGATE_EVENTS (gateway events endpoints, for revoke)
exit codes: 0 ok, 1 internal error, 2 usage, 3 refused or not found, 4 store unreachable"""

# name -> (handler, help, description: what it does and what it changes)
_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace, Context], Outcome], str, str]] = {
    "server-key": (cmd_server_key, "print the gateway's key fingerprint for clients to pin",
                   "Print the fingerprint of the gateway's Noise static key, for clients to pin "
                   "with --server-key. Creates the key in ATTESTGATE_SERVER_HOME if absent (as "
                   "the gateway would); changes nothing in Redis."),
    "devices": (cmd_devices, "list enrolled devices",
                "List every enrolled device: name, id, status, failures, enrollment and last "
                "attestation time (UTC). Read-only."),
    "show": (cmd_show, "show everything about one device",
             "Show one device: public key facts (EK fingerprint and certificate, AK/SRK/post key "
             "types and TPM names), PCR selection and every approved baseline, the last refused "
             "state and difference, failures, status. Never shows secrets. Read-only."),
    "approve": (cmd_approve, "approve a device's last refused PCR state",
                "Adopt the device's last refused PCR state as an additional approved baseline, "
                "reset its failure count, and make a LOCKED device ACTIVE again (a REVOKED or "
                "REENROLL device keeps its status). Writes an 'approved' audit entry. Refused "
                "(exit 3) when no refused state is recorded."),
    "revoke": (cmd_revoke, "revoke a device permanently and close its sessions",
               "Set the device's status to REVOKED (permanent), write a 'revoked' audit entry, "
               "and tell the gateways to close its live sessions. If no gateway hears the "
               "event, a warning is printed and the exit code is still 0."),
    "unlock": (cmd_unlock, "make a LOCKED or REENROLL device ACTIVE again",
               "Set a LOCKED or REENROLL device ACTIVE and reset its failure count; writes an "
               "'unlocked' audit entry. A REVOKED device is refused (exit 3)."),
    "audit": (cmd_audit, "print the audit log, optionally verify its hash chain",
              "Print audit entries (time, event, device, detail), all or one device's. With "
              "--verify, check the whole hash chain against the stored head and name every "
              "entry that was edited, removed or reordered, or a cut tail (exit 3). Read-only."),
    "verify-post": (cmd_verify_post, "check a board post's TPM signature again",
                    "Verify a stored post again: its signature under its device's post key over "
                    "device id, time, key and text; the author shown is the registry's name; "
                    "exit 3 naming what differs if anything does, or if the post is unknown. "
                    "Read-only."),
    "purge": (cmd_purge, "delete ALL attestgate data from Redis",
              "Delete every attestgate key in Redis: devices, tokens, posts and the audit log. "
              "Irreversible; refused (exit 3) without --yes. Server keys on disk stay."),
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout instead of text")
    common.add_argument("--redis-url", metavar="URL", default=argparse.SUPPRESS,
                        help="Redis URL (default: $ATTESTGATE_REDIS_URL)")
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG,
                                formatter_class=fmt)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--redis-url", metavar="URL", help="Redis URL (default: $ATTESTGATE_REDIS_URL)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, (handler, help_, desc) in _COMMANDS.items():
        parsers[name] = sub.add_parser(name, help=help_, description=desc, parents=[common])
        parsers[name].set_defaults(handler=handler)
    for name in ("show", "approve", "revoke", "unlock"):
        parsers[name].add_argument("device", metavar="DEVICE", help="device name or device id")
    parsers["audit"].add_argument("device", metavar="DEVICE", nargs="?",
                                  help="only this device's entries (name or id)")
    parsers["audit"].add_argument("--verify", action="store_true",
                                  help="verify the whole hash chain; exit 3 if it is broken")
    parsers["audit"].add_argument("--limit", type=_count, metavar="N",
                                  help="show only the newest N entries")
    parsers["verify-post"].add_argument("post_id", metavar="POST_ID", help="e.g. 1700000000000-0")
    parsers["purge"].add_argument("--yes", action="store_true",
                                  help="confirm that everything is to be deleted")
    token = sub.add_parser("token", help="enrollment tokens",
                           description="Manage one-time enrollment tokens.")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = tsub.add_parser(
        "create", parents=[common], help="issue a one-time enrollment token",
        description="Issue a one-time enrollment token and print it (the only time its secret "
                    "is shown). Stores only the token id and the PSK derived from the secret, "
                    "expiring after --ttl; writes a 'token_created' audit entry (id only).")
    create.add_argument("--ttl", type=_seconds, default=TOKEN_DEFAULT_TTL, metavar="SECONDS",
                        help=f"validity in seconds (default {TOKEN_DEFAULT_TTL:g})")
    create.set_defaults(handler=cmd_token_create)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(argv, env=os.environ, stdout=sys.stdout, stderr=sys.stderr, clock=time.time,
               rng=os.urandom)


def run(argv: list[str] | None, *, env: Mapping[str, str], stdout: TextIO,
        stderr: TextIO, clock: Callable[[], float], rng: Random) -> int:
    """``main`` with its environment, streams, clock and randomness as parameters."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

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
                      BoardSettings.from_env(env))
        outcome = args.handler(args, ctx)
        doc: dict[str, Any] = {"ok": outcome.failure is None, **outcome.doc}
        print(json.dumps(doc, indent=2) if args.json else outcome.text, file=stdout)
        printed = True
        return fail(outcome.failure) if outcome.failure else EXIT_OK
    except AdminError as err:
        return fail(err)
    except AttestgateError as exc:
        words = {ErrorCode.STORE_UNAVAILABLE: "cannot reach the store at "
                 + _safe_url(ctx.redis_url if ctx else "")}.get(exc.code, exc.detail or "failed")
        return fail(AdminError(_EXIT_FOR.get(exc.code, EXIT_REFUSED), exc.code.value, words))
    except OSError as exc:  # the server home: permissions, disk
        return fail(AdminError(EXIT_INTERNAL, ErrorCode.INTERNAL.value,
                               f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}"))
    except Exception as exc:  # a bug: say so plainly; the traceback only when debugging
        if env.get("ATTESTGATE_LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exc(file=stderr)
        return fail(AdminError(EXIT_INTERNAL, ErrorCode.INTERNAL.value,
                               f"internal error: {type(exc).__name__}"))
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
