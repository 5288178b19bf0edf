"""What the client is told when the gateway cannot serve it, and the limits that make that happen.

Real processes (``Stack``), real swtpm, the real CLI. Exit 3 is only for refusals the
client can authenticate; a close before the handshake completes is exit 4 with the
likely causes, and a cleartext hint is only ever a reason to retry (issue 7, items
1, 2, 4 and the enrollment-token brute force).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import pytest

from client import flows
from client import state as st
from client.channel import Refused
from client.cli import EXIT_NETWORK, EXIT_OK, EXIT_REFUSED
from client.tpm import Tpm
from services.registry import admin
from shared.errors import ErrorCode
from shared.framing import FrameDecoder, Mode, encode_frame, preamble
from shared.hint import Hint, HintReason, parse_hint
from shared.keys import StaticKey, enroll_psk
from shared.noise_session import NoiseSession
from shared.store.redis_store import RedisStore
from shared.wire import PROTOCOL_VERSION
from tests.support.clis import cli
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm

pytestmark = pytest.mark.integration

SESSION_CAP = 2
TOKEN_LIMIT = 10  # ATTESTGATE_TOKEN_MAX_FAILURES default
WRONG_SECRETS = 20
IO_TIMEOUT = 10.0


def _quiet(_: str) -> None:
    pass




@dataclasses.dataclass(frozen=True)
class Machine:
    tpm: SwtpmProcess
    home: Path

    def run(self, *argv: str) -> tuple[int, dict[str, Any]]:
        return cli(*argv, "--tpm", self.tpm.tcti, "--home", str(self.home))

    def enroll(self, server: str, name: str, *extra: str) -> tuple[int, dict[str, Any]]:
        return self.run("enroll", "--server", server, "--name", name, "--tofu", *extra)

    def state(self) -> st.ClientState:
        return st.load(self.home)

    def point_at(self, server: str, label: str, **change: Any) -> Machine:
        """Another home with this machine's state, aimed at ``server`` (and other changes)."""
        other = Machine(self.tpm, self.home.parent / label)
        st.save(other.home, dataclasses.replace(self.state(), server=server, **change))
        return other


def enrolled(stack: Stack, tpm: SwtpmProcess, home: Path, name: str = "dev1") -> Machine:
    m = Machine(tpm, home)
    rc, doc = m.enroll(stack.server, name)
    assert rc == EXIT_OK, doc
    return m


def assert_unanswered(rc: int, doc: dict[str, Any]) -> None:
    """Exit 4 with the message that names every likely cause, never a refusal."""
    assert rc == EXIT_NETWORK, doc
    assert doc["error"] == "network", doc
    for cause in ("not enrolled", "busy", "Redis", "server key"):
        assert cause in doc["message"], (cause, doc)


@pytest.fixture
def stack(tmp_path: Path, swtpm_template: TemplateTpm) -> Iterator[Stack]:
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
                     settings={"ATTESTGATE_MAX_SESSIONS_PER_DEVICE": str(SESSION_CAP)}) as s:
        yield s


# == services down ============================================================================


@pytest.mark.timeout(90)
def test_registry_down_is_a_retried_network_error(stack: Stack, swtpm: SwtpmProcess,
                                                  tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path / "home")
    stack.kill("registry")
    rc, doc = m.run("status")
    assert rc == EXIT_NETWORK, doc
    assert doc["error"] == "network" and "unavailable" in doc["message"], doc
    assert "gave up after" in doc["message"], doc  # it retried, bounded
    stack.spawn("registry")
    deadline = time.monotonic() + IO_TIMEOUT
    while (rc := m.run("status")[0]) != EXIT_OK and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rc == EXIT_OK


@pytest.mark.timeout(90)
def test_redis_down_is_a_retried_network_error(stack: Stack, swtpm: SwtpmProcess,
                                               tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path / "home")
    stack.redis.stop()
    rc, doc = m.run("status")
    assert rc == EXIT_NETWORK, doc
    assert doc["error"] == "network" and "unavailable" in doc["message"], doc


@pytest.mark.timeout(90)
def test_attestor_down_after_the_handshake_is_an_authenticated_try_again(
        stack: Stack, swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path / "home")
    stack.kill("attestor")
    rc, doc = m.run("status")
    # The gateway's bus deadline is below the client's wait, so the device is told, inside
    # the channel, that the server could not answer: exit 4, not 3, and not a bare timeout.
    assert rc == EXIT_NETWORK, doc
    assert doc["error"] == ErrorCode.SERVICE_UNAVAILABLE.value, doc
    assert "try again" in doc["message"], doc


# == limits ===================================================================================


@pytest.mark.timeout(90)
def test_per_address_limit_is_busy_for_anonymous_but_not_for_an_enrolled_device(
        tmp_path: Path, swtpm_template: TemplateTpm, swtpm: SwtpmProcess) -> None:
    settings = {"ATTESTGATE_HANDSHAKE_BURST": "1", "ATTESTGATE_HANDSHAKE_RATE": "0.01"}
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
                     settings=settings) as stack:
        m = enrolled(stack, swtpm, tmp_path / "home")  # takes 127.0.0.1's one token
        rc, doc = Machine(swtpm, tmp_path / "other").enroll(stack.server, "dev2")
        assert rc == EXIT_NETWORK, doc
        assert doc["error"] == "network" and "busy" in doc["message"], doc
        assert "gave up after" in doc["message"], doc
        # The same address, a device the gateway has seen accepted: not rate limited.
        rc, doc = m.run("status")
        assert rc == EXIT_OK, doc


@pytest.mark.timeout(90)
def test_sessions_per_device_are_capped_with_rate_limited(stack: Stack, swtpm: SwtpmProcess,
                                                          tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path / "home")
    state = m.state()
    with Tpm(swtpm.tcti) as tpm, contextlib.ExitStack() as held:
        for _ in range(SESSION_CAP):
            held.enter_context(flows.connect(tpm, state, _quiet))
        with pytest.raises(Refused) as exc:
            flows.connect(tpm, state, _quiet)
        assert exc.value.code is ErrorCode.RATE_LIMITED  # told inside the channel
        # swtpm has no resource manager: give the TPM's object slots back to the CLI.
        tpm.release()
        rc, doc = m.run("status")
        assert (rc, doc["error"]) == (EXIT_REFUSED, ErrorCode.RATE_LIMITED.value), doc
    rc, doc = m.run("status")  # the held sessions are closed: room again
    assert rc == EXIT_OK, doc


# == what the client makes of a close or a hint ===================================================


@pytest.mark.timeout(60)
def test_wrong_pinned_server_key_is_a_network_error_with_the_causes(
        stack: Stack, swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path / "home")
    wrong = m.point_at(stack.server, "wrong-key",
                       server_public=StaticKey.generate().public.hex())
    assert_unanswered(*wrong.run("status"))


class HintServer:
    """A fake server on a loopback port: answers every connection with one hint, closes."""

    def __init__(self, hint: Hint) -> None:
        self._frame = hint.frame()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with conn:
                self.connections += 1
                conn.settimeout(IO_TIMEOUT)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(self._frame)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(IO_TIMEOUT)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reason", [HintReason.BUSY, HintReason.UNAVAILABLE])
def test_a_forged_busy_hint_is_only_a_bounded_retry(
        stack: Stack, swtpm: SwtpmProcess, tmp_path: Path, reason: HintReason) -> None:
    m = enrolled(stack, swtpm, tmp_path / "home")
    with HintServer(Hint(reason, 0)) as fake:
        rc, doc = m.point_at(fake.address, "fake").run("status")
        assert rc == EXIT_NETWORK, doc  # never 3: the hint is not authenticated
        assert fake.connections == 4, fake.connections  # CLIENT_CONNECT_ATTEMPTS
        rc, doc = Machine(swtpm, tmp_path / "new").enroll(fake.address, "dev9")
        assert rc == EXIT_NETWORK, doc


@pytest.mark.timeout(60)
def test_a_version_hint_says_upgrade(stack: Stack, swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path / "home")
    with HintServer(Hint(HintReason.VERSION, 0, PROTOCOL_VERSION + 1)) as fake:
        rc, doc = m.point_at(fake.address, "fake").run("status")
        assert rc == EXIT_NETWORK, doc
        assert "upgrade attestgate" in doc["message"], doc
        assert fake.connections == 1  # retrying would not help


# == enrollment-token brute force =============================================================


def _admin(stack: Stack, *argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    rc = admin.run([*argv, "--json"], env=stack.env, stdout=out, stderr=io.StringIO(),
                   clock=time.time, rng=os.urandom)
    return rc, (json.loads(out.getvalue()) if out.getvalue().strip() else {})


def _guess(stack: Stack, token_id: bytes, secret: bytes, source: str) -> str:
    """One enrollment handshake with ``secret`` from ``source``: what the gateway did."""
    noise = NoiseSession.initiator(preamble(Mode.ENROLL), StaticKey.generate(),
                                   psk=enroll_psk(secret))
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(IO_TIMEOUT)
        s.connect(("127.0.0.1", stack.gateway_port))
        s.sendall(preamble(Mode.ENROLL).encode() + encode_frame(noise.write_handshake(token_id)))
        decoder = FrameDecoder()
        while (frame := decoder.next_frame()) is None:
            data = s.recv(65536)
            if not data:
                return "closed before message 2"
            decoder.feed(data)
        if parse_hint(frame) is not None:
            return "hint"
        noise.read_handshake(frame)
        s.sendall(encode_frame(noise.write_handshake()))
        with contextlib.suppress(ConnectionResetError):
            while s.recv(65536):
                pass
        return "closed after message 3"


def _burst(stack: Stack, token_id: bytes, source: str, n: int) -> list[str]:
    """``n`` enrollment openings at once from ``source``: message 2 or a hint, for each."""
    msg1 = preamble(Mode.ENROLL).encode() + encode_frame(NoiseSession.initiator(
        preamble(Mode.ENROLL), StaticKey.generate(), psk=enroll_psk(b"x")).write_handshake(
        token_id))
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            socks.append(s)
            s.bind((source, 0))
            s.settimeout(IO_TIMEOUT)
            s.connect(("127.0.0.1", stack.gateway_port))
            s.sendall(msg1)
        seen = []
        for s in socks:
            data = s.recv(65536)
            seen.append("hint" if parse_hint(data[2:]) is not None else "message 2")
        return seen
    finally:
        for s in socks:
            s.close()


@pytest.mark.timeout(120)
def test_enrollment_token_brute_force_is_rate_limited_counted_and_burns_the_token(
        tmp_path: Path, swtpm_template: TemplateTpm, swtpm: SwtpmProcess) -> None:
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
                     settings={"ATTESTGATE_OPEN_ENROLLMENT": "0"}) as stack:
        rc, made = _admin(stack, "token", "create")
        assert rc == 0, made
        token_id_hex, secret = made["token"].split(".")
        token_id = bytes.fromhex(token_id_hex)

        # From one address, attempts beyond the burst (5) are turned away before any work.
        assert "hint" in _burst(stack, token_id, "127.0.0.200", 10)
        # Spread over many addresses (a botnet), guesses are counted per token instead.
        more = [_guess(stack, token_id, f"wrong-{i}".encode(), f"127.0.1.{i + 1}")
                for i in range(WRONG_SECRETS)]
        assert "closed before message 2" in more, more  # the token is gone by then

        rc, doc = Machine(swtpm, tmp_path / "home").enroll(stack.server, "dev1",
                                                           "--token", made["token"])
        assert rc == EXIT_NETWORK and doc.get("error") == "network", doc
        store = RedisStore(stack.redis.url)
        try:
            assert store.list_devices() == []
            assert store.get_token(token_id_hex, time.time()) is None
            audit = [(e.event, json.loads(e.detail)) for e in store.read_audit()]
        finally:
            store.close()
        failed = [d for e, d in audit if e == "token_failed"]
        burned = [d for e, d in audit if e == "token_burned"]
        assert [d["failures"] for d in failed] == list(range(1, TOKEN_LIMIT + 1)), audit
        assert {d["token_id"] for d in failed + burned} == {token_id_hex}
        assert len(burned) == 1 and burned[0]["failures"] == TOKEN_LIMIT
        assert secret not in json.dumps(audit)  # the secret never reaches the log
