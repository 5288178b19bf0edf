"""Connection flood: an enrolled device still connects and posts within 2 s (issue 7, item 1).

Real processes: redis-server, gateway, registry, attestor, board (``Stack``), a
real swtpm-enrolled client, and a flood process (``tests.support.flood``) that
keeps 2,000 silent, slowloris and half-enrolled connections open from 125
loopback source addresses, 127.0.0.1 (the device's own, as behind a NAT) to
127.0.0.125. The 2 s bound is the requirement itself.
"""

from __future__ import annotations

import json
import logging
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import flows
from client import state as st
from client.channel import NetworkError, Refused
from client.tpm import Tpm
from tests.support.stack import REPO, Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm

pytestmark = pytest.mark.integration

log = logging.getLogger("attestgate.tests.flood")

# -- the flood and the requirement (one commented block) -----------------------------------
FLOOD_CONNECTIONS = 2000
FLOOD_SOURCES = 125
FLOOD_FIRST_SOURCE = 1  # 127.0.0.1, the address the device connects from, is one of them
FLOOD_DURATION_S = 40.0  # the flood stops itself after this, whatever happens to the test
FLOOD_READY_S = 25.0  # time for the flood to have all its connections open once
CONNECT_AND_POST_S = 2.0  # the requirement: every try, connect (attested) and post within 2 s
TRIES = 5
PAUSE_BETWEEN_TRIES_S = 1.0
WORKERS_BACK_S = 20.0  # workers re-register with a restarted gateway within their backoff


def _quiet(_line: str) -> None:
    pass


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _connect_and_post(tcti: str, state: st.ClientState, text: str) -> tuple[float, str]:
    """Seconds for one attested connect and one post, and "ok" or what went wrong."""
    start = time.monotonic()
    try:
        with Tpm(tcti) as tpm, flows.connect(tpm, state, _quiet) as ch:
            flows.post(tpm, state, ch, text)
    except (NetworkError, Refused) as exc:
        return time.monotonic() - start, f"{type(exc).__name__}: {exc}"
    return time.monotonic() - start, "ok"


@pytest.fixture
def stack(tmp_path: Path, swtpm_template: TemplateTpm) -> Iterator[Stack]:
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir) as s:
        yield s


def _start_flood(port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.flood", "--port", str(port),
         "--connections", str(FLOOD_CONNECTIONS), "--sources", str(FLOOD_SOURCES),
         "--first-source", str(FLOOD_FIRST_SOURCE),
         "--duration", str(FLOOD_DURATION_S)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)


def _wait_workers(stack: Stack, generation: int) -> None:
    """Wait until the restarted gateway listens and every service has a worker again."""
    deadline = time.monotonic() + WORKERS_BACK_S
    while time.monotonic() < deadline:
        assert stack.procs["gateway"][generation].poll() is None, stack.log("gateway", generation)
        log_text = stack.log("gateway", generation)
        if all(f"worker ready service={s}" in log_text for s in ("registry", "attestor", "board")):
            return
        time.sleep(0.1)
    raise AssertionError(f"workers did not come back: {stack.log('gateway', generation)}")


def _wait_ready(flood: subprocess.Popen[str]) -> bool:
    assert flood.stdout is not None
    ready, _, _ = select.select([flood.stdout], [], [], FLOOD_READY_S)
    return bool(ready) and flood.stdout.readline().strip() == "ready"


@pytest.mark.timeout(180)
def test_enrolled_device_connects_and_posts_during_a_flood(
        stack: Stack, swtpm: SwtpmProcess, tmp_path: Path) -> None:
    with Tpm(swtpm.tcti) as tpm:
        state = flows.enroll(tpm, tmp_path / "home", stack.server, "dev1", None,
                             flows.ServerPin(None, True), False, _quiet)
    quiet_s, outcome = _connect_and_post(swtpm.tcti, state, "before the flood")
    assert outcome == "ok", outcome
    # A fresh gateway knows no device yet: the first try during the flood is a key the
    # gateway has never seen accepted (as after a restart), the later ones a known key.
    stack.kill("gateway")
    stack.spawn("gateway")
    _wait_workers(stack, generation=1)

    gateway_pid = stack.procs["gateway"][-1].pid
    rss_before = _rss_kib(gateway_pid)
    flood = _start_flood(stack.gateway_port)
    try:
        assert _wait_ready(flood), "the flood did not get its connections open"
        tries: list[tuple[float, str]] = []
        rss_during: list[int] = []
        for i in range(TRIES):
            tries.append(_connect_and_post(swtpm.tcti, state, f"during the flood {i}"))
            rss_during.append(_rss_kib(gateway_pid))
            time.sleep(PAUSE_BETWEEN_TRIES_S)
    finally:
        flood.terminate()
        out, _ = flood.communicate(timeout=FLOOD_DURATION_S + 10)
    counters = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    report = {"quiet_connect_post_s": round(quiet_s, 3),
              "flood_tries": [(round(s, 3), o) for s, o in tries],
              "gateway_rss_kib_before": rss_before, "gateway_rss_kib_during": rss_during,
              "flood": counters}
    (tmp_path / "flood-report.json").write_text(json.dumps(report, indent=1))
    print("flood report:", json.dumps(report))  # the closing note's figures
    assert stack.procs["gateway"][-1].poll() is None, stack.log("gateway", 1)
    for seconds, outcome in tries:
        assert outcome == "ok" and seconds < CONNECT_AND_POST_S, report
