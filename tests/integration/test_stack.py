"""The whole stack as real processes: redis-server, gateway, workers, swtpm, client.

Every test here runs against real processes on ports of its own
(``tests.support.stack.Stack``) with its own swtpm copies. Tests that share the
module-scoped ``board`` stack only assert on deltas of what they themselves sent.

Two distinct machines need two provisioned templates (every copy of one
template has the same EK), so the trust directory holds both session templates'
CA certificates. An enrolled device keeps its one swtpm for its whole life: a
second copy of the same template is the same TPM with its clock set back, and
the attestor rightly refuses it (``clock_rollback``, counted towards a lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import pytest

from client import flows
from client import state as st
from client.channel import Channel, NetworkError, Refused
from client.cli import EXIT_NETWORK, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main
from client.tpm import KeyBlob, Tpm
from shared.errors import AttestgateError, ErrorCode
from shared.hint import Hint, HintReason, parse_hint
from shared.keys import StaticKey
from shared.posts import post_digest
from shared.store.redis_store import RedisStore
from shared.timing import REQUEST_TIMEOUT
from shared.wire import HINT_LEN, MAGIC, MAX_POST_BYTES, PROTOCOL_VERSION, Command, Push
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration

log = logging.getLogger("attestgate.tests.stack")

# -- timing (one commented block, STYLE §10) ----------------------------------------
# The gateway answers every request by its bus deadline (REQUEST_TIMEOUT, 5 s); the
# client bound sits above it so a "service_unavailable" arrives before the client
# gives up. SLACK covers scheduling on a loaded CI machine.
CLIENT_TIMEOUT = REQUEST_TIMEOUT + 3.0
SLACK = 2.0
PUSH_TIMEOUT = 10.0  # a followed post normally arrives in a few ms
CLOSE_TIMEOUT = 3.0  # the gateway closes a garbage connection at once

# -- reliability load ---------------------------------------------------------------
CHANNELS_PER_DEVICE = 4
TOTAL_POSTS = 1000
KILL_AFTER_ACKS = 300
FROZEN_POSTS_PER_CHANNEL = 4  # the survivor's work while board-0 is frozen
JOIN_TIMEOUT = 30.0  # the 1,000 posts take ~3 s; generous for a loaded machine


def _quiet(_line: str) -> None:
    pass


def _trust_dir(directory: Path, *templates: TemplateTpm) -> Path:
    """One trust directory holding the EK CA certificate of every template."""
    directory.mkdir(parents=True)
    for t in templates:
        shutil.copyfile(t.ca_cert_path, directory / t.ca_cert_path.name)
    return directory


def _enroll(stack: Stack, tcti: str, home: Path, name: str) -> st.ClientState:
    with Tpm(tcti) as tpm:
        return flows.enroll(tpm, home, stack.server, name, None, flows.ServerPin(None, True),
                            False, _quiet)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    """Run the CLI with --json; return its exit code and its one JSON document."""
    capsys.readouterr()
    rc = main([*argv, "--json"])
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert isinstance(doc, dict), out
    return rc, doc


def _stored(stack: Stack) -> list[Any]:
    store = RedisStore(stack.redis.url)
    try:
        return list(store.read_posts(None, 10_000))
    finally:
        store.close()


# -- fixtures -------------------------------------------------------------------------


@dataclass
class Device:
    tpm: SwtpmProcess  # the device's one TPM, for as long as the device lives
    home: Path
    state: st.ClientState

    def args(self) -> list[str]:
        return ["--tpm", self.tpm.tcti, "--home", str(self.home)]


@dataclass
class Board:
    stack: Stack
    alice: Device
    bob: Device


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory, swtpm_template: TemplateTpm,
          swtpm_template_other_ca: TemplateTpm) -> Iterator[Board]:
    """One stack for the module, with two enrolled devices (one per template)."""
    root = tmp_path_factory.mktemp("board")
    trust = _trust_dir(root / "trust", swtpm_template, swtpm_template_other_ca)
    stack = Stack.start(root / "stack", ca_dir=trust)
    tpms: list[SwtpmProcess] = []
    try:
        devices = []
        for name, template in (("alice", swtpm_template), ("bob", swtpm_template_other_ca)):
            tpms.append(SwtpmProcess.start(root / f"tpm-{name}", template))
            state = _enroll(stack, tpms[-1].tcti, root / f"home-{name}", name)
            devices.append(Device(tpms[-1], root / f"home-{name}", state))
        yield Board(stack, *devices)
    finally:
        stack.stop()
        for tpm in tpms:
            tpm.stop()


# -- 1. the happy path through the CLI ----------------------------------------------------


@pytest.mark.timeout(60)
def test_enroll_post_read_status(tmp_path: Path, swtpm: SwtpmProcess,
                                 swtpm_template: TemplateTpm,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir) as stack:
        base = ["--tpm", swtpm.tcti, "--home", str(tmp_path / "home")]

        rc, enrolled = _cli(capsys, "enroll", "--server", stack.server, "--name", "dev1",
                            "--tofu", *base)
        assert rc == EXIT_OK, enrolled
        assert enrolled["name"] == "dev1"

        rc, posted = _cli(capsys, "post", "hello\tworld\nfrom a TPM", *base)
        assert rc == EXIT_OK, posted
        assert posted["created"] is True

        rc, read = _cli(capsys, "read", *base)
        assert rc == EXIT_OK, read
        assert [(p["post_id"], p["author"], p["device_id"], p["text"], p["verified"])
                for p in read["posts"]] == [
            (posted["post_id"], "dev1", enrolled["device_id"], "hello\tworld\nfrom a TPM", True)]

        rc, status = _cli(capsys, "status", *base)
        assert rc == EXIT_OK, status
        assert status["device_id"] == enrolled["device_id"]
        assert status["name"] == "dev1"
        assert status["status"] == "active"
        assert status["failures"] == 0


# -- 2. follow --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_follower_receives_another_devices_post(board: Board,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with Tpm(board.alice.tpm.tcti) as tpm, flows.connect(tpm, board.alice.state, _quiet) as ch:
        assert ch.request(Command.FOLLOW, timeout=CLIENT_TIMEOUT) == {"following": True}

        rc, posted = _cli(capsys, "post", "for my followers", *board.bob.args())
        assert rc == EXIT_OK, posted

        msg = ch.next_push(PUSH_TIMEOUT)
        assert msg.push is Push.POST
        assert msg.body["post_id"] == posted["post_id"]
        assert msg.body["device_id"] == board.bob.state.device_id
        assert msg.body["author"] == "bob"
        assert msg.body["text"] == "for my followers"
        assert msg.body["verified"] is True


@pytest.mark.timeout(60)
def test_a_session_that_just_followed_gets_the_next_post(board: Board,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    # While nobody follows, the gateway passes over new-post events undecoded; the post
    # made right after a FOLLOW reply (and after FOLLOW, UNFOLLOW, FOLLOW) still arrives.
    with Tpm(board.alice.tpm.tcti) as tpm, flows.connect(tpm, board.alice.state, _quiet) as ch:
        rc, unfollowed = _cli(capsys, "post", "nobody follows yet", *board.bob.args())
        assert rc == EXIT_OK, unfollowed
        for turn in range(2):
            assert ch.request(Command.FOLLOW, timeout=CLIENT_TIMEOUT) == {"following": True}
            rc, posted = _cli(capsys, "post", f"right after follow {turn}", *board.bob.args())
            assert rc == EXIT_OK, posted
            msg = ch.next_push(PUSH_TIMEOUT)
            assert msg.push is Push.POST
            assert msg.body["post_id"] == posted["post_id"]
            assert msg.body["text"] == f"right after follow {turn}"
            assert ch.request(Command.UNFOLLOW, timeout=CLIENT_TIMEOUT) == {"following": False}
            rc, missed = _cli(capsys, "post", f"after unfollow {turn}", *board.bob.args())
            assert rc == EXIT_OK, missed


# -- 3. refusals at the door ---------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_unknown_noise_key_is_refused_and_nothing_forwarded(
        board: Board, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tpm_proc = board.alice.tpm
    state = board.alice.state
    # Same TPM, same device secret, but a Noise key the server never enrolled,
    # stored exactly as the client stores its own (encrypted under the sealed secret).
    with Tpm(tpm_proc.tcti) as tpm:
        secret = tpm.unseal(KeyBlob.from_bytes(bytes.fromhex(state.noise_sealed)), None)
    stranger = StaticKey.generate()
    st.save(tmp_path / "home", replace(
        state, noise_public=stranger.public.hex(),
        noise_encrypted=st.encrypt_static(stranger, secret, os.urandom(12)).hex()))
    before = len(_stored(board.stack))

    rc, doc = _cli(capsys, "post", "must not arrive", "--tpm", tpm_proc.tcti,
                   "--home", str(tmp_path / "home"))

    # Before the handshake completes nothing the gateway says is authenticated, so this is
    # not a refusal (exit 3) but a network error whose message names the likely causes.
    assert rc == EXIT_NETWORK, doc
    assert doc["error"] == "network" and "not enrolled" in doc["message"], doc
    assert len(_stored(board.stack)) == before
    # The real key on the same TPM still works: the refusal was about the key.
    rc, doc = _cli(capsys, "status", *board.alice.args())
    assert rc == EXIT_OK, doc


def _closed_by_server(sock: socket.socket) -> bool:
    """True when the server closes (EOF or reset) without sending a byte."""
    sock.settimeout(CLOSE_TIMEOUT)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _garbage(kind: str) -> bytes:
    connect = MAGIC + bytes([PROTOCOL_VERSION]) + b"C"
    return {
        "random bytes": os.urandom(512),
        "http request": b"GET / HTTP/1.1\r\nHost: attestgate\r\n\r\n",
        "wrong version": MAGIC + bytes([PROTOCOL_VERSION + 1]) + b"C" + os.urandom(64),
        "wrong mode": MAGIC + bytes([PROTOCOL_VERSION]) + b"X" + os.urandom(64),
        "garbage handshake": connect + struct.pack(">H", 96) + os.urandom(96),
        "maximal frame": connect + struct.pack(">H", 0xFFFF) + os.urandom(0xFFFF),
        "frames past the buffer": connect + os.urandom(4 * 65537),
    }[kind]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["random bytes", "http request", "wrong version", "wrong mode",
                                  "garbage handshake", "maximal frame",
                                  "frames past the buffer"])
def test_gateway_closes_garbage_and_keeps_serving(
        board: Board, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(_stored(board.stack))
    with socket.create_connection(("127.0.0.1", board.stack.gateway_port), 5.0) as sock:
        # Closed while we are still sending is also a close.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(_garbage(kind))
        if kind == "wrong version":  # told which version to speak, in clear, then closed
            sock.settimeout(CLOSE_TIMEOUT)
            frame = sock.recv(2 + HINT_LEN, socket.MSG_WAITALL)
            assert parse_hint(frame[2:]) == Hint(HintReason.VERSION), frame
        assert _closed_by_server(sock), f"gateway kept a {kind} connection open"

    rc, doc = _cli(capsys, "status", *board.alice.args())
    assert rc == EXIT_OK, doc
    assert len(_stored(board.stack)) == before


# -- 4. invalid post text -----------------------------------------------------------------------

INVALID_TEXTS = {
    "control character": "bell \x07 here",
    "escape sequence": "\x1b[2Jcleared",
    "C1 control": "next\x85line",
    "bidi override": "abc\u202edef",
    "one byte too long": "x" * (MAX_POST_BYTES + 1),
    "too long in UTF-8 bytes only": "\u00e9" * (MAX_POST_BYTES // 2 + 1),
    "only whitespace": " \n\t ",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("label", list(INVALID_TEXTS))
def test_cli_refuses_invalid_text(board: Board, label: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = len(_stored(board.stack))

    rc, doc = _cli(capsys, "post", INVALID_TEXTS[label], *board.alice.args())

    assert rc in (EXIT_USAGE, EXIT_REFUSED), doc
    assert doc["error"] == ErrorCode.INVALID_TEXT.value
    assert len(_stored(board.stack)) == before


@pytest.mark.timeout(30)
def test_board_refuses_invalid_text_with_a_valid_signature(
        board: Board) -> None:
    """Bypass the client's check: the board itself must refuse, signature or not."""
    state = board.alice.state
    post_key = KeyBlob.from_bytes(bytes.fromhex(state.post_key))
    before = len(_stored(board.stack))
    with Tpm(board.alice.tpm.tcti) as tpm, flows.connect(tpm, state, _quiet) as ch:
        for label, text in INVALID_TEXTS.items():
            key = os.urandom(16)
            ts = int(time.time() * 1000)
            signature = tpm.sign(post_key, post_digest(state.device_id, ts, key, text))
            with pytest.raises(Refused) as refused:
                ch.request(Command.POST, text=text, ts=ts, key=key, signature=signature,
                           timeout=CLIENT_TIMEOUT)
            assert refused.value.code is ErrorCode.INVALID_TEXT, label
        # The session survives refusals, and the same signing path stores a valid post.
        key = os.urandom(16)
        text = "valid after refusals"
        ts = int(time.time() * 1000)
        signature = tpm.sign(post_key, post_digest(state.device_id, ts, key, text))
        ok = ch.request(Command.POST, text=text, ts=ts, key=key, signature=signature,
                        timeout=CLIENT_TIMEOUT)
    stored = _stored(board.stack)
    assert len(stored) == before + 1
    assert (stored[-1].post_id, stored[-1].text) == (ok["post_id"], text)


# -- 5. reliability: 1,000 posts over 8 channels, a board worker killed midway -----------


class _Bounded:
    """A channel whose requests all carry ``timeout``: flows.post takes no timeout itself."""

    def __init__(self, ch: Channel, timeout: float) -> None:
        self._ch = ch
        self._timeout = timeout

    def request(self, cmd: Command, **fields: Any) -> dict[str, Any]:
        return self._ch.request(cmd, timeout=self._timeout, **fields)


class _SharedTpm:
    """One TPM used by several threads, one command at a time (what tpmrm does)."""

    def __init__(self, tpm: Tpm) -> None:
        self._tpm = tpm
        self._lock = threading.Lock()

    def sign(self, key: KeyBlob, digest: bytes) -> bytes:
        with self._lock:
            return self._tpm.sign(key, digest)


@dataclass(frozen=True)
class Outcome:
    tag: str  # the channel
    device_id: str
    text: str
    started: float  # monotonic
    latency: float
    post_id: str | None = None  # set when acknowledged
    error: str | None = None  # an ErrorCode value, or "network: ..." / "tpm: ..."


@dataclass
class Load:
    acks: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    outstanding: dict[str, float] = field(default_factory=dict)  # channel -> request start
    changed: threading.Condition = field(default_factory=threading.Condition)

    def begin(self, tag: str) -> float:
        with self.changed:
            self.outstanding[tag] = t0 = time.monotonic()
        return t0

    def record(self, outcome: Outcome) -> None:
        with self.changed:
            self.outstanding.pop(outcome.tag, None)
            self.outcomes.append(outcome)
            self.acks += outcome.post_id is not None
            self.changed.notify_all()

    def oldest_outstanding(self) -> tuple[str, float] | None:
        with self.changed:
            return min(self.outstanding.items(), key=lambda kv: kv[1], default=None)

    def wait_acks(self, n: int, timeout: float) -> int:
        """Block until ``n`` posts are acknowledged (or ``timeout``); the count so far."""
        with self.changed:
            self.changed.wait_for(lambda: self.acks >= n, timeout)
            return self.acks


def _send_posts(load: Load, tpm: Tpm, state: st.ClientState, ch: Channel, tag: str,
                count: int) -> None:
    bounded = cast(Channel, _Bounded(ch, CLIENT_TIMEOUT))
    for i in range(count):
        text = f"reliability {tag} #{i}"
        t0 = load.begin(tag)
        post_id: str | None = None
        error: str | None = None
        try:
            post_id = str(flows.post(tpm, state, bounded, text)["post_id"])
        except Refused as exc:
            error = exc.code.value
        except NetworkError as exc:  # the channel is gone: nothing more to send on it
            error = f"network: {exc}"
        except AttestgateError as exc:
            error = f"tpm: {exc.code.value}"
        load.record(Outcome(tag, state.device_id, text, t0, time.monotonic() - t0,
                            post_id=post_id, error=error))
        if error is not None and error.startswith(("network", "tpm")):
            return  # this channel or TPM is unusable: stop, the assertions will say why


@pytest.mark.timeout(60)
def test_posts_survive_a_killed_board_worker(
        tmp_path: Path, swtpm_factory: SwtpmFactory, swtpm_template: TemplateTpm,
        swtpm_template_other_ca: TemplateTpm) -> None:
    trust = _trust_dir(tmp_path / "trust", swtpm_template, swtpm_template_other_ca)
    templates = {"dev-a": swtpm_template, "dev-b": swtpm_template_other_ca}
    # The load is ~170 posts/s per device: far above the default per-device post rate.
    unlimited = {"ATTESTGATE_POST_RATE": "100000", "ATTESTGATE_POST_BURST": "100000"}
    with Stack.start(tmp_path / "stack", ca_dir=trust, workers={"board": 2},
                     settings=unlimited) as stack:
        tpms: dict[str, Tpm] = {}
        channels: list[tuple[Tpm, st.ClientState, Channel, str]] = []
        connect_times: list[float] = []
        try:
            for name, template in templates.items():
                tpm_proc = swtpm_factory(template)
                state = _enroll(stack, tpm_proc.tcti, tmp_path / name, name)
                tpms[name] = Tpm(tpm_proc.tcti)
                # Each device has one TPM, shared by its channels as /dev/tpmrm0 is
                # shared by a machine's processes (swtpm serves one connection at a
                # time). Connect one after another: a device's connect timestamps
                # must reach the registry in increasing order (replay guard).
                shared = cast(Tpm, _SharedTpm(tpms[name]))
                for n in range(CHANNELS_PER_DEVICE):
                    t0 = time.monotonic()
                    ch = flows.connect(tpms[name], state, _quiet)
                    connect_times.append(time.monotonic() - t0)
                    channels.append((shared, state, ch, f"{name}/ch{n}"))

            load = Load()
            per_channel = TOTAL_POSTS // len(channels)
            threads = [threading.Thread(target=_send_posts, name=f"poster-{tag}",
                                        args=(load, tpm, state, ch, tag, per_channel))
                       for tpm, state, ch, tag in channels]
            started = time.monotonic()
            for t in threads:
                t.start()
            frozen_acks = load.wait_acks(KILL_AFTER_ACKS, 30.0)
            assert frozen_acks >= KILL_AFTER_ACKS, f"only {frozen_acks} acks by the kill point"
            # Freeze board-0 first so that it surely dies holding a request: idle most
            # of the time (a post takes it ~1 ms), a plain SIGKILL would usually find it
            # empty-handed. The gateway hands the frozen worker a request at once (it is
            # the least loaded); that request's channel then stalls while the others
            # post on through the survivor.
            victim = stack.procs["board"][0]
            victim.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            killed_acks = load.wait_acks(frozen_acks + FROZEN_POSTS_PER_CHANNEL * len(channels),
                                         30.0)
            held = load.oldest_outstanding()
            stack.kill("board", 0)
            killed_at = time.monotonic()
            # Each request is bounded by CLIENT_TIMEOUT; the whole run by JOIN_TIMEOUT.
            deadline = time.monotonic() + JOIN_TIMEOUT
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            elapsed = time.monotonic() - started
            assert not [t.name for t in threads if t.is_alive()], "a client hung"
        finally:
            for _, _, ch, _ in channels:
                ch.close()
            for tpm in tpms.values():
                tpm.close()

        outcomes = load.outcomes
        acked = [o for o in outcomes if o.post_id is not None]
        failed = [o for o in outcomes if o.post_id is None]
        after_kill = [o for o in outcomes if o.started > killed_at]
        max_latency = max(o.latency for o in outcomes)
        rate = len(acked) / elapsed
        report = (f"reliability: {len(outcomes)} requests on {len(channels)} channels in "
                  f"{elapsed:.2f} s = {rate:.0f} acknowledged posts/s through the stack; "
                  f"connect {min(connect_times) * 1000:.0f}-{max(connect_times) * 1000:.0f} ms; "
                  f"board-0 frozen after {frozen_acks} acks, killed after {killed_acks}; "
                  f"{len(after_kill)} requests after the kill; failures {len(failed)} "
                  f"{Counter(o.error for o in failed)}; max latency {max_latency:.2f} s")
        print(report)
        log.info(report)

        # Every request got an answer: an ack, or a clear "outcome unknown" code.
        assert len(outcomes) == per_channel * len(channels)
        assert {o.error for o in failed} <= {ErrorCode.SERVICE_UNAVAILABLE.value}, failed[:5]
        # ... and nobody waited past the gateway's deadline.
        assert max_latency < REQUEST_TIMEOUT + SLACK
        # The frozen worker died holding a request: one channel's post was outstanding
        # while the survivor served the others several posts each (about 30 ms apiece).
        # The gateway found the worker gone and gave that post to the survivor.
        assert held is not None
        held_tag, held_since = held
        assert killed_at - held_since > (killed_at - frozen_at) / 2, "board-0 held no request"
        held_outcome = next(o for o in outcomes if o.tag == held_tag and o.started == held_since)
        assert held_outcome.post_id is not None, held_outcome
        # The surviving worker serves: everything sent after the kill is acknowledged.
        assert after_kill
        assert [o for o in after_kill if o.post_id is None] == []

        stored = _stored(stack)
        by_text = Counter((p.device_id, p.text) for p in stored)
        assert [k for k, n in by_text.items() if n > 1] == [], "a post was stored twice"
        stored_ids = {(p.device_id, p.text): p.post_id for p in stored}
        # Every acknowledged post is stored exactly once, under the id the client was given.
        assert {(o.device_id, o.text): o.post_id for o in acked} == {
            (o.device_id, o.text): stored_ids.get((o.device_id, o.text)) for o in acked}
        # Nothing is stored that nobody sent.
        assert set(by_text) <= {(o.device_id, o.text) for o in outcomes}
