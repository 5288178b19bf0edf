"""The conventions both command lines keep (clig.dev, tpm2-tools): main() called with argv.

Every check here runs with no TPM configured and no enrollment: a local check that is made
before any TPM or network work exits 2; one made later would exit 5 ("no TPM given").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import cli, manpages
from client import state as st
from client.manpages import pages
from services.registry import admin
from shared import cli_conventions as conv
from shared.wire import MAX_POST_BYTES

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("ATTESTGATE_TPM", "TPM2TOOLS_TCTI", "ATTESTGATE_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


def client(*argv: str, stdin: bytes = b"") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    real_stdin = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(list(argv))
    finally:
        sys.stdin = real_stdin
    return rc, out.getvalue(), err.getvalue()


def admin_run(*argv: str, env: dict[str, str] | None = None,
              clock: Any = lambda: 1_700_000_000.0) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = admin.run(list(argv), env=env or {}, stdout=out, stderr=err, clock=clock,
                   rng=os.urandom)
    return rc, out.getvalue(), err.getvalue()


def walk(parser: conv.Parser) -> Iterator[conv.Parser]:
    yield parser
    for child in parser.subcommands().values():
        yield from walk(child)


PARSERS = {"attestgate": cli.build_parser, "attestgate-admin": admin.build_parser}


# -- --version, examples in every --help ---------------------------------------------------


def test_version_in_both_clis(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith(f"attestgate {conv.package_version()}")
    rc, _, _ = admin_run("--version")
    assert rc == 0
    assert capsys.readouterr().out.startswith(f"attestgate-admin {conv.package_version()}")


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_every_help_has_an_example_of_its_own_command(prog: str) -> None:
    parsers = list(walk(PARSERS[prog]()))
    assert len(parsers) > 8
    for p in parsers:
        help_text = p.format_help()
        examples = help_text.split("\nexamples:\n", 1)[1].splitlines()
        assert examples, p.prog
        # Each example runs this very command (a group's examples run one of its own).
        assert any(line.strip().startswith(p.prog) or f" {p.prog}" in line
                   for line in examples), (p.prog, examples)


def test_a_new_subcommand_without_examples_gets_one_from_its_usage() -> None:
    top = conv.Parser(prog="tool")
    sub = top.add_subparsers(dest="command", required=True)
    new = sub.add_parser("frob")
    new.add_argument("device", metavar="DEVICE")
    new.add_argument("--level", required=True, metavar="N")
    new.add_argument("--optional")
    assert new.example_lines() == ["tool frob DEVICE --level N"]
    assert "examples:\n  tool frob DEVICE --level N" in new.format_help()


# -- global flags before and after the subcommand ------------------------------------------


@pytest.mark.parametrize("argv", [["--json", "-T", "swtpm:port=1", "status"],
                                  ["status", "--json", "--tcti", "swtpm:port=1"],
                                  ["--json", "status", "--tpm", "swtpm:port=1"]])
def test_client_global_flags_either_side(argv: list[str]) -> None:
    args = cli.build_parser().parse_args(argv)
    assert args.json is True and args.tpm == "swtpm:port=1"


def test_client_global_flags_default_when_absent() -> None:
    args = cli.build_parser().parse_args(["status"])
    assert args.json is False and args.tpm is None and args.home is None


@pytest.mark.parametrize("argv", [["--json", "--redis-url", "redis://x", "devices"],
                                  ["devices", "--json", "--redis-url", "redis://x"],
                                  ["--json", "token", "create", "--redis-url", "redis://x"]])
def test_admin_global_flags_either_side(argv: list[str]) -> None:
    args = admin.build_parser().parse_args(argv)
    assert args.json is True and args.redis_url == "redis://x"


def test_global_options_reach_subparsers_added_later() -> None:
    """A subcommand another engineer adds gets the global flags without doing anything."""
    parser = admin.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert isinstance(sub, conv._Subcommands)
    sub.add_parser("brand-new").add_argument("x")
    args = parser.parse_args(["brand-new", "1", "--json"])
    assert args.json is True and args.x == "1"


# -- TPM: -T/--tcti, ATTESTGATE_TPM, TPM2TOOLS_TCTI ------------------------------------------


def test_tcti_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    parse = cli.build_parser().parse_args
    assert cli._tcti(parse(["status"])) == ""
    monkeypatch.setenv("TPM2TOOLS_TCTI", "swtpm:port=2")
    assert cli._tcti(parse(["status"])) == "swtpm:port=2"
    monkeypatch.setenv("ATTESTGATE_TPM", "swtpm:port=1")
    assert cli._tcti(parse(["status"])) == "swtpm:port=1"
    assert cli._tcti(parse(["-T", "swtpm:port=3", "status"])) == "swtpm:port=3"


def test_no_tpm_names_every_way_to_give_one(tmp_path: Path) -> None:
    rc, _, err = client("tpm-info")
    assert rc == cli.EXIT_TPM
    assert "-T/--tcti" in err and "ATTESTGATE_TPM" in err and "TPM2TOOLS_TCTI" in err


# -- usage errors: JSON under --json, did you mean -------------------------------------------


@pytest.mark.parametrize("argv", [["--json", "pots", "x"], ["read", "--limit", "0", "--json"],
                                  ["--json"], ["post", "--jsn", "x", "--json"]])
def test_client_usage_errors_as_json(argv: list[str]) -> None:
    rc, out, err = client(*argv)
    assert rc == cli.EXIT_USAGE
    doc = json.loads(out)
    assert doc["ok"] is False and doc["error"] == "usage" and doc["message"]
    assert err == ""


@pytest.mark.parametrize("argv", [["--json", "frobnicate"], ["audit", "--limit", "0", "--json"],
                                  ["--json", "token", "create", "--ttl", "-5"]])
def test_admin_usage_errors_as_json(argv: list[str]) -> None:
    rc, out, err = admin_run(*argv)
    assert rc == admin.EXIT_USAGE
    doc = json.loads(out)
    assert doc == {"ok": False, "error": "usage", "message": doc["message"]}
    assert err == ""


def test_usage_error_without_json_is_argparse_style() -> None:
    rc, out, err = client("read", "--limit", "0")
    assert rc == 2 and out == ""
    assert err.startswith("usage: attestgate read") and "attestgate: error: argument --limit" in err


@pytest.mark.parametrize(("run", "argv", "suggestion"), [
    (client, ["pots", "x"], "'post'"),
    (client, ["status", "--jsno"], "'--json'"),
    (client, ["tpm-ifno"], "'tpm-info'"),
    (client, ["read", "--limt", "5"], "'--limit'"),
    (admin_run, ["devcies"], "'devices'"),
    (admin_run, ["audit", "--verfy"], "'--verify'"),
    (admin_run, ["token", "craete"], "'create'"),
])
def test_did_you_mean(run: Any, argv: list[str], suggestion: str) -> None:
    rc, _, err = run(*argv)
    assert rc == 2
    assert f"did you mean {suggestion}" in err


# -- --server HOST defaults to port 7443 -----------------------------------------------------


@pytest.mark.parametrize(("given", "server"), [
    ("gw.example.net", "gw.example.net:7443"), ("10.0.0.5", "10.0.0.5:7443"),
    ("10.0.0.5:9000", "10.0.0.5:9000"), ("[::1]", "[::1]:7443"), ("::1", "[::1]:7443"),
    ("[::1]:9000", "[::1]:9000")])
def test_server_port_defaults_to_7443(given: str, server: str) -> None:
    args = cli.build_parser().parse_args(["enroll", "--server", given, "--name", "n"])
    assert args.server == server


# -- every local check before any TPM or network work: exit 2 -------------------------------


@pytest.mark.parametrize("argv", [
    ["read", "--limit", "501"], ["read", "--limit", "0"], ["read", "--limit", "ten"],
    ["read", "--since", "yesterday"], ["read", "--since", "1-2-3"],
    ["enroll", "--server", "h", "--name", "has space"],
    ["enroll", "--server", "h", "--name", "-dash-first"],
    ["enroll", "--server", "h", "--name", "x" * 65],
    ["enroll", "--server", "h:0", "--name", "ok"],
    ["enroll", "--server", "h:99999", "--name", "ok"],
    ["post", ""], ["post", "x" * (MAX_POST_BYTES + 1)], ["post", "bell\a"],
    ["post"], ["post", "text", "--file", "f"], ["follow", "--count", "0"],
    ["enroll", "--server", "h", "--name", "ok", "--token", "nodot"],
    ["enroll", "--server", "h", "--name", "ok", "--token", "abcd.secret"],
    ["enroll", "--server", "h", "--name", "ok", "--server-key", "SHA256:1234"],
    ["tpm-info", "--selection", "sha256:0,99"], ["tpm-info", "--selection", "md5:0"],
])
def test_local_checks_exit_2_before_the_tpm(argv: list[str]) -> None:
    rc, out, err = client(*argv, "--json")
    assert rc == cli.EXIT_USAGE, (out, err)
    # A malformed command line is "usage"; a post text the server would refuse keeps the
    # server's code.
    assert json.loads(out)["error"] in {"usage", "invalid_text"}


def test_post_checks_stdin_and_file_before_the_tpm(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_bytes(b"y" * (MAX_POST_BYTES + 1))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe")
    for argv, stdin in ((["post", "-"], b""), (["post", "-"], b"z" * (MAX_POST_BYTES + 1)),
                        (["post", "--file", str(big)], b""), (["post", "--file", str(empty)], b""),
                        (["post", "--file", str(binary)], b""),
                        (["post", "--file", str(tmp_path / "missing")], b"")):
        rc, out, err = client(*argv, "--json", stdin=stdin)
        assert rc == cli.EXIT_USAGE, (argv, err)
        assert json.loads(out)["error"] in {"usage", "invalid_text"}, out


def test_post_reads_stdin_and_file(tmp_path: Path) -> None:
    parse = cli.build_parser().parse_args
    f = tmp_path / "note.txt"
    f.write_text("from a file\nline two\n")
    assert cli._post_text(parse(["post", "--file", str(f)])) == "from a file\nline two\n"
    real = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO("from stdin ✓".encode()))
    try:
        assert cli._post_text(parse(["post", "-"])) == "from stdin ✓"
    finally:
        sys.stdin = real
    assert cli._post_text(parse(["post", "plain"])) == "plain"


def test_a_valid_post_reaches_the_tpm_step() -> None:
    """The contrast to the checks above: valid input gets past them, to the next step
    (loading the enrollment, which this home lacks)."""
    _rc, out, _ = client("post", "fine", "--json")
    assert json.loads(out)["error"] == "unknown_device"


# -- times, reconnect --------------------------------------------------------------------------


def test_status_times_are_iso() -> None:
    assert cli._iso_if_time("enrolled_at", 1_700_000_000.5) == "2023-11-14T22:13:20+00:00"
    assert cli._iso_if_time("last_attest_at", 0) == "never"
    assert cli._iso_if_time("failures", 3) == 3
    assert cli._iso_if_time("name_at", "x") == "x"


def test_reconnect_backoff_doubles_to_a_ceiling() -> None:
    delays = [cli.reconnect_delay(n) for n in range(10)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == cli.RECONNECT_MAX_S == delays[-1]
    assert cli.reconnect_delay(10_000) == cli.RECONNECT_MAX_S


# -- state directory: XDG for new installs, ~/.attestgate kept --------------------------------


def test_state_dir_xdg_legacy_and_overrides(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    home = tmp_path / "user"
    assert st.home_dir(None) == home / ".local/state/attestgate"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert st.home_dir(None) == tmp_path / "xdg/attestgate"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the spec: absolute only
    assert st.home_dir(None) == home / ".local/state/attestgate"
    (home / ".attestgate").mkdir(parents=True)
    assert st.home_dir(None) == home / ".attestgate"  # an existing install keeps working
    monkeypatch.setenv("ATTESTGATE_HOME", str(tmp_path / "env"))
    assert st.home_dir(None) == tmp_path / "env"
    assert st.home_dir(str(tmp_path / "flag")) == tmp_path / "flag"


# -- never a traceback ---------------------------------------------------------------------------


def test_internal_error_is_one_line_and_a_log(tmp_path: Path) -> None:
    def broken_clock() -> float:
        raise RuntimeError("secret-ish detail")

    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    rc, _out, err = admin_run("devices", env=env, clock=broken_clock)
    assert rc == admin.EXIT_INTERNAL
    log = tmp_path / "state/attestgate/attestgate-admin.log"
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert f"internal error (RuntimeError); details in {log}" in err
    assert "secret-ish" not in err
    assert "Traceback" in log.read_text() and "secret-ish detail" in log.read_text()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_crash_report_when_the_log_cannot_be_written(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = conv.report_crash("attestgate", ValueError("x"), {"XDG_STATE_HOME": str(blocker)}, 0)
    assert line.startswith("internal error (ValueError); no log written")


# -- shell completion and man pages ------------------------------------------------------------


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_completion_script(prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    if prog == "attestgate":
        rc = cli.main(["completion", "bash"])
        text = capsys.readouterr().out
    else:
        rc, text, _ = admin_run("completion", "bash")
    assert rc == 0
    assert "complete " in text and prog in text


@pytest.mark.parametrize(("line", "expected"), [
    ("attestgate po", {"post"}), ("attestgate read --li", {"--limit"}),
    ("attestgate-admin tok", {"token"}), ("attestgate-admin token cr", {"create"}),
])
def test_tab_completion_answers(line: str, expected: set[str], tmp_path: Path) -> None:
    """What bash gets back when the user presses TAB (argcomplete's protocol)."""
    prog = line.split(maxsplit=1)[0]
    module = "client.cli" if prog == "attestgate" else "services.registry.admin"
    answer = tmp_path / "answer"
    env = {**os.environ, "PYTHONPATH": str(REPO), "_ARGCOMPLETE": "1", "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(answer),
           "_ARGCOMPLETE_IFS": "\n"}
    subprocess.run([sys.executable, "-m", module], env=env, cwd=REPO, check=False,
                   capture_output=True, timeout=60)
    words = {w.strip() for w in answer.read_text().split("\n") if w.strip()}
    assert expected <= words, words


@pytest.mark.parametrize("prog", sorted(PARSERS))
def test_man_page_lists_every_subcommand(prog: str) -> None:
    page = pages()[f"{prog}.1"]
    assert page.startswith(f".TH {prog.upper()} 1 ")
    for p in walk(PARSERS[prog]()):
        roff_prog = p.prog.replace("-", "\\-")
        assert f".SS {roff_prog}\n" in page or p.prog == prog, p.prog
        for action in p._actions:
            for flag in action.option_strings:
                assert flag.replace("-", "\\-") in page


def test_man_pages_written(tmp_path: Path) -> None:
    assert manpages.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attestgate-admin.1", "attestgate.1"]
