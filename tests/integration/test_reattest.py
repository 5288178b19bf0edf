"""Long sessions are re-attested over a server nonce and ``h``; a failure closes the session.

A stack with a short re-attestation interval, a real swtpm and a live ``follow``
session: the client answers each request with a fresh quote and the session
stays open; after a PCR of the selection is extended, the next re-attestation
is refused with the diff and the session closes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import flows
from client import state as st
from client.channel import Refused
from client.tpm import Tpm
from shared.errors import ErrorCode
from shared.store.redis_store import RedisStore
from shared.wire import Command, Push
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm

pytestmark = pytest.mark.integration

SELECTION = "sha256:0,1,2,3,4,5,6,7,16"
INTERVAL = 0.3  # seconds between re-attestations in this stack
WAIT_S = 10.0  # bound on waiting for pushes; never reached when things work


@pytest.fixture
def stack(tmp_path: Path, swtpm_template: TemplateTpm) -> Iterator[Stack]:
    settings = {"ATTESTGATE_PCR_SELECTION": SELECTION,
                "ATTESTGATE_REATTEST_INTERVAL": str(INTERVAL)}
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
                     settings=settings) as s:
        yield s


def _noop(_: str) -> None:
    pass


@pytest.mark.timeout(60)
def test_reattestation_keeps_a_good_session_and_closes_a_changed_one(
    stack: Stack, swtpm: SwtpmProcess, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with Tpm(swtpm.tcti) as tpm:
        state = flows.enroll(tpm, home, stack.server, "long-lived", None,
                             flows.ServerPin(None, tofu=True), False, _noop)
        ch = flows.connect(tpm, state, _noop)
        with ch:
            ch.request(Command.FOLLOW)
            # Three rounds answered with fresh quotes: the session stays open.
            for _ in range(3):
                msg = ch.next_push(WAIT_S)
                assert msg.push is Push.REATTEST
                flows.reattest(tpm, state, ch, bytes(msg.body["nonce"]))
            assert ch.request(Command.PING) == {}
            # The machine's state changes; the next answer is refused and the session ends.
            tpm.extend_pcr(16, b"changed while connected")
            with pytest.raises(Refused) as refused:
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline:
                    msg = ch.next_push(WAIT_S)
                    if msg.push is Push.REATTEST:
                        flows.reattest(tpm, state, ch, bytes(msg.body["nonce"]))
    assert refused.value.code is ErrorCode.PCR_MISMATCH
    assert [c["pcr"] for c in refused.value.body["changed"]] == [16]
    store = RedisStore(stack.redis.url)
    try:
        events = [e.event for e in store.read_audit(st.load(home).device_id)]
    finally:
        store.close()
    assert events.count("attest_ok") >= 4  # the connect and three re-attestations
    assert events[-1] == "attest_refused"


@pytest.mark.timeout(60)
def test_unanswered_reattestation_closes_the_session(
    stack: Stack, swtpm: SwtpmProcess, tmp_path: Path
) -> None:
    with Tpm(swtpm.tcti) as tpm:
        state = flows.enroll(tpm, tmp_path / "home", stack.server, "silent", None,
                             flows.ServerPin(None, tofu=True), False, _noop)
        ch = flows.connect(tpm, state, _noop)
        with ch, pytest.raises(Refused) as closed:
            ch.request(Command.FOLLOW)
            deadline = time.monotonic() + WAIT_S + 15
            while time.monotonic() < deadline:
                ch.next_push(WAIT_S + 15)  # never answer the REATTEST pushes
    assert closed.value.code is ErrorCode.QUOTE_INVALID
