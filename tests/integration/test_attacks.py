"""Named attacks on properties that must already hold, each tried as an outside attacker would.

Real processes throughout: one stack (redis-server, gateway, attestor, registry,
board) serves the module and is purged before each test; every test has its own
swtpm copy. The attacker uses only what the documented interfaces and the wire
give: recorded bytes, a proxy on the path, a stolen client home or Noise key.
Each test asserts what a user relies on: the exit or error code, that nothing
was stored or opened, and the audit entry where one is claimed.

``docs/security.md`` lists these tests next to the property each one defends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client import flows
from client import state as st
from client.channel import NetworkError, Refused, open_connect
from client.tpm import KeyBlob, Tpm
from shared.binding import quote_nonce
from shared.config import parse_host_port
from shared.errors import AttestgateError, ErrorCode
from shared.framing import FrameDecoder, Mode, Preamble, encode_frame, preamble
from shared.hint import Hint, HintReason, parse_hint
from shared.keys import Psk, StaticKey, enroll_psk, session_psk, session_psk_message
from shared.messages import decode_server_message, encode_request
from shared.noise_session import NoiseSession, responder_ephemeral
from shared.records import Device, DeviceStatus
from shared.store.redis_store import RedisStore
from shared.timing import CONNECT_TS_AHEAD
from shared.wire import PREAMBLE_LEN, PROTOCOL_VERSION, Command
from tests.support.clis import admin_cli, cli, quiet
from tests.support.mitm_proxy import RewritingProxy
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm, clear_owner
from tests.support.swtpm_fixtures import SwtpmFactory
from tests.support.tcp_proxy import RecordingProxy

pytestmark = pytest.mark.integration

SELECTION = "sha256:0,1,2,3,4,5,6,7,16"
MAX_FAILURES = 2
SETTINGS = {"ATTESTGATE_PCR_SELECTION": SELECTION,
            "ATTESTGATE_MAX_FAILURES": str(MAX_FAILURES)}
EXIT_OK, EXIT_REFUSED, EXIT_NETWORK, EXIT_TPM = 0, 3, 4, 5
# Until the client tells an unauthenticated close (exit 4) from a refusal it can
# authenticate (exit 3), a connection the gateway just drops reads as exit 3 with
# "unknown_device"; either way the user is not let in.
NOT_LET_IN = (EXIT_REFUSED, EXIT_NETWORK)

# -- timing (one commented block, STYLE §10) ----------------------------------------------
LOG_WAIT_S = 3.0  # a log line follows its event by milliseconds
CLOSE_WAIT_S = 5.0  # the gateway closes a failed handshake at once; bounds a hang
KICK_LIMIT_S = 1.0  # DESIGN.md: a revoked or locked device's live sessions close within 1 s
FOLLOW_READY_S = 10.0
IK_MSG2_LEN = 48  # IKpsk2 message 2 with an empty payload: e (32) + tag (16)


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, swtpm_template: TemplateTpm,
          swtpm_template_other_ca: TemplateTpm) -> Iterator[Stack]:
    # Both session templates' CAs are trusted, so a clone on the other template's TPM
    # is refused for what it is (another TPM), not for an unknown EK CA.
    trust = tmp_path_factory.mktemp("trust")
    for t in (swtpm_template, swtpm_template_other_ca):
        shutil.copyfile(t.ca_cert_path, trust / t.ca_cert_path.name)
    with Stack.start(tmp_path_factory.mktemp("stack"), ca_dir=trust, settings=SETTINGS) as s:
        yield s


@pytest.fixture(scope="module")
def module_store(stack: Stack) -> Iterator[RedisStore]:
    store = RedisStore(stack.redis.url)
    yield store
    store.close()


@pytest.fixture
def store(module_store: RedisStore) -> RedisStore:
    """The module stack's store, emptied: copies of one template share one EK."""
    module_store.purge()
    return module_store


# -- helpers --------------------------------------------------------------------------------








@dataclasses.dataclass(frozen=True)
class Machine:
    """A TPM and a client home: what ``attestgate --tpm T --home H`` runs as."""

    tpm: SwtpmProcess
    home: Path

    def run(self, *argv: str) -> tuple[int, dict[str, Any]]:
        return cli(*argv, "--tpm", self.tpm.tcti, "--home", str(self.home))

    def state(self) -> st.ClientState:
        return st.load(self.home)


def enrolled(stack: Stack, tpm: SwtpmProcess, tmp_path: Path, name: str = "dev1") -> Machine:
    m = Machine(tpm, tmp_path / f"home-{name}")
    rc, doc = m.run("enroll", "--server", stack.server, "--name", name, "--tofu")
    assert rc == EXIT_OK, doc
    return m


def log_text(stack: Stack, service: str) -> str:
    path = stack.directory / "logs" / f"{service}-0.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for_log(stack: Stack, service: str, needle: str, since: int) -> str:
    """The service's log written after offset ``since``, once it holds ``needle``."""
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        text = log_text(stack, service)[since:]
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def session_count(stack: Stack) -> int:
    return log_text(stack, "gateway").count("session open ")


def wait_sessions(stack: Stack, n: int) -> int:
    """The session count once it reaches ``n`` (the gateway logs a session just after
    its accept reply has gone out), or after LOG_WAIT_S."""
    deadline = time.monotonic() + LOG_WAIT_S
    while (count := session_count(stack)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def device(store: RedisStore, device_id: str) -> Device:
    d = store.get_device(device_id)
    assert d is not None
    return d


def device_events(store: RedisStore) -> list[str]:
    """Audit entries about enrollments and attestations (any device)."""
    return [e.event for e in store.read_audit()
            if e.event.startswith(("enroll", "attest")) or e.device_id]


def host_port(stack: Stack) -> tuple[str, int]:
    return parse_host_port(stack.server)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What an attack must not change: sessions, posts, audit, the device record."""

    sessions: int
    posts: int
    audit: tuple[tuple[str, str, str], ...]
    device: Device | None

    @staticmethod
    def take(stack: Stack, store: RedisStore, device_id: str) -> Snapshot:
        return Snapshot(session_count(stack), store.count_posts(),
                        tuple((e.entry_id, e.event, e.detail) for e in store.read_audit()),
                        store.get_device(device_id))


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends until it closes; (bytes, closed within CLOSE_WAIT_S)."""
    sock.settimeout(CLOSE_WAIT_S)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return received, False
    return received, True


def read_frame(sock: socket.socket) -> bytes | None:
    """One frame from the server, or None when it closes first."""
    decoder = FrameDecoder()
    sock.settimeout(CLOSE_WAIT_S)
    while (frame := decoder.next_frame()) is None:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not data:
            return None
        decoder.feed(data)
    return frame


def tpm_session_psk(tpm: Tpm, state: st.ClientState) -> Callable[[bytes, bytes], Psk]:
    key = KeyBlob.from_bytes(bytes.fromhex(state.psk_key))
    return lambda e_i, e_r: Psk(tpm.hmac(key, session_psk_message(e_i, e_r)))


def attest(ch: Any, tpm: Tpm, state: st.ClientState, h: bytes) -> dict[str, Any]:
    """Send the ATTEST a real client sends, with a quote over ``quote_nonce(h)``."""
    quote = tpm.quote(quote_nonce(h), state.selection)
    result: dict[str, Any] = ch.request(
        Command.ATTEST, attest=quote.attest, signature=quote.signature,
        pcrs={str(i): v for i, v in quote.pcrs().items()})
    return result


class Follower:
    """A device's live ``follow`` session in a thread, as ``attestgate follow`` holds it.

    The TPM is released once the session is attested (swtpm serves one client at a
    time, and a following session needs the TPM only to re-attest).
    """

    def __init__(self, tcti: str, state: st.ClientState) -> None:
        self._tcti = tcti
        self._state = state
        self.following = threading.Event()
        self.ended_at = 0.0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.following.wait(FOLLOW_READY_S), self.error

    def _run(self) -> None:
        try:
            with Tpm(self._tcti) as tpm:
                ch = flows.connect(tpm, self._state, quiet)
            with ch:
                ch.request(Command.FOLLOW)
                self.following.set()
                while True:
                    ch.next_push(timeout=KICK_LIMIT_S * 10)
        except (Refused, NetworkError, AttestgateError) as exc:
            self.ended_at, self.error = time.monotonic(), exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the live session was not closed"


# == replayed handshake =====================================================================


def test_attack_replayed_handshake(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                   tmp_path: Path) -> None:
    """An eavesdropper records a whole real connect + post and plays it back verbatim."""
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    host, port = host_port(stack)
    with RecordingProxy.start(host, port) as proxy:
        st.save(m.home, dataclasses.replace(state, server=proxy.address))
        rc, posted = m.run("post", "recorded by an eavesdropper")
        assert rc == EXIT_OK, posted
    st.save(m.home, state)
    recorded = bytes(proxy.client_bytes[0])
    assert recorded.startswith(preamble(Mode.CONNECT).encode())
    before = Snapshot.take(stack, store, state.device_id)
    assert before.posts == 1 and before.device is not None and before.device.failures == 0
    guard = store.raw().get(f"ag:{{reg}}:ts:{state.device_id}")

    for _ in range(3):
        with socket.create_connection((host, port), timeout=CLOSE_WAIT_S) as s:
            s.sendall(recorded)
            received, closed = read_until_closed(s)
        assert closed, "the gateway kept a replayed handshake open"
        assert received == b"", "the gateway answered a replayed message 1"

    # No session, nothing stored, no audit entry, the device's record and replay guard as
    # they were: a replay neither counts as a failure nor moves the device towards a lock.
    assert Snapshot.take(stack, store, state.device_id) == before
    assert store.raw().get(f"ag:{{reg}}:ts:{state.device_id}") == guard
    # The device itself connects as before.
    rc, doc = m.run("status")
    assert rc == EXIT_OK and doc["failures"] == 0 and doc["status"] == "active", doc
    assert store.count_posts() == 1


# == relayed quote ===========================================================================


def test_attack_relayed_quote(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                              tmp_path: Path) -> None:
    """A quote the TPM made for channel A (bound to A's h) is sent inside channel B."""
    state = enrolled(stack, swtpm, tmp_path).state()
    host, port = host_port(stack)
    before = Snapshot.take(stack, store, state.device_id)
    with Tpm(swtpm.tcti) as tpm:
        static = flows.unseal_static(tpm, state)
        server = bytes.fromhex(state.server_public)
        with open_connect(host, port, static, server, time.time_ns(),
                          tpm_session_psk(tpm, state)) as a, \
                open_connect(host, port, static, server, time.time_ns(),
                             tpm_session_psk(tpm, state)) as b:
            assert a.handshake_hash != b.handshake_hash
            with pytest.raises(Refused) as refused:
                attest(b, tpm, state, a.handshake_hash)  # A's quote, in B
            assert refused.value.code is ErrorCode.QUOTE_BINDING
            assert refused.value.body["failures"] == 1
            with pytest.raises((NetworkError, Refused)):
                b.request(Command.POST, text="through B", key=os.urandom(16),
                          signature=b"x")  # B is closed
            # A's own quote still opens A: the refusal was about the binding.
            assert attest(a, tpm, state, a.handshake_hash)["device_id"] == state.device_id

    refused_entries = [json.loads(e.detail) for e in store.read_audit(state.device_id)
                       if e.event == "attest_refused"]
    assert [r["code"] for r in refused_entries] == ["quote_binding"]
    assert store.count_posts() == before.posts
    assert wait_sessions(stack, before.sessions + 1) == before.sessions + 1  # A only
    # Counted against the device: only a holder of its keys can send that quote.
    assert device(store, state.device_id).failures == 0  # A's accepted quote reset the count


# == cloned client home on another TPM ======================================================


def _other_template(factory: SwtpmFactory, other: TemplateTpm) -> SwtpmProcess:
    return factory(other)


def _same_template_cleared(factory: SwtpmFactory, other: TemplateTpm) -> SwtpmProcess:
    tpm = factory()  # same EK as the original, but TPM2_Clear: a new storage seed
    clear_owner(tpm.tcti)
    return tpm


@pytest.mark.parametrize("other_machine", [_other_template, _same_template_cleared],
                         ids=["other-tpm", "same-ek-cleared-owner"])
def test_attack_cloned_home_on_another_tpm(
        stack: Stack, store: RedisStore, swtpm: SwtpmProcess, swtpm_factory: SwtpmFactory,
        swtpm_template_other_ca: TemplateTpm, tmp_path: Path,
        other_machine: Callable[[SwtpmFactory, TemplateTpm], SwtpmProcess]) -> None:
    """The whole client home (state.json with every key blob) copied to another machine."""
    original = enrolled(stack, swtpm, tmp_path)
    clone = Machine(other_machine(swtpm_factory, swtpm_template_other_ca), tmp_path / "clone")
    shutil.copytree(original.home, clone.home)
    before = Snapshot.take(stack, store, original.state().device_id)
    host, port = host_port(stack)
    with RecordingProxy.start(host, port) as proxy:
        st.save(clone.home, dataclasses.replace(clone.state(), server=proxy.address))
        for command in (("post", "from the clone"), ("read",), ("status",), ("follow",)):
            rc, doc = clone.run(*command)
            # The clone's TPM cannot load or unseal blobs wrapped by the original's SRK,
            # so the Noise key never decrypts: a local TPM error before any connection.
            assert (rc, doc.get("error")) == (EXIT_TPM, ErrorCode.TPM_ERROR.value), (command, doc)
        assert proxy.accepted == 0, "the clone reached the server"
    assert Snapshot.take(stack, store, original.state().device_id) == before
    rc, doc = original.run("status")  # the real machine is unaffected
    assert rc == EXIT_OK and doc["failures"] == 0, doc


# == stolen Noise static key without the TPM ================================================


def _ik_with_guessed_psk(stack: Stack, static: StaticKey, server_public: bytes, ts: int,
                         guess: Callable[[bytes, bytes], Psk]) -> bytes | None:
    """Run IKpsk2 with the stolen key and a guessed PSK, then send a first transport frame.

    Returns the gateway's message 2 (None if it closed instead). Asserts that the
    guess fails and that the gateway then closes the connection.
    """
    host, port = host_port(stack)
    pre = preamble(Mode.CONNECT)
    noise = NoiseSession.initiator(pre, static, server_static=server_public)
    with socket.create_connection((host, port), timeout=CLOSE_WAIT_S) as s:
        s.sendall(pre.encode() + encode_frame(noise.write_handshake(struct.pack(">Q", ts))))
        msg2 = read_frame(s)
        if msg2 is None:
            return None
        noise.set_psk(guess(noise.local_ephemeral, responder_ephemeral(msg2)))
        with pytest.raises(AttestgateError) as exc:
            noise.read_handshake(msg2)
        assert exc.value.code is ErrorCode.PROTOCOL
        # The attacker carries on as if the PSK were right: an ATTEST-sized first frame,
        # which cannot be encrypted under keys the attacker does not have.
        with contextlib.suppress(OSError):
            s.sendall(encode_frame(os.urandom(len(encode_request(1, Command.ATTEST,
                                                                 attest=b"a" * 145,
                                                                 signature=b"s" * 72)))))
        received, closed = read_until_closed(s)
        assert closed, "the gateway kept a connection with a wrong session PSK open"
        assert received == b""
    return msg2


def test_attack_stolen_noise_key_without_tpm(stack: Stack, store: RedisStore,
                                             swtpm: SwtpmProcess, tmp_path: Path) -> None:
    """The attacker has the device's Noise static private key and the server key, no TPM."""
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    with Tpm(swtpm.tcti) as tpm:  # the client's own code path, once, on the original TPM
        static = flows.unseal_static(tpm, state)
    assert static.public.hex() == state.noise_public
    swtpm.stop()  # from here on the attacker has no TPM at all
    server_public = bytes.fromhex(state.server_public)
    before = Snapshot.take(stack, store, state.device_id)
    gateway_at = len(log_text(stack, "gateway"))

    guesses: dict[str, Callable[[bytes, bytes], Psk]] = {
        "zero psk": lambda e_i, e_r: Psk(bytes(32)),
        "random psk": lambda e_i, e_r: Psk(os.urandom(32)),
        "open-enrollment psk": lambda e_i, e_r: enroll_psk(b""),
        "session psk under a zero device psk": lambda e_i, e_r: session_psk(bytes(32), e_i, e_r),
    }
    for what, guess in guesses.items():
        msg2 = _ik_with_guessed_psk(stack, static, server_public, time.time_ns(), guess)
        # The key is enrolled, so the gateway answers message 2, and then closes.
        assert msg2 is not None and len(msg2) == IK_MSG2_LEN, what
    # The largest timestamp: it must not lock the real device out (replay guard).
    _ik_with_guessed_psk(stack, static, server_public, 2**63 - 1, guesses["zero psk"])
    attacked_at = time.monotonic()

    assert wait_for_log(stack, "gateway", "first message rejected", gateway_at).count(
        "first message rejected") >= len(guesses)
    # No session, nothing stored, nothing audited, no failure counted against the device.
    assert Snapshot.take(stack, store, state.device_id) == before
    # The owner, with the TPM back (a reboot), connects and posts again: the largest
    # timestamp moved the replay guard at most CONNECT_TS_AHEAD past the server's clock.
    swtpm.restart()
    deadline = attacked_at + CONNECT_TS_AHEAD + LOG_WAIT_S
    while (rc := m.run("post", "still mine")[0]) != EXIT_OK and time.monotonic() < deadline:
        time.sleep(0.2)
    assert rc == EXIT_OK, "the stolen key locked the owner out"
    assert store.count_posts() == before.posts + 1
    assert device(store, state.device_id).failures == 0


# == revoked and locked devices =============================================================


def test_attack_revoked_device(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                               tmp_path: Path) -> None:
    """After `attestgate-admin revoke`, the device's keys and TPM open nothing any more."""
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    follower = Follower(swtpm.tcti, state)
    rc, doc = admin_cli(stack, "revoke", "dev1")
    revoked_at = time.monotonic()
    assert rc == 0 and doc["status"] == "revoked" and doc["gateways_notified"] == 1, doc
    follower.join(KICK_LIMIT_S * 5)
    assert isinstance(follower.error, Refused), follower.error
    assert follower.error.code is ErrorCode.REVOKED
    assert follower.ended_at - revoked_at < KICK_LIMIT_S, (
        f"live session closed {follower.ended_at - revoked_at:.2f} s after the revocation")

    before = Snapshot.take(stack, store, state.device_id)
    for command in (("post", "after revocation"), ("status",)):
        rc, doc = m.run(*command)
        assert (rc, doc.get("error")) == (EXIT_REFUSED, ErrorCode.REVOKED.value), doc
    assert store.count_posts() == 0
    assert session_count(stack) == before.sessions
    assert device(store, state.device_id).status is DeviceStatus.REVOKED
    assert [e.event for e in store.read_audit(state.device_id)].count("revoked") == 1
    # Revocation is permanent: unlock refuses it.
    rc, doc = admin_cli(stack, "unlock", "dev1")
    assert (rc, doc.get("error")) == (EXIT_REFUSED, ErrorCode.REVOKED.value), doc
    assert m.run("status")[0] == EXIT_REFUSED


def test_attack_locked_device(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                              tmp_path: Path) -> None:
    """MAX_FAILURES refused attestations lock the device; only `unlock` lets it in again."""
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    follower = Follower(swtpm.tcti, state)  # attested before the state changes
    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(16, b"tampered boot")
    for attempt in range(1, MAX_FAILURES + 1):
        rc, doc = m.run("status")
        assert (rc, doc.get("error")) == (EXIT_REFUSED, ErrorCode.PCR_MISMATCH.value), doc
        assert doc["failures"] == attempt
    locked_at = time.monotonic()
    assert doc["status"] == "locked", doc
    follower.join(KICK_LIMIT_S * 5)
    assert isinstance(follower.error, Refused), follower.error
    assert follower.error.code is ErrorCode.LOCKED
    assert follower.ended_at - locked_at < KICK_LIMIT_S, (
        f"live session closed {follower.ended_at - locked_at:.2f} s after the lock")
    assert "consequence_lock" in [e.event for e in store.read_audit(state.device_id)]

    # Back in its enrolled state, the device stays locked until an operator unlocks it.
    with Tpm(swtpm.tcti) as tpm:
        tpm.reset_pcr(16)
    before = Snapshot.take(stack, store, state.device_id)
    for command in (("post", "while locked"), ("status",)):
        rc, doc = m.run(*command)
        assert (rc, doc.get("error")) == (EXIT_REFUSED, ErrorCode.LOCKED.value), doc
    assert store.count_posts() == 0
    assert session_count(stack) == before.sessions
    assert device(store, state.device_id).failures == MAX_FAILURES  # refusals while locked
    rc, doc = admin_cli(stack, "unlock", "dev1")
    assert rc == 0 and doc["from"] == "locked" and doc["status"] == "active", doc
    assert "unlocked" in [e.event for e in store.read_audit(state.device_id)]
    rc, doc = m.run("post", "unlocked again")
    assert rc == EXIT_OK, doc
    rc, doc = m.run("status")
    assert rc == EXIT_OK and doc["failures"] == 0 and doc["status"] == "active", doc


# == downgrade of the preamble version ========================================================


def _set_version(version: int) -> Callable[[bytes], bytes]:
    return lambda pre: pre[:4] + bytes([version]) + pre[5:]


def _set_mode(mode: bytes) -> Callable[[bytes], bytes]:
    return lambda pre: pre[:5] + mode


@pytest.mark.parametrize(("label", "rewrite"), [
    ("older version", _set_version((PROTOCOL_VERSION - 1) % 256)),
    ("newer, unknown version", _set_version(PROTOCOL_VERSION + 1)),
    ("version 255", _set_version(255)),
    ("connect rewritten to enroll", _set_mode(Mode.ENROLL.value)),
])
def test_attack_preamble_downgrade(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                   tmp_path: Path, label: str,
                                   rewrite: Callable[[bytes], bytes]) -> None:
    """A MITM proxy rewrites the cleartext preamble of a real client's connection."""
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    before = Snapshot.take(stack, store, state.device_id)
    host, port = host_port(stack)
    with RewritingProxy.start(host, port, rewrite, PREAMBLE_LEN) as mitm:
        st.save(m.home, dataclasses.replace(state, server=mitm.address))
        rc, doc = m.run("post", "through the MITM")
        assert rc in NOT_LET_IN, doc
        assert mitm.rewritten and all(a != b for a, b in mitm.rewritten), label
    assert Snapshot.take(stack, store, state.device_id) == before  # nothing at all
    st.save(m.home, state)
    rc, doc = m.run("status")  # without the MITM the device connects
    assert rc == EXIT_OK and doc["failures"] == 0, doc


def test_attack_preamble_unknown_version_refused(stack: Stack, store: RedisStore,
                                                 swtpm: SwtpmProcess, tmp_path: Path) -> None:
    """A client (or attacker) speaking a version the gateway does not know gets only a cleartext
    version hint (advisory: "I speak version N"), then the connection closes; nothing reaches
    the registry."""
    state = enrolled(stack, swtpm, tmp_path).state()
    before = Snapshot.take(stack, store, state.device_id)
    host, port = host_port(stack)
    static = StaticKey.generate()
    gateway_at = len(log_text(stack, "gateway"))
    for version in {0, (PROTOCOL_VERSION - 1) % 256, PROTOCOL_VERSION + 1, 255}:
        pre = Preamble(version, Mode.CONNECT)
        noise = NoiseSession.initiator(pre, static,
                                       server_static=bytes.fromhex(state.server_public))
        with socket.create_connection((host, port), timeout=CLOSE_WAIT_S) as s:
            with contextlib.suppress(OSError):
                s.sendall(pre.encode() + encode_frame(noise.write_handshake(bytes(8))))
            received, closed = read_until_closed(s)
        frames = FrameDecoder()
        frames.feed(received)
        first = frames.next_frame()
        assert closed and first is not None and frames.next_frame() is None, version
        assert parse_hint(first) == Hint(HintReason.VERSION, 0, PROTOCOL_VERSION), version
    text = wait_for_log(stack, "gateway", "unsupported version", gateway_at)
    assert text.count("reason=version") >= 3, text
    assert Snapshot.take(stack, store, state.device_id) == before


def test_attack_preamble_rewrite_breaks_handshake(stack: Stack, store: RedisStore,
                                                  swtpm: SwtpmProcess, tmp_path: Path) -> None:
    """Prologue binding: a preamble rewritten into one the gateway accepts fails the handshake.

    The client speaks version PROTOCOL_VERSION + 1 (a future version) and binds that
    preamble into its Noise prologue; the MITM rewrites it on the wire to the version
    the gateway speaks. The gateway accepts the preamble, but the handshake hashes
    differ, so message 1 does not decrypt: no registry lookup, no message 2.
    """
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    host, port = host_port(stack)

    def handcrafted_connect(address: str, version: int, tpm: Tpm) -> dict[str, Any] | None:
        """The real client's connect, but with the preamble of ``version``."""
        pre = Preamble(version, Mode.CONNECT)
        noise = NoiseSession.initiator(pre, flows.unseal_static(tpm, state),
                                       server_static=bytes.fromhex(state.server_public))
        mhost, mport = parse_host_port(address)
        with socket.create_connection((mhost, mport), timeout=CLOSE_WAIT_S) as s:
            s.sendall(pre.encode()
                      + encode_frame(noise.write_handshake(struct.pack(">Q", time.time_ns()))))
            msg2 = read_frame(s)
            if msg2 is None:
                return None
            noise.set_psk(tpm_session_psk(tpm, state)(noise.local_ephemeral,
                                                      responder_ephemeral(msg2)))
            noise.read_handshake(msg2)
            quote = tpm.quote(quote_nonce(noise.handshake_hash), state.selection)
            s.sendall(encode_frame(noise.encrypt(encode_request(
                1, Command.ATTEST, attest=quote.attest, signature=quote.signature,
                pcrs={str(i): v for i, v in quote.pcrs().items()}))))
            reply = read_frame(s)
            assert reply is not None
            msg = decode_server_message(noise.decrypt(reply))
            return dict(msg.body) if msg.ok else None

    to_current = _set_version(PROTOCOL_VERSION)
    with Tpm(swtpm.tcti) as tpm, RewritingProxy.start(host, port, to_current,
                                                      PREAMBLE_LEN) as mitm:
        # Control: the same hand-made client, unmodified preamble, through the same proxy.
        sessions = session_count(stack)
        ok = handcrafted_connect(mitm.address, PROTOCOL_VERSION, tpm)
        assert ok is not None and ok["device_id"] == state.device_id
        assert wait_sessions(stack, sessions + 1) == sessions + 1
        before = Snapshot.take(stack, store, state.device_id)
        guard = store.raw().get(f"ag:{{reg}}:ts:{state.device_id}")
        registry_at = len(log_text(stack, "registry"))
        gateway_at = len(log_text(stack, "gateway"))
        assert handcrafted_connect(mitm.address, PROTOCOL_VERSION + 1, tpm) is None
        assert mitm.rewritten[-1] == (Preamble(PROTOCOL_VERSION + 1, Mode.CONNECT).encode(),
                                      Preamble(PROTOCOL_VERSION, Mode.CONNECT).encode())
    gateway_log = wait_for_log(stack, "gateway", "(protocol)", gateway_at)
    assert "reason=bad message 1 (protocol)" in gateway_log, gateway_log
    # Message 1 failed to decrypt, so the registry was never asked about this device.
    assert store.raw().get(f"ag:{{reg}}:ts:{state.device_id}") == guard
    assert state.device_id not in log_text(stack, "registry")[registry_at:]
    assert Snapshot.take(stack, store, state.device_id) == before


# == impostor server ==========================================================================


def test_attack_impostor_server(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                swtpm_factory: SwtpmFactory,
                                swtpm_template_other_ca: TemplateTpm, tmp_path: Path) -> None:
    """A server with another Noise key (a full attestgate stack of the attacker's) on the path."""
    rc, doc = admin_cli(stack, "server-key")
    assert rc == 0 and doc["fingerprint"], doc
    real_fingerprint = doc["fingerprint"]
    with Stack.start(tmp_path / "impostor", settings=SETTINGS) as impostor:
        fake = RedisStore(impostor.redis.url)
        try:
            # Enrollment pinned to the real server's key: the impostor's key is refused
            # before any evidence leaves the machine.
            newcomer = Machine(swtpm_factory(swtpm_template_other_ca), tmp_path / "newcomer")
            rc, doc = newcomer.run("enroll", "--server", impostor.server, "--name", "dev2",
                                   "--server-key", real_fingerprint)
            assert (rc, doc.get("error")) == (EXIT_REFUSED, ErrorCode.PROTOCOL.value), doc
            assert not (newcomer.home / st.STATE_FILE).exists()
            assert fake.list_devices() == []
            assert device_events(fake) == []  # no evidence reached its attestor
            assert fake.raw().keys("ag:{reg}:pending:*") == []

            # An enrolled device sent to the impostor: message 1 is encrypted to the real
            # server's key, so the impostor cannot even read who is calling.
            m = enrolled(stack, swtpm, tmp_path)
            state = m.state()
            st.save(m.home, dataclasses.replace(state, server=impostor.server))
            registry_at = len(log_text(impostor, "registry"))
            for command in (("post", "to the impostor"), ("status",)):
                rc, doc = m.run(*command)
                assert rc in NOT_LET_IN, doc
            assert session_count(impostor) == 0
            assert fake.count_posts() == 0 and device_events(fake) == []
            assert state.device_id not in log_text(impostor, "registry")[registry_at:]
            assert "reason=bad message 1 (protocol)" in wait_for_log(impostor, "gateway",
                                                                      "(protocol)", 0)
        finally:
            fake.close()
    st.save(m.home, state)
    rc, doc = m.run("status")  # the real server still knows the device, untouched
    assert rc == EXIT_OK and doc["failures"] == 0, doc
