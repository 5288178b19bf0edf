"""``attestgate`` — the device's command line.

Exit codes: 0 ok; 2 usage; 3 refused by the server (or, for ``check``, the
machine's state differs from its enrollment); 4 network; 5 TPM; 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from client import eventlog_view, flows
from client import secrets as client_secrets
from client import state as st
from client.channel import NetworkError, Refused
from client.explain import explain_refusal, explain_unavailable, pcr_meaning
from client.tpm import KeyBlob, Tpm
from shared.errors import AttestgateError, ErrorCode
from shared.post_display import format_post
from shared.tpm.ekcert import load_ek_cert
from shared.wire import Command, Push

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_REFUSED, EXIT_NETWORK, EXIT_TPM = 0, 1, 2, 3, 4, 5

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


def _tpm(args: argparse.Namespace) -> Tpm:
    tcti = args.tpm or os.environ.get("ATTESTGATE_TPM")
    if not tcti:
        raise AttestgateError(ErrorCode.TPM_UNAVAILABLE,
                              "no TPM given: use --tpm or ATTESTGATE_TPM (e.g. device:/dev/tpmrm0)")
    return Tpm(tcti)


# -- commands ------------------------------------------------------------------------------
def cmd_enroll(args: argparse.Namespace, out: Out) -> int:
    home = st.home_dir(args.home)
    if (home / st.STATE_FILE).exists() and not args.force:
        raise AttestgateError(ErrorCode.ALREADY_ENROLLED,
                              f"{home} already holds an enrollment (use --force to replace it)")
    pin = flows.ServerPin(args.server_key, args.tofu)
    with _tpm(args) as tpm:
        state = flows.enroll(tpm, home, args.server, args.name, args.token, pin, args.bind_pcrs,
                             out.progress)
    out.result({"device_id": state.device_id, "name": state.name, "server": state.server,
                "selection": state.selection, "home": str(home)},
               f"enrolled {state.name} (device {state.device_id}) at {state.server}\n"
               f"PCR baseline {state.selection} recorded; state in {home}")
    return EXIT_OK


def _with_session(args: argparse.Namespace, out: Out,
                  body: Callable[[Tpm, st.ClientState, Any], int]) -> int:
    state = st.load(st.home_dir(args.home))
    with _tpm(args) as tpm:
        ch = flows.connect(tpm, state, out.progress)
        with ch:
            return body(tpm, state, ch)


def cmd_post(args: argparse.Namespace, out: Out) -> int:
    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        reply = flows.post(tpm, state, ch, args.text, st.home_dir(args.home))
        out.result(dict(reply), f"posted {reply['post_id']}")
        return EXIT_OK

    return _with_session(args, out, run)


def _format_post(p: dict[str, Any]) -> str:
    # Only the header starts at column 0; the text's lines are indented and escaped.
    return format_post(p)


def cmd_read(args: argparse.Namespace, out: Out) -> int:
    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        posts = flows.read(ch, args.since, args.limit)
        out.result({"posts": posts},
                   "\n".join(_format_post(p) for p in posts) or "(no posts)")
        return EXIT_OK

    return _with_session(args, out, run)


def cmd_follow(args: argparse.Namespace, out: Out) -> int:
    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        ch.request(Command.FOLLOW)
        if not out.as_json:
            print("following the board (Ctrl-C to stop)", file=sys.stderr, flush=True)
        seen = 0
        tpm.release()  # waiting: leave the TPM's object slots to other clients
        while args.count is None or seen < args.count:
            msg = ch.next_push(None)
            if msg.push is Push.REATTEST:
                flows.reattest(tpm, state, ch, bytes(msg.body["nonce"]))
                tpm.release()
                continue
            if msg.push is Push.POST:
                seen += 1
                post = {k: v for k, v in msg.body.items() if k != "push"}
                out.result(post, _format_post(post))
        return EXIT_OK

    return _with_session(args, out, run)


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    def run(tpm: Tpm, state: st.ClientState, ch: Any) -> int:
        reply = ch.request(Command.STATUS)
        out.result(dict(reply), "\n".join(f"{k:>18}: {v}" for k, v in sorted(reply.items())))
        return EXIT_OK

    return _with_session(args, out, run)


def cmd_secret_get(args: argparse.Namespace, out: Out) -> int:
    if args.json and args.out in (None, "-"):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "--json needs --out FILE (the value "
                                                     "would go to stdout)")

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
    """Offline self-check: current PCRs against the enrolled baseline; keys load."""
    state = st.load(st.home_dir(args.home))
    problems: list[str] = []
    with _tpm(args) as tpm:
        current = tpm.pcr_read(state.selection)
        changed = [
            {"pcr": int(i), "enrolled": v, "current": current.get(int(i), b"").hex(),
             "meaning": pcr_meaning(int(i))}
            for i, v in sorted(state.baseline.items(), key=lambda kv: int(kv[0]))
            if current.get(int(i), b"").hex() != v
        ]
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
    if changed:
        lines.append(f"PCR state differs from enrollment in {len(changed)} PCR(s):")
        lines += [f"  PCR {c['pcr']:>2} ({c['meaning']})\n      enrolled {c['enrolled']}\n"
                  f"      now      {c['current']}" for c in changed]
        lines.append("The server will refuse this machine until an operator approves the new"
                     " state (attestgate-admin approve) or you enroll again.")
    else:
        lines.append(f"PCRs {state.selection} match the enrolled baseline.")
    lines += [f"{k}: {v}" for k, v in keys.items()]
    ok = not changed and not problems
    lines.append("self-check passed" if ok else "self-check FAILED")
    out.result({"ok": ok, "changed": changed, "keys": keys}, "\n".join(lines))
    return EXIT_OK if ok else EXIT_REFUSED


def cmd_tpm_info(args: argparse.Namespace, out: Out) -> int:
    selection = args.selection
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
            "ek_kind": ek.kind, "ek_cert_subject": subject, "ek_cert_issuer": issuer,
            "pcrs": {str(i): v.hex() for i, v in sorted(values.items())}}
    human = [f"manufacturer: {info.manufacturer} ({info.vendor_string})",
             f"firmware:     {data['firmware']}", f"PCR banks:    {', '.join(info.pcr_banks)}",
             f"EK:           {ek.kind}",
             f"EK cert:      {subject or '(none in NV)'}" + (f"\n  issued by   {issuer}"
                                                             if issuer else ""),
             f"PCRs {selection}:"]
    human += [f"  {i:>2}: {v.hex()}" for i, v in sorted(values.items())]
    out.result(data, "\n".join(human))
    return EXIT_OK


def cmd_eventlog(args: argparse.Namespace, out: Out) -> int:
    """The measured-boot event log: components per PCR, replayed PCRs, and the TPM's (--tpm)."""
    path = args.file or eventlog_view.default_log_path(os.environ)
    data = eventlog_view.read_log(path)
    tpm_values = None
    if args.tpm or os.environ.get("ATTESTGATE_TPM"):
        with _tpm(args) as tpm:
            tpm_values = tpm.pcr_read("sha256:" + ",".join(map(str, range(24))))
    seen = eventlog_view.examine(data, tpm_values)
    out.result(eventlog_view.to_json(path, seen, tpm_values),
               eventlog_view.to_text(path, seen, tpm_values))
    return EXIT_OK if seen.state.consistent else EXIT_REFUSED


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
    sg.set_defaults(func=cmd_secret_get)
    su = ssub.add_parser("unseal", parents=parents, help="open a cached PCR-bound secret offline",
                         description="Open the cached copy of a --bind-pcrs secret (kept by "
                                     "`secret get`) with the TPM alone, e.g. at boot: it opens "
                                     "only while the PCRs are in a state the operator approved. "
                                     "Nothing is extended into a PCR.")
    su.add_argument("name", metavar="NAME")
    su.add_argument("--out", metavar="FILE", help="write the value here (0600), not stdout")
    su.set_defaults(func=cmd_secret_unseal)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    common.add_argument("--tpm", metavar="TCTI",
                        help="TPM in TCTI notation: device:/dev/tpmrm0, swtpm:host=H,port=P, "
                             "swtpm:path=SOCK, mssim:host=H,port=P, tabrmd "
                             "(default: $ATTESTGATE_TPM; there is no silent default)")
    common.add_argument("--home", metavar="DIR",
                        help="client state directory (default: $ATTESTGATE_HOME or ~/.attestgate)")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p = argparse.ArgumentParser(
        prog="attestgate",
        description="Talk to an attestgate server over a Noise channel that opens only while "
                    "this machine is in the state it was enrolled in.",
        epilog="exit codes: 0 ok, 2 usage, 3 refused by the server (or check failed), "
               "4 network, 5 TPM, 1 other",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("enroll", parents=[common], help="enroll this machine (once)",
                       description="Prove this TPM's identity and state to the server and "
                                   "receive a device secret only this TPM can use.")
    e.add_argument("--server", required=True, metavar="HOST:PORT")
    e.add_argument("--name", required=True, help="device name shown on the board (unique)")
    e.add_argument("--token", help="enrollment token from the operator (<id>.<secret>)")
    pin = e.add_mutually_exclusive_group()
    pin.add_argument("--server-key", metavar="FINGERPRINT",
                     help="the server key fingerprint (attestgate-admin server-key)")
    pin.add_argument("--tofu", action="store_true",
                     help="trust the server key on first use and print its fingerprint")
    e.add_argument("--bind-pcrs", action="store_true",
                   help="also seal the channel key to the current PCRs: in another state the "
                        "key cannot be used at all")
    e.add_argument("--force", action="store_true", help="replace an existing enrollment in --home")
    e.set_defaults(func=cmd_enroll)

    po = sub.add_parser("post", parents=[common], help="post a TPM-signed message to the board")
    po.add_argument("text", help="UTF-8, at most 4096 bytes; no control characters but \\n \\t")
    po.set_defaults(func=cmd_post)

    r = sub.add_parser("read", parents=[common], help="read board posts")
    r.add_argument("--since", metavar="ID", help="only posts after this post id")
    r.add_argument("--limit", type=int, default=50, metavar="N", help="at most N posts (<= 500)")
    r.set_defaults(func=cmd_read)

    f = sub.add_parser("follow", parents=[common], help="print new posts as they arrive")
    f.add_argument("--count", type=int, metavar="N", help="stop after N posts")
    f.set_defaults(func=cmd_follow)

    s = sub.add_parser("status", parents=[common], help="this device's record on the server")
    s.set_defaults(func=cmd_status)

    c = sub.add_parser("check", parents=[common],
                       help="offline self-check: PCRs against the enrolled baseline, keys load")
    c.set_defaults(func=cmd_check)

    t = sub.add_parser("tpm-info", parents=[common], help="show the TPM, its EK and PCRs")
    t.add_argument("--selection", default="sha256:0,1,2,3,4,5,6,7", help="PCRs to show")
    t.set_defaults(func=cmd_tpm_info)

    _add_secret_parser(sub, [common])

    ev = sub.add_parser("eventlog", parents=[common], help="show the measured-boot event log",
                        description="Parse the TCG event log, replay its PCRs and, with a TPM, "
                                    "compare them with the TPM's sha256 PCRs.")
    ev.add_argument("file", nargs="?", metavar="FILE",
                    help=f"binary log (default: ${eventlog_view.ENV_EVENT_LOG}, else "
                         f"{eventlog_view.LINUX_EVENT_LOG} when readable)")
    ev.set_defaults(func=cmd_eventlog)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Out(args.json, args.quiet or args.json)
    try:
        rc: int = args.func(args, out)
        return rc
    except Refused as exc:
        # An authenticated "could not answer now" is not a refusal of this device.
        if exc.code in _TRY_AGAIN_CODES:
            return _fail(out, EXIT_NETWORK, exc.code, explain_unavailable(exc.code), exc.body)
        return _fail(out, EXIT_REFUSED, exc.code, explain_refusal(exc.code, exc.body), exc.body)
    except NetworkError as exc:
        return _fail(out, EXIT_NETWORK, None, f"network: {exc}", {})
    except AttestgateError as exc:
        if exc.code in _TPM_CODES:
            return _fail(out, EXIT_TPM, exc.code, f"TPM: {exc.detail or exc.code.value}", {})
        if exc.code is ErrorCode.PCR_MISMATCH:
            msg = ("this machine's PCR state changed since enrollment, so its channel key "
                   "(bound with --bind-pcrs) cannot be unsealed; run `attestgate check`")
            if args.command == "secret":
                msg = ("this machine's PCRs are in no state the operator approved for this "
                       "secret (--bind-pcrs); ask for `attestgate-admin approve`, then run "
                       "`attestgate secret get` again")
            return _fail(out, EXIT_REFUSED, exc.code, msg, {})
        usage = {ErrorCode.BAD_REQUEST, ErrorCode.INVALID_TEXT, ErrorCode.BAD_TOKEN,
                 ErrorCode.UNKNOWN_DEVICE, ErrorCode.ALREADY_ENROLLED, ErrorCode.VERSION}
        rc = EXIT_USAGE if exc.code in usage else EXIT_REFUSED
        return _fail(out, rc, exc.code, exc.detail or exc.code.value, {})
    except KeyboardInterrupt:
        return EXIT_OK


def _fail(out: Out, rc: int, code: ErrorCode | None, message: str, body: dict[str, Any]) -> int:
    if out.as_json:
        print(json.dumps({"error": code.value if code else "network", "message": message,
                          **body}, sort_keys=True, default=_json_default), flush=True)
    else:
        print(f"attestgate: {message}" + (f" ({code.value})" if code else ""), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())



