"""The CLI conventions that need a real TPM, a real stack or a real process and signal:
the EK fingerprint of ``tpm-info`` is what the allowlist takes, ``post -`` and ``post
--file`` post the text, ``status`` shows ISO times, ``follow --reconnect`` survives a gateway
restart, Ctrl-C exits 130 without a traceback in both CLIs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from client.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, main
from tests.support.stack import REPO, Stack
from tests.support.swtpm import TemplateTpm
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration

WAIT_S = 30.0  # bounds a hung subprocess; never a measured threshold


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    rc = main([*argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def _read_line_with(stream: IO[str], needle: str) -> list[str]:
    """Lines from ``stream`` up to the first that contains ``needle`` (the test's timeout
    bounds the wait)."""
    seen = []
    for line in stream:
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} never came: {''.join(seen)}")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack.start(tmp_path / "stack") as s:  # trust on first use: any swtpm enrolls
        yield s


# -- tpm-info's EK fingerprint is an allowlist line -------------------------------------------


@pytest.mark.timeout(120)
def test_tpm_info_fingerprint_is_what_the_allowlist_takes(
        tmp_path: Path, swtpm_factory: SwtpmFactory, swtpm_template_other_ca: TemplateTpm,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Copies of one template share their EK: the other machine is another template.
    listed, other = swtpm_factory(), swtpm_factory(swtpm_template_other_ca)
    rc, info = _cli(capsys, "tpm-info", "-T", listed.tcti)
    assert rc == EXIT_OK, info
    fpr = info["ek_fingerprint"]
    assert len(fpr) == 64 and fpr == fpr.lower()
    capsys.readouterr()
    assert main(["tpm-info", "--tcti", listed.tcti]) == EXIT_OK
    assert f"EK fingerprint: {fpr}" in capsys.readouterr().out

    allowlist = tmp_path / "ek-allowlist"
    allowlist.write_text(f"# the listed machine\n{fpr}\n")
    settings = {"ATTESTGATE_ENROLL_POLICY": "allowlist",
                "ATTESTGATE_EK_ALLOWLIST": str(allowlist)}
    with Stack.start(tmp_path / "stack", settings=settings) as stack:
        rc, doc = _cli(capsys, "enroll", "--server", stack.server, "--name", "listed", "--tofu",
                       "-T", listed.tcti, "--home", str(tmp_path / "a"))
        assert rc == EXIT_OK, doc
        rc, doc = _cli(capsys, "enroll", "--server", stack.server, "--name", "other", "--tofu",
                       "-T", other.tcti, "--home", str(tmp_path / "b"))
        assert rc == EXIT_REFUSED and doc["error"] == "ek_untrusted", doc


# -- post - / post --file, ISO times in status, TPM2TOOLS_TCTI ---------------------------------


@pytest.mark.timeout(120)
def test_post_from_stdin_and_file_and_iso_status(
        stack: Stack, tmp_path: Path, swtpm_factory: SwtpmFactory,
        capsys: pytest.CaptureFixture[str]) -> None:
    tpm = swtpm_factory()
    home = str(tmp_path / "home")
    rc, doc = _cli(capsys, "enroll", "--server", stack.server, "--name", "poster", "--tofu",
                   "-T", tpm.tcti, "--home", home)
    assert rc == EXIT_OK, doc
    note = tmp_path / "note.txt"
    note.write_text("from a file\nsecond line")
    env = _env(TPM2TOOLS_TCTI=tpm.tcti, ATTESTGATE_HOME=home)  # the tpm2-tools variable only
    env.pop("ATTESTGATE_TPM", None)
    for argv, stdin in ((["post", "-"], "from stdin\n"), (["post", "--file", str(note)], "")):
        run = subprocess.run([sys.executable, "-m", "client.cli", *argv, "--json"], env=env,
                             cwd=REPO, input=stdin, capture_output=True, text=True,
                             timeout=WAIT_S, check=False)
        assert run.returncode == EXIT_OK, run.stderr
    rc, read = _cli(capsys, "read", "-T", tpm.tcti, "--home", home)
    assert [p["text"] for p in read["posts"]] == ["from stdin\n", "from a file\nsecond line"]

    capsys.readouterr()
    assert main(["status", "-T", tpm.tcti, "--home", home]) == EXIT_OK
    lines = dict(line.strip().split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["enrolled_at"].endswith("+00:00") and lines["enrolled_at"][:2] == "20"
    assert lines["last_attest_at"].endswith("+00:00")


# -- follow --reconnect -------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_follow_reconnects_after_the_gateway_restarts(
        stack: Stack, tmp_path: Path, swtpm_factory: SwtpmFactory,
        swtpm_template_other_ca: TemplateTpm, capsys: pytest.CaptureFixture[str]) -> None:
    reader, writer = swtpm_factory(), swtpm_factory(swtpm_template_other_ca)
    for name, tpm in (("reader", reader), ("writer", writer)):
        rc, doc = _cli(capsys, "enroll", "--server", stack.server, "--name", name, "--tofu",
                       "-T", tpm.tcti, "--home", str(tmp_path / name))
        assert rc == EXIT_OK, doc
    writer_args = ["-T", writer.tcti, "--home", str(tmp_path / "writer")]
    with subprocess.Popen(
            [sys.executable, "-m", "client.cli", "follow", "--reconnect", "--count", "3",
             "-T", reader.tcti, "--home", str(tmp_path / "reader")],
            env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) as follower:
        _follow_across_a_restart(follower, stack, writer_args, capsys)


def _follow_across_a_restart(follower: subprocess.Popen[str], stack: Stack,
                             writer_args: list[str],
                             capsys: pytest.CaptureFixture[str]) -> None:
    try:
        assert follower.stderr is not None and follower.stdout is not None
        _read_line_with(follower.stderr, "following the board")
        assert _cli(capsys, "post", "before the restart", *writer_args)[0] == EXIT_OK
        _read_line_with(follower.stdout, "before the restart")

        stack.kill("gateway")
        _read_line_with(follower.stderr, "reconnecting in 1 s")
        stack.procs["gateway"].clear()
        stack.spawn("gateway")
        stack.wait_gateway()
        # Most likely while the follower still waits to reconnect: it reads what it missed.
        rc, doc = _cli(capsys, "post", "while the follower was away", *writer_args)
        assert rc == EXIT_OK, doc
        _read_line_with(follower.stderr, "following the board")
        rc, doc = _cli(capsys, "post", "after the restart", *writer_args)
        assert rc == EXIT_OK, doc
        lines = _read_line_with(follower.stdout, "after the restart")
        assert sum("while the follower was away" in line for line in lines) == 1, lines
        assert follower.wait(WAIT_S) == EXIT_OK
        assert "after the restart" not in follower.stdout.read()  # each post once
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


# -- Ctrl-C exits 130 quietly ----------------------------------------------------------------


def test_ctrl_c_client_exits_130_quietly(tmp_path: Path) -> None:
    fifo = tmp_path / "text"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "client.cli", "post", "--file", str(fifo)],
                            env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        # A writer can open the FIFO only once the client has it open for reading: from then
        # on the client is inside main(), blocked reading the text.
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT_S)
        os.close(fd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED == 130
    assert out == "" and err.strip() == ""


def test_ctrl_c_admin_exits_130_quietly() -> None:
    # A "Redis" that accepts and never answers: the admin waits inside main() for its reply.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.registry.admin", "devices",
             "--redis-url", f"redis://127.0.0.1:{port}/0"],
            env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            silent.settimeout(WAIT_S)
            conn, _ = silent.accept()
            with conn:
                conn.settimeout(WAIT_S)
                with contextlib.suppress(TimeoutError):
                    conn.recv(1)  # the admin has sent its first command: it waits
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=WAIT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130
    assert out == "" and "Traceback" not in err and err.strip() == ""


# -- never a traceback ---------------------------------------------------------------------------


def test_client_internal_error_is_one_line_and_a_log(tmp_path: Path,
                                                    swtpm_factory: SwtpmFactory) -> None:
    """A state file that loads but holds a wrong type (a bug's stand-in: the loader checks
    field names, not types) makes `check` fail inside: one line, the traceback in the log."""
    tpm = swtpm_factory()
    home = tmp_path / "home"
    home.mkdir()
    fields = {"version": 1, "server": "127.0.0.1:1", "server_public": "00", "device_id": "d",
              "name": "n", "selection": "sha256:0", "baseline": 5, "bind_pcrs": False,
              "noise_sealed": "", "noise_encrypted": "", "noise_public": "", "psk_key": "",
              "post_key": "", "enrolled_at": 0.0}
    (home / "state.json").write_text(json.dumps(fields))
    run = subprocess.run(
        [sys.executable, "-m", "client.cli", "check", "-T", tpm.tcti, "--home", str(home)],
        env=_env(XDG_STATE_HOME=str(tmp_path / "state")), cwd=REPO, capture_output=True,
        text=True, timeout=WAIT_S, check=False)
    log = tmp_path / "state" / "attestgate" / "attestgate.log"
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert f"internal error (AttributeError); details in {log}" in run.stderr
    assert "Traceback" in log.read_text()
