# PYTHON_ARGCOMPLETE_OK  (argcomplete: this program answers tab completion itself)
"""``attestgate`` — the device's command line.

Exit codes: 0 ok; 2 usage; 3 refused by the server (or, for ``check``, the
machine's state differs from its enrollment); 4 network; 5 TPM (also: the TPM extra,
``attestgate[client]``, is not installed); 130 interrupted (Ctrl-C); 1 anything else.
The conventions shared with ``attestgate-admin`` live in shared/cli_conventions.py;
every local check (name, post text, read limit, ``--since``) is made while parsing,
before any TPM or network work.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from client import eventlog_source, server_view
from client import state as st
from client.advice import Advice
from client.channel import UNANSWERED_CONNECT, NetworkError, Refused, parse_token
from shared import cli_conventions as conv
from shared.config import parse_host_port
from shared.errors import AttestgateError, ErrorCode
from shared.post_display import format_post
from shared.post_text import validate_text
from shared.tpm.pcrs import PcrSelection
from shared.wire import MAX_POST_BYTES, MAX_READ_LIMIT, NAME_PATTERN, Command, Push

if TYPE_CHECKING:
    from client.tpm import Tpm

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_REFUSED, EXIT_NETWORK, EXIT_TPM = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = conv.EXIT_INTERRUPTED
PROG = "attestgate"
DEFAULT_PORT = 7443  # the gateway's default (ATTESTGATE_LISTEN)
# follow --reconnect: wait 1, 2, 4 ... s between attempts, at most this long.
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 60.0

# _LAZY: every start-up pays its imports before anything else, ten times and more the
# attested connect that `attestgate post` pays for. So the refusal texts (client.explain),
# the EK certificate reader (ekcert), the TPM client (client.flows, client.tpm: tpm2_pytss),
# the secrets client and the event-log reader/verifier (client.eventlog_view,
# shared.eventlog) are imported where used. tests/unit/test_cli_startup.py pins which
# modules `--help` and a post must not load.
_TPM_CODES = {ErrorCode.TPM_ERROR, ErrorCode.TPM_UNAVAILABLE}
_TRY_AGAIN_CODES = {ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.STORE_UNAVAILABLE, ErrorCode.BUSY}


class Out:
    """Human lines on stderr/stdout, or one JSON document on stdout with --json."""

    def __init__(self, as_json: bool, quiet: bool = False) -> None:
        self.as_json = as_json
        self.quiet = quiet

    def progress(self, line: str) -> None:
        if not self.quiet:
            print(f"  .. {line}", file=sys.stderr, flush=True)

    def result(self, data: dict[str, Any], human: str) -> None:
        if self.as_json:
            print(json.dumps(data, sort_keys=True, default=_json_default), flush=True)
        else:
            print(human, flush=True)


def _json_default(v: object) -> object:
    if isinstance(v, bytes):
        return v.hex()
    raise TypeError(type(v).__name__)


_EXTRA_MISSING = (
    "the TPM client is not installed (tpm2-pytss is missing): "
    "pip install 'attestgate[client]' (it needs libtss2-dev to build)")


def client_extra_missing() -> str:
    """Why the TPM client cannot be used (a server install has no tpm2-pytss), or "".

    Imports the TPM client (see _LAZY): call it only for a command that uses it.
    """
    try:
        import client.flows  # noqa: PLC0415
        import client.tpm  # noqa: F401, PLC0415
    except ImportError as exc:
        if not (exc.name or "").startswith("tpm2_pytss"):
            raise
        return _EXTRA_MISSING
    return ""


def _tcti(args: argparse.Namespace) -> str:
    """-T/--tcti/--tpm, else $ATTESTGATE_TPM, else $TPM2TOOLS_TCTI (as tpm2-tools read it)."""
    return str(args.tpm or os.environ.get("ATTESTGATE_TPM")
               or os.environ.get("TPM2TOOLS_TCTI") or "")


def _tpm(args: argparse.Namespace) -> Tpm:
    tcti = _tcti(args)
    if not tcti:
        raise AttestgateError(ErrorCode.TPM_UNAVAILABLE,
                              "no TPM given: use -T/--tcti, ATTESTGATE_TPM or TPM2TOOLS_TCTI "
                              "(e.g. device:/dev/tpmrm0)")
    missing = client_extra_missing()
    if missing:
        raise AttestgateError(ErrorCode.TPM_UNAVAILABLE, missing)
    from client.tpm import Tpm  # noqa: PLC0415 (see _LAZY)

    return Tpm(tcti)


def _event_log(args: argparse.Namespace) -> bytes | None:
    return eventlog_source.event_log(args.event_log, os.environ,
                                     args.tpm or os.environ.get("ATTESTGATE_TPM"))


# -- commands ------------------------------------------------------------------------------
def cmd_enroll(args: argparse.Namespace, out: Out) -> int:
    from client import flows  # noqa: PLC0415 (see _LAZY)

    home = st.home_dir(args.home)
    if (home / st.STATE_FILE).exists() and not args.force:
        raise AttestgateError(ErrorCode.ALREADY_ENROLLED,
                              f"{home} already holds an enrollment (use --force to replace it)")
    pin = flows.ServerPin(args.server_key, args.tofu)
    with _tpm(args) as tpm:
        try:
            state = flows.enroll(tpm, home, args.server, args.name, args.token, pin,
                                 args.bind_pcrs, out.progress, _event_log(args))
        except Refused as exc:
            if exc.code is not ErrorCode.ALREADY_ENROLLED:
                raise
            # This TPM is enrolled already: the operator finds it by its EK fingerprint.
            from shared.tpm.ekcert import ek_fingerprint  # noqa: PLC0415 (see _LAZY)

            raise Refused(exc.code, {**exc.body, "ek_fingerprint": ek_fingerprint(
                tpm.endorsement().public), "retry": _enroll_again(args)}) from None
    out.result({"device_id": state.device_id, "name": state.name, "server": state.server,
                "selection": state.selection, "home": str(home)},
               f"enrolled {state.name} (device {state.device_id}) at {state.server}\n"
               f"PCR baseline {state.selection} recorded; state in {home}")
    return EXIT_OK


def _enroll_again(args: argparse.Namespace) -> str:
    """This enroll command again, with --force (never the token: it is a secret)."""
    words = ["enroll", "--force", "--server", args.server, "--name", args.name]
    words += ["--server-key", args.server_key] if args.server_key else ["--tofu"] * args.tofu
    words += ["--bind-pcrs"] * args.bind_pcrs
    return Advice(None, _advice(args).local_flags).client(*words)


def _with_session(args: argparse.Namespace, out: Out,
                  body: Callable[[Tpm, st.ClientState, Any], int]) -> int:
    from client import flows  # noqa: PLC0415 (see _LAZY)

    home = st.home_dir(args.home)
    state = st.load(home)
    log = _event_log(args)
    with _tpm(args) as tpm:
        ch = flows.connect(tpm, state, out.progress, home, log)
        with ch:
            return body(tpm, state, ch)


def cmd_post(args: argparse.Namespace, out: Out) -> int:
    args.post_text = _post_text(args)  # checked before any TPM or network work
    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        from client import flows  # noqa: PLC0415 (see _LAZY)

        reply = flows.post(tpm, state, ch, args.post_text, st.home_dir(args.home))
        out.result(dict(reply), f"posted {reply['post_id']}")
        return EXIT_OK

    return _with_session(args, out, run)


def _format_post(p: dict[str, Any]) -> str:
    # Only the header starts at column 0; the text's lines are indented and escaped.
    return format_post(p)


def cmd_read(args: argparse.Namespace, out: Out) -> int:
    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        from client import flows  # noqa: PLC0415 (see _LAZY)

        posts = flows.read(ch, args.since, args.limit)
        out.result({"posts": posts},
                   "\n".join(_format_post(p) for p in posts) or "(no posts)")
        return EXIT_OK

    return _with_session(args, out, run)


def cmd_follow(args: argparse.Namespace, out: Out) -> int:
    seen = [0]
    followed = [False]  # this connection got as far as following: the backoff starts again
    last: list[str] = []  # the newest post shown: after a reconnect, what came meanwhile

    def show(post: dict[str, Any]) -> None:
        post_id = str(post.get("post_id", ""))
        if last and _SINCE.fullmatch(post_id) and _id_order(post_id) <= _id_order(last[0]):
            return  # already shown (read after the reconnect, then pushed as well)
        last[:] = [post_id] if _SINCE.fullmatch(post_id) else last
        seen[0] += 1
        out.result(post, _format_post(post))

    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        from client import flows  # noqa: PLC0415 (see _LAZY)

        ch.request(Command.FOLLOW)
        followed[0] = True
        if not out.as_json:
            print("following the board (Ctrl-C to stop)", file=sys.stderr, flush=True)
        tpm.release()  # waiting: leave the TPM's object slots to other clients
        if last:  # reconnected: the posts made while the connection was down
            for post in flows.read(ch, last[0], MAX_READ_LIMIT):
                if args.count is not None and seen[0] >= args.count:
                    break
                show(post)
        while args.count is None or seen[0] < args.count:
            msg = ch.next_push(None)
            if msg.push is Push.REATTEST:
                flows.reattest(tpm, state, ch, bytes(msg.body["nonce"]))
                tpm.release()
                continue
            if msg.push is Push.POST:
                show({k: v for k, v in msg.body.items() if k != "push"})
        return EXIT_OK

    if not args.reconnect:
        return _with_session(args, out, run)
    attempt = 0
    while True:
        try:
            return _with_session(args, out, run)
        except (NetworkError, Refused) as exc:
            if isinstance(exc, Refused) and exc.code not in _TRY_AGAIN_CODES:
                raise
            if followed[0]:
                attempt, followed[0] = 0, False
            wait = reconnect_delay(attempt)
            attempt += 1
            out.progress(f"connection lost ({exc}); reconnecting in {wait:g} s")
            time.sleep(wait)


def _id_order(post_id: str) -> tuple[int, int]:
    ms, _, seq = post_id.partition("-")
    return int(ms), int(seq or 0)


def reconnect_delay(attempt: int) -> float:
    """follow --reconnect: 1, 2, 4 ... seconds, at most RECONNECT_MAX_S."""
    return float(min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** min(attempt, 16)))


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        reply = ch.request(Command.STATUS)
        out.result(dict(reply), "\n".join(f"{k:>18}: {_iso_if_time(k, v)}"
                                          for k, v in sorted(reply.items())))
        return EXIT_OK

    return _with_session(args, out, run)


def _iso_if_time(key: str, value: object) -> object:
    """Times (``*_at``, seconds since the epoch) as ISO 8601 UTC; 0 means never."""
    if key.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
        if not value:
            return "never"
        return datetime.datetime.fromtimestamp(value, datetime.UTC).isoformat(
            timespec="seconds")
    return value


def cmd_secret_get(args: argparse.Namespace, out: Out) -> int:
    if args.json and args.out in (None, "-"):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "--json needs --out FILE (the value "
                                                     "would go to stdout)")

    from client import secrets as client_secrets  # noqa: PLC0415 (see _LAZY)

    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        value, version = client_secrets.get(tpm, state, ch, args.name,
                                            st.home_dir(args.home))
        client_secrets.write_out(value, args.out)
        if args.out not in (None, "-"):
            out.result({"name": args.name, "version": version, "size": len(value),
                        "out": args.out},
                       f"secret {args.name!r} version {version} ({len(value)} bytes) "
                       f"written to {args.out}")
        return EXIT_OK

    return _with_session(args, out, run)


def cmd_secret_unseal(args: argparse.Namespace, out: Out) -> int:
    if args.json and args.out in (None, "-"):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "--json needs --out FILE")
    from client import secrets as client_secrets  # noqa: PLC0415 (see _LAZY)

    home = st.home_dir(args.home)
    state = st.load(home)
    with _tpm(args) as tpm:
        value, version = client_secrets.unseal_cached(tpm, home, state, args.name)
    client_secrets.write_out(value, args.out)
    if args.out not in (None, "-"):
        out.result({"name": args.name, "version": version, "size": len(value),
                    "out": args.out},
                   f"secret {args.name!r} version {version} ({len(value)} bytes) unsealed "
                   f"offline to {args.out}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace, out: Out) -> int:
    """Offline self-check: current PCRs against the baselines the server last accepted
    (the enrolled one before any connect), the status it last told; keys load."""
    from client import flows  # noqa: PLC0415 (see _LAZY)
    from client.tpm import KeyBlob  # noqa: PLC0415

    home = st.home_dir(args.home)
    state = st.load(home)
    view = server_view.load(home, state.device_id)
    accepted = list(view.baselines) if view is not None and view.baselines else [state.baseline]
    source = "server" if view is not None and view.baselines else "enrollment"
    advice = _advice(args)
    problems: list[str] = []
    with _tpm(args) as tpm:
        current = tpm.pcr_read(state.selection)
        diffs = [_pcr_changes(b, current) for b in accepted]
        changed = [] if any(not d for d in diffs) else diffs[0]
        keys: dict[str, str] = {}
        for label, action in (
            ("noise key", lambda: flows.unseal_static(tpm, state)),
            ("device secret", lambda: tpm.hmac(KeyBlob.from_bytes(bytes.fromhex(state.psk_key)),
                                               b"self-check")),
            ("post key", lambda: tpm.sign(KeyBlob.from_bytes(bytes.fromhex(state.post_key)),
                                          b"\x00" * 32)),
        ):
            try:
                action()
                keys[label] = "ok"
            except AttestgateError as exc:
                keys[label] = exc.code.value
                problems.append(f"the {label} does not work in this TPM ({exc.code.value})")
    lines = [f"device {state.name} ({state.device_id}), server {state.server}"]
    what = ("any baseline the server last accepted" if source == "server"
            else "the enrolled baseline")
    if changed:
        lines.append(f"PCR state matches none of {len(accepted)} accepted baseline(s) "
                     f"({source}); it differs from the newest in {len(changed)} PCR(s):")
        lines += [f"  PCR {c['pcr']:>2} ({c['meaning']})\n      enrolled {c['enrolled']}\n"
                  f"      now      {c['current']}" for c in changed]
        lines.append(advice.check_changed())
    else:
        lines.append(f"PCRs {state.selection} match {what}.")
    status = view.status if view is not None else ""
    code = next((c for c, s in server_view.STATUS_OF.items() if s == status), None)
    if code is not None:
        way_out = advice.for_code(code)
        problems.append(f"the server last said this device is {status}"
                        + (f": {way_out}" if way_out else ""))
        lines.append(problems[-1])
    lines += [f"{k}: {v}" for k, v in keys.items()]
    ok = not changed and not problems
    lines.append("self-check passed" if ok else "self-check FAILED")
    out.result({"ok": ok, "changed": changed, "keys": keys, "baselines": source,
                "server_status": status or None,
                "message": "\n".join(lines[1:-1])}, "\n".join(lines))
    return EXIT_OK if ok else EXIT_REFUSED


def _pcr_changes(baseline: dict[str, str], current: dict[int, bytes]) -> list[dict[str, Any]]:
    from client.explain import pcr_meaning  # noqa: PLC0415 (see _LAZY)

    return [{"pcr": int(i), "enrolled": v, "current": current.get(int(i), b"").hex(),
             "meaning": pcr_meaning(int(i))}
            for i, v in sorted(baseline.items(), key=lambda kv: int(kv[0]))
            if current.get(int(i), b"").hex() != v]


def _advice(args: argparse.Namespace) -> Advice:
    """The machine's facts for exact advice: its state if enrolled, --home/--tpm as given."""
    flags: list[str] = []
    for flag in ("home", "tpm"):
        value = getattr(args, flag, None)
        if value:
            flags += [f"--{flag}", str(value)]
    try:
        state: st.ClientState | None = st.load(st.home_dir(getattr(args, "home", None)))
    except AttestgateError:
        state = None
    return Advice(state, tuple(flags))


def cmd_tpm_info(args: argparse.Namespace, out: Out) -> int:
    selection = args.selection
    from shared.tpm.ekcert import ek_fingerprint, load_ek_cert  # noqa: PLC0415 (see _LAZY)

    with _tpm(args) as tpm:
        info = tpm.info()
        ek = tpm.endorsement()
        values = tpm.pcr_read(selection)
    subject = issuer = ""
    if ek.certificate:
        try:  # our reader: NV padding and Nuvoton's non-DER names are fine
            cert = load_ek_cert(ek.certificate)
            subject, issuer = cert.subject.rfc4514(), cert.issuer.rfc4514()
        except AttestgateError:
            subject = "(certificate does not parse)"
    data = {"manufacturer": info.manufacturer, "vendor": info.vendor_string,
            "firmware": f"{info.firmware_version:#018x}", "pcr_banks": list(info.pcr_banks),
            "ek_kind": ek.kind, "ek_fingerprint": ek_fingerprint(ek.public),
            "ek_cert_subject": subject, "ek_cert_issuer": issuer,
            "pcrs": {str(i): v.hex() for i, v in sorted(values.items())}}
    human = [f"manufacturer: {info.manufacturer} ({info.vendor_string})",
             f"firmware:     {data['firmware']}", f"PCR banks:    {', '.join(info.pcr_banks)}",
             f"EK:           {ek.kind}",
             f"EK fingerprint: {data['ek_fingerprint']}  (a line for ATTESTGATE_EK_ALLOWLIST)",
             f"EK cert:      {subject or '(none in NV)'}" + (f"\n  issued by   {issuer}"
                                                             if issuer else ""),
             f"PCRs {selection}:"]
    human += [f"  {i:>2}: {v.hex()}" for i, v in sorted(values.items())]
    out.result(data, "\n".join(human))
    return EXIT_OK


def cmd_eventlog(args: argparse.Namespace, out: Out) -> int:
    """The measured-boot event log: components per PCR, replayed PCRs, and the TPM's (--tpm)."""
    from client import eventlog_view  # noqa: PLC0415 (see _LAZY)

    path = args.file or eventlog_view.default_log_path(os.environ)
    data = eventlog_view.read_log(path)
    tpm_values = None
    if _tcti(args):
        with _tpm(args) as tpm:
            tpm_values = tpm.pcr_read("sha256:" + ",".join(map(str, range(24))))
    seen = eventlog_view.examine(data, tpm_values)
    out.result(eventlog_view.to_json(path, seen, tpm_values),
               eventlog_view.to_text(path, seen, tpm_values))
    return EXIT_OK if seen.state.consistent else EXIT_REFUSED


# -- local checks (argparse types: a failure is a usage error, exit 2, before any TPM work)
_SINCE = re.compile(r"\d{1,20}(-\d{1,20})?")


def _server(text: str) -> str:
    """HOST[:PORT]; the port defaults to 7443 (IPv6 as [::1] or [::1]:PORT)."""
    if text.startswith("["):
        full = text if "]:" in text else f"{text}:{DEFAULT_PORT}"
    elif text.count(":") > 1:  # a bare IPv6 address
        full = f"[{text}]:{DEFAULT_PORT}"
    else:
        full = text if ":" in text else f"{text}:{DEFAULT_PORT}"
    try:
        parse_host_port(full)
    except AttestgateError:
        raise argparse.ArgumentTypeError(f"expected HOST or HOST:PORT, got {text!r}") from None
    return full


def _name(text: str) -> str:
    if not re.fullmatch(NAME_PATTERN, text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a name is 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit")
    return text


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_READ_LIMIT:
        raise argparse.ArgumentTypeError(f"not a number from 1 to {MAX_READ_LIMIT}: {text!r}")
    return int(text)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _since(text: str) -> str:
    if not _SINCE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a post id (like 1700000000000-0): {text!r}")
    return text


def _token(text: str) -> str:
    try:
        parse_token(text)
    except AttestgateError as exc:
        raise argparse.ArgumentTypeError(exc.detail or "not a token") from None
    return text


_FINGERPRINT = re.compile(r"(SHA256:)?[0-9a-fA-F]{64}")


def _server_key(text: str) -> str:
    if not _FINGERPRINT.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(
            f"not a server key fingerprint (SHA256:<64 hex>, from attestgate-admin server-key): "
            f"{text!r}")
    return text


def _selection(text: str) -> str:
    try:
        PcrSelection.parse(text)
    except AttestgateError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc.detail or 'not a PCR selection'} "
                                          "(e.g. sha256:0,1,2,3,4,5,6,7)") from None
    return text


def _post_text(args: argparse.Namespace) -> str:
    """The text to post: the argument, stdin for '-', or --file; checked like the server does."""
    if (args.text is None) == (args.file is None):
        raise conv.UsageError("post: give either TEXT ('-' for stdin) or --file FILE")
    try:
        if args.file is not None:
            with open(args.file, "rb") as f:
                raw = f.read(MAX_POST_BYTES + 1)
        elif args.text == "-":
            raw = sys.stdin.buffer.read(MAX_POST_BYTES + 1)
        else:
            raw = args.text.encode("utf-8", "surrogateescape")
    except OSError as exc:
        raise conv.UsageError(f"post: cannot read {args.file}: {exc.strerror}") from None
    # The server's rule, with its code (invalid_text, exit 2), before the TPM is opened.
    if len(raw) > MAX_POST_BYTES:
        raise AttestgateError(ErrorCode.INVALID_TEXT,
                              f"the text is longer than {MAX_POST_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AttestgateError(ErrorCode.INVALID_TEXT, "the text is not UTF-8") from None
    return validate_text(text)


def cmd_completion(args: argparse.Namespace, out: Out) -> int:
    print(conv.completion_script(PROG, args.shell), end="")
    return EXIT_OK


# -- parser ----------------------------------------------------------------------------------
def _add_secret_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``attestgate secret get|unseal`` (docs/secrets.md)."""
    sec = sub.add_parser("secret", help="secrets the server releases only to this TPM")
    ssub = sec.add_subparsers(dest="secret_command", required=True, metavar="ACTION")
    sg = ssub.add_parser("get", parents=parents, help="fetch a secret in an attested session",
                         description="Connect (a fresh quote bound to the channel), ask for "
                                     "secret NAME, unwrap its key in this TPM and decrypt it. "
                                     "The value goes to --out FILE (0600) or stdout.")
    sg.add_argument("name", metavar="NAME")
    sg.add_argument("--out", metavar="FILE", help="write the value here (0600), not stdout")
    _add_event_log(sg)
    sg.set_defaults(func=cmd_secret_get)
    su = ssub.add_parser("unseal", parents=parents, help="open a cached PCR-bound secret offline",
                         description="Open the cached copy of a --bind-pcrs secret (kept by "
                                     "`secret get`) with the TPM alone, e.g. at boot: it opens "
                                     "only while the PCRs are in a state the operator approved. "
                                     "Nothing is extended into a PCR.")
    su.add_argument("name", metavar="NAME")
    su.add_argument("--out", metavar="FILE", help="write the value here (0600), not stdout")
    su.set_defaults(func=cmd_secret_unseal)


GLOBAL_OPTIONS: list[conv.GlobalOption] = [
    (("--json",), {"action": "store_true", "help": "print one JSON document on stdout"}),
    (("-T", "--tcti", "--tpm"), {
        "dest": "tpm", "metavar": "TCTI",
        "help": "TPM in TCTI notation: device:/dev/tpmrm0, swtpm:host=H,port=P, "
                "swtpm:path=SOCK, mssim:host=H,port=P, tabrmd (default: $ATTESTGATE_TPM, "
                "else $TPM2TOOLS_TCTI; there is no silent default)"}),
    (("--home",), {"metavar": "DIR",
                   "help": "client state directory (default: $ATTESTGATE_HOME, else "
                           "~/.attestgate if it exists, else $XDG_STATE_HOME/attestgate, "
                           "i.e. ~/.local/state/attestgate)"}),
    (("-q", "--quiet"), {"action": "store_true", "help": "no progress lines"}),
]


def _add_event_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--event-log", metavar="PATH",
        help="measured-boot event log to send (at enrollment, and when the server asks for it "
             f"to say what changed); 'none' sends none (default: ${eventlog_source.ENV_EVENT_LOG}, "
             f"else {eventlog_source.LINUX_EVENT_LOG} when readable and the TPM is the machine's "
             "own device: or tabrmd)")


def build_parser() -> conv.Parser:
    p = conv.Parser(
        prog=PROG,
        description="Talk to an attestgate server over a Noise channel that opens only while "
                    "this machine is in the state it was enrolled in.",
        epilog="exit codes: 0 ok, 2 usage, 3 refused by the server (or check failed), "
               "4 network, 5 TPM, 130 interrupted, 1 other",
        global_options=GLOBAL_OPTIONS,
    )
    p.add_argument("--version", action=conv.LazyVersion)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("enroll", help="enroll this machine (once)",
                       description="Prove this TPM's identity and state to the server and "
                                   "receive a device secret only this TPM can use.",
                       examples=["attestgate enroll --server gw.example.net --name kiosk-7 "
                                 "--server-key SHA256:3f9a... -T device:/dev/tpmrm0",
                                 "attestgate enroll --server 10.0.0.5:7443 --name lab1 --tofu "
                                 "--token 4b1c....s3cr3t"])
    e.add_argument("--server", required=True, metavar="HOST[:PORT]", type=_server,
                   help=f"the gateway (port {DEFAULT_PORT} when not given)")
    e.add_argument("--name", required=True, type=_name,
                   help="device name shown on the board (unique; letters, digits, . _ -)")
    e.add_argument("--token", type=_token,
                   help="enrollment token from the operator (<id>.<secret>)")
    pin = e.add_mutually_exclusive_group()
    pin.add_argument("--server-key", metavar="FINGERPRINT", type=_server_key,
                     help="the server key fingerprint (attestgate-admin server-key)")
    pin.add_argument("--tofu", action="store_true",
                     help="trust the server key on first use and print its fingerprint")
    e.add_argument("--bind-pcrs", action="store_true",
                   help="also seal the channel key to the current PCRs: in another state the "
                        "key cannot be used at all")
    e.add_argument("--force", action="store_true", help="replace an existing enrollment in --home")
    _add_event_log(e)
    e.set_defaults(func=cmd_enroll)

    po = sub.add_parser("post", help="post a TPM-signed message to the board",
                        examples=["attestgate post 'backup finished'",
                                  "dmesg | tail -5 | attestgate post -",
                                  "attestgate post --file report.txt --json"])
    po.add_argument("text", nargs="?", metavar="TEXT",
                    help=f"UTF-8, at most {MAX_POST_BYTES} bytes; no control characters but "
                         "\\n \\t; '-' reads standard input")
    po.add_argument("--file", metavar="FILE", help="post the contents of FILE")
    _add_event_log(po)
    po.set_defaults(func=cmd_post)

    r = sub.add_parser("read", help="read board posts",
                       examples=["attestgate read --limit 10",
                                 "attestgate read --since 1700000000000-0 --json"])
    r.add_argument("--since", metavar="ID", type=_since, help="only posts after this post id")
    r.add_argument("--limit", type=_limit, default=50, metavar="N",
                   help=f"at most N posts (1 to {MAX_READ_LIMIT})")
    _add_event_log(r)
    r.set_defaults(func=cmd_read)

    f = sub.add_parser("follow", help="print new posts as they arrive",
                       examples=["attestgate follow", "attestgate follow --reconnect --json",
                                 "attestgate follow --count 1"])
    f.add_argument("--count", type=_count, metavar="N", help="stop after N posts")
    f.add_argument("--reconnect", action="store_true",
                   help="when the connection is lost, connect again (waiting 1, 2, 4 ... "
                        f"up to {RECONNECT_MAX_S:g} s)")
    _add_event_log(f)
    f.set_defaults(func=cmd_follow)

    s = sub.add_parser("status", help="this device's record on the server",
                       examples=["attestgate status", "attestgate status --json"])
    _add_event_log(s)
    s.set_defaults(func=cmd_status)

    c = sub.add_parser("check",
                       help="offline self-check: PCRs against the enrolled baseline, keys load",
                       examples=["attestgate check", "attestgate check --json"])
    c.set_defaults(func=cmd_check)

    t = sub.add_parser("tpm-info", help="show the TPM, its EK (and fingerprint) and PCRs",
                       examples=["attestgate tpm-info -T device:/dev/tpmrm0",
                                 "attestgate tpm-info --json | jq -r .ek_fingerprint "
                                 ">> ek-allowlist"])
    t.add_argument("--selection", default="sha256:0,1,2,3,4,5,6,7", type=_selection,
                   help="PCRs to show (tpm2-tools notation)")
    t.set_defaults(func=cmd_tpm_info)

    _add_secret_parser(sub, [])

    ev = sub.add_parser("eventlog", help="show the measured-boot event log",
                        description="Parse the TCG event log, replay its PCRs and, with a TPM, "
                                    "compare them with the TPM's sha256 PCRs.",
                        examples=["attestgate eventlog",
                                  "attestgate eventlog binary_bios_measurements -T "
                                  "device:/dev/tpmrm0"])
    ev.add_argument("file", nargs="?", metavar="FILE",
                    help=f"binary log (default: ${eventlog_source.ENV_EVENT_LOG}, else "
                         f"{eventlog_source.LINUX_EVENT_LOG} when readable)")
    ev.set_defaults(func=cmd_eventlog)

    conv.add_completion_command(sub, PROG).set_defaults(func=cmd_completion)
    return p


_NO_TPM_NEEDED = {"completion", "eventlog"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    conv.enable_completion(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except conv.UsageError as err:
        return conv.print_usage_error(PROG, err, conv.wants_json(argv), sys.stdout, sys.stderr)
    out = Out(args.json, args.quiet or args.json)
    missing = "" if args.command in _NO_TPM_NEEDED else client_extra_missing()
    if missing:
        return _fail(out, EXIT_TPM, ErrorCode.TPM_UNAVAILABLE, missing, {})
    try:
        rc: int = args.func(args, out)
        return rc
    except conv.UsageError as err:
        return conv.print_usage_error(PROG, err, args.json, sys.stdout, sys.stderr)
    except Refused as exc:
        from client.explain import explain_refusal, explain_unavailable  # noqa: PLC0415 _LAZY

        # An authenticated "could not answer now" is not a refusal of this device.
        if exc.code in _TRY_AGAIN_CODES:
            return _fail(out, EXIT_NETWORK, exc.code, explain_unavailable(exc.code), exc.body)
        return _fail(out, EXIT_REFUSED, exc.code,
                     explain_refusal(exc.code, exc.body, _advice(args)), exc.body)
    except NetworkError as exc:
        message = f"network: {exc}"
        if UNANSWERED_CONNECT in message:  # perhaps deleted: the exact way back
            message += (" If the operator confirms that this device's record was deleted "
                        f"(attestgate-admin delete), run `{_advice(args).enroll()}`.")
        return _fail(out, EXIT_NETWORK, None, message, {})
    except AttestgateError as exc:
        if exc.code in _TPM_CODES:
            return _fail(out, EXIT_TPM, exc.code, f"TPM: {exc.detail or exc.code.value}", {})
        if exc.code is ErrorCode.PCR_MISMATCH:
            if args.command == "secret":
                msg = ("this machine's PCRs are in no state the operator approved for this "
                       "secret (--bind-pcrs); ask for `attestgate-admin approve`, then run "
                       "`attestgate secret get` again")
                return _fail(out, EXIT_REFUSED, exc.code, msg, {})
            return _fail(out, EXIT_REFUSED, exc.code, _advice(args).unsealed_failed(), {})
        usage = {ErrorCode.BAD_REQUEST, ErrorCode.INVALID_TEXT, ErrorCode.BAD_TOKEN,
                 ErrorCode.UNKNOWN_DEVICE, ErrorCode.ALREADY_ENROLLED, ErrorCode.VERSION}
        rc = EXIT_USAGE if exc.code in usage else EXIT_REFUSED
        return _fail(out, rc, exc.code, exc.detail or exc.code.value, {})
    except KeyboardInterrupt:
        if not out.as_json:
            print(file=sys.stderr)  # end the ^C line; nothing else
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line here, the traceback in the log
        line = conv.report_crash(PROG, exc, os.environ, time.time())
        return _fail(out, EXIT_INTERNAL, ErrorCode.INTERNAL, line, {})


def _fail(out: Out, rc: int, code: ErrorCode | None, message: str, body: dict[str, Any]) -> int:
    if out.as_json:
        print(json.dumps({"error": code.value if code else "network", "message": message,
                          **body}, sort_keys=True, default=_json_default), flush=True)
    else:
        print(f"attestgate: {message}" + (f" ({code.value})" if code else ""), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
