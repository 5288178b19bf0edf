"""The gateway on either event loop: every other integration test runs it on uvloop (the
default: ZeroMQ's FD read through the loop's add_reader, streams, timers); here the same
enroll, post, follow and read on asyncio's own loop, and a bad value stops it with exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from client import flows
from client import state as st
from client.tpm import Tpm
from shared.wire import Command
from tests.support.ports import free_port
from tests.support.stack import REPO, Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm

pytestmark = pytest.mark.integration


def _quiet(_: str) -> None:
    pass


@pytest.mark.timeout(90)
def test_asyncio_loop_serves_enroll_post_follow_read(tmp_path: Path, swtpm: SwtpmProcess,
                                                     swtpm_template: TemplateTpm) -> None:
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
                     settings={"ATTESTGATE_EVENT_LOOP": "asyncio"}) as stack, \
            Tpm(swtpm.tcti) as tpm:
        home = tmp_path / "home"
        flows.enroll(tpm, home, stack.server, "loop", None, flows.ServerPin(None, True), False,
                     _quiet)
        state = st.load(home)
        follower = flows.connect(tpm, state, _quiet)
        assert follower.request(Command.FOLLOW)["following"] is True
        poster = flows.connect(tpm, state, _quiet)
        posted = flows.post(tpm, state, poster, "on asyncio's loop")
        push = follower.next_push(10.0)
        assert (push.body["post_id"], push.body["text"]) == (posted["post_id"],
                                                            "on asyncio's loop")
        assert [p["text"] for p in poster.request(Command.READ)["posts"]] == [
            "on asyncio's loop"]
        poster.close()
        follower.close()
        assert "event loop asyncio" in stack.log("gateway")


def test_bad_event_loop_setting_stops_the_gateway(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTGATE_")}
    env.update({
        "PYTHONPATH": str(REPO),
        "ATTESTGATE_LISTEN": f"127.0.0.1:{free_port()}",
        "ATTESTGATE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # closed: never reached
        "ATTESTGATE_SERVER_HOME": str(tmp_path / "server"),
        "ATTESTGATE_ENROLL_POLICY": "tofu",
        "ATTESTGATE_EVENT_LOOP": "trio",
    })
    proc = subprocess.run([sys.executable, "-m", "services.gateway"], check=False, cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "attestgate-gateway: configuration: ATTESTGATE_EVENT_LOOP='trio' is not valid: "
        "expected one of uvloop, asyncio"]
    assert not (tmp_path / "server").exists()
