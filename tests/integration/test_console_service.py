"""``python -m services.console`` as a real process: refuses what it cannot honour with one
line and exit 2, serves with no worker yet (health says so), stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from shared.console_token import CONSOLE_KEY_FILE
from tests.support.ports import free_port
from tests.support.stack import REPO

pytestmark = pytest.mark.integration

START_TIMEOUT = 20.0


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO),
            "ATTESTGATE_SERVER_HOME": str(tmp_path / "server"),
            "ATTESTGATE_CONSOLE_LISTEN": f"127.0.0.1:{free_port()}",
            "ATTESTGATE_CONSOLE_BUS": f"tcp://127.0.0.1:{free_port()}",
            "ATTESTGATE_CONSOLE_EVENTS": f"tcp://127.0.0.1:{free_port()}", **extra}


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.console"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=START_TIMEOUT, check=False)


@pytest.mark.parametrize(("name", "value"), [
    ("ATTESTGATE_CONSOLE_LISTEN", "8470"),
    ("ATTESTGATE_CONSOLE_BUS", "127.0.0.1:7452"),
    ("ATTESTGATE_CONSOLE_URL", "ftp://x"),
    ("ATTESTGATE_CONSOLE_SECURE_COOKIE", "maybe"),
])
def test_bad_setting_is_one_line_and_exit_2(tmp_path: Path, name: str, value: str) -> None:
    done = _run(_env(tmp_path, **{name: value}))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attestgate-console: configuration: "
                                                   f"{name}=")


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run(_env(tmp_path, ATTESTGATE_CONSOLE_LISTEN=f"127.0.0.1:{port}"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"attestgate-console: ATTESTGATE_CONSOLE_LISTEN=127.0.0.1:{port}:")


def test_serves_health_without_workers_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = _env(tmp_path)
    url = "http://" + env["ATTESTGATE_CONSOLE_LISTEN"]
    log = tmp_path / "console.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.console"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).close()
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                with exc:
                    assert json.loads(exc.read()) == {"ok": False, "workers": {
                        "registry": 0, "board": 0, "attestor": 0}}
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(url + "/devices", timeout=5)
        assert denied.value.code == 401
        denied.value.close()
        key = tmp_path / "server" / CONSOLE_KEY_FILE
        assert key.stat().st_mode & 0o777 == 0o600
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
