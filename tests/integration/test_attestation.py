"""Attacks on enrollment, reconnect and session, against a real stack, real swtpm, real CLI.

One stack (Redis, gateway, attestor, registry, board as processes) serves the
module and is purged before each test; every test gets its own swtpm copy.
Each attack must be refused with its own code, and then nothing is stored or
forwarded: no device, no post, no session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client import flows
from client import state as st
from client.channel import Channel, NetworkError, Refused, open_connect, open_enroll
from client.tpm import KeyBlob, Tpm
from shared.audit_anchor import CHECKPOINT_FILE
from shared.config import parse_host_port
from shared.errors import AttestgateError, ErrorCode
from shared.keys import Psk, StaticKey, session_psk_message
from shared.posts import post_digest
from shared.records import Device, DeviceStatus
from shared.store.redis_store import AUDIT_LOG, RedisStore
from shared.wire import Command
from tests.support.clis import admin_cli, cli, quiet
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm, change_endorsement_seed, clear_owner
from tests.support.swtpm_fixtures import SwtpmFactory
from tests.support.tcp_proxy import RecordingProxy

pytestmark = pytest.mark.integration

SELECTION = "sha256:0,1,2,3,4,5,6,7,16"
MAX_FAILURES = 2
SETTINGS = {"ATTESTGATE_PCR_SELECTION": SELECTION,
            "ATTESTGATE_MAX_FAILURES": str(MAX_FAILURES)}
EXIT_OK, EXIT_REFUSED, EXIT_NETWORK, EXIT_TPM = 0, 3, 4, 5
LOG_WAIT_S = 3.0
CONNECTS_TIMED = 20
KICK_LIMIT_S = 1.0


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, swtpm_template: TemplateTpm
          ) -> Iterator[Stack]:
    with Stack.start(tmp_path_factory.mktemp("stack"), ca_dir=swtpm_template.trust_dir,
                     settings=SETTINGS) as s:
        yield s


@pytest.fixture(scope="module")
def module_store(stack: Stack) -> Iterator[RedisStore]:
    store = RedisStore(stack.redis.url)
    yield store
    store.close()


@pytest.fixture
def store(stack: Stack, module_store: RedisStore) -> RedisStore:
    """The module stack's store, emptied: the copies of one template share one EK.

    The audit log goes too, so its checkpoints in the server home are reset with it
    (otherwise they would rightly report the log as deleted).
    """
    module_store.purge()
    (stack.directory / "server" / CHECKPOINT_FILE).unlink(missing_ok=True)
    return module_store


# -- helpers --------------------------------------------------------------------------------








@dataclasses.dataclass(frozen=True)
class Machine:
    """A TPM and a client home: what ``attestgate --tpm T --home H`` runs as."""

    tpm: SwtpmProcess
    home: Path

    def args(self) -> list[str]:
        return ["--tpm", self.tpm.tcti, "--home", str(self.home)]

    def run(self, *argv: str) -> tuple[int, dict[str, Any]]:
        return cli(argv[0], *argv[1:], *self.args())

    def enroll(self, stack: Stack, name: str, *extra: str) -> tuple[int, dict[str, Any]]:
        return self.run("enroll", "--server", stack.server, "--name", name, "--tofu", *extra)

    def state(self) -> st.ClientState:
        return st.load(self.home)


def machine(tpm: SwtpmProcess, tmp_path: Path, label: str = "home") -> Machine:
    return Machine(tpm, tmp_path / label)


def enrolled(stack: Stack, tpm: SwtpmProcess, tmp_path: Path, name: str = "dev1",
             *extra: str) -> Machine:
    m = machine(tpm, tmp_path, f"home-{name}")
    rc, doc = m.enroll(stack, name, *extra)
    assert rc == EXIT_OK, doc
    return m


def log_text(stack: Stack, service: str) -> str:
    """The whole log of a service's first process (``Stack.log`` gives only its tail)."""
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


def audit_events(store: RedisStore, device_id: str | None = None) -> list[str]:
    return [e.event for e in store.read_audit(device_id)]


def session_count(stack: Stack) -> int:
    return log_text(stack, "gateway").count("session open ")


def host_port(stack: Stack) -> tuple[str, int]:
    return parse_host_port(stack.server)


# -- enrollment by hand, for forged evidence ---------------------------------------------


def evidence(tpm: Tpm, h: bytes, selection: str, name: str) -> dict[str, Any]:
    """Exactly what ``flows.enroll`` sends, so a test can change one field."""
    nonce = flows.quote_nonce(h)
    ek = tpm.endorsement()
    post_key = tpm.create_post_key()
    srk_cert = tpm.certify_srk(nonce)
    post_cert = tpm.certify_key(post_key, nonce)
    quote = tpm.quote(nonce, selection)
    return {
        "name": name, "ek_public": ek.public, "ek_cert": ek.certificate or b"",
        "ak_public": tpm.ak_public(), "srk_public": tpm.srk_public(),
        "srk_attest": srk_cert.attest, "srk_signature": srk_cert.signature,
        "post_public": post_key.public, "post_attest": post_cert.attest,
        "post_signature": post_cert.signature, "quote_attest": quote.attest,
        "quote_signature": quote.signature, "pcrs": {str(i): v for i, v in quote.pcrs().items()},
    }


@contextlib.contextmanager
def enroll_channel(stack: Stack) -> Iterator[tuple[Channel, str]]:
    host, port = host_port(stack)
    ch, hello = open_enroll(host, port, StaticKey.generate(), None, lambda _: None)
    with ch:
        yield ch, hello.selection


def assert_enroll_refused(store: RedisStore, code: ErrorCode) -> None:
    assert store.list_devices() == []
    assert [e for e in store.read_audit() if e.event in ("enrolled", "attest_ok")] == []
    refused = [json.loads(e.detail) for e in store.read_audit() if e.event == "enroll_refused"]
    if code not in (ErrorCode.BAD_TOKEN, ErrorCode.CREDENTIAL_FAILED):  # refused before evidence
        assert refused and refused[-1]["code"] == code.value


# -- reconnect by hand ---------------------------------------------------------------------


def session_psk_fn(tpm: Tpm, state: st.ClientState) -> Callable[[bytes, bytes], Psk]:
    key = KeyBlob.from_bytes(bytes.fromhex(state.psk_key))
    return lambda e_i, e_r: Psk(tpm.hmac(key, session_psk_message(e_i, e_r)))


def handshake(stack: Stack, tpm: Tpm, state: st.ClientState,
              psk: Callable[[bytes, bytes], Psk] | None = None) -> Channel:
    """IKpsk2 up to the point where the quote must follow."""
    host, port = host_port(stack)
    return open_connect(host, port, flows.unseal_static(tpm, state),
                        bytes.fromhex(state.server_public), time.time_ns(),
                        psk or session_psk_fn(tpm, state))


def attest(ch: Channel, tpm: Tpm, state: st.ClientState, h: bytes) -> dict[str, Any]:
    quote = tpm.quote(flows.quote_nonce(h), state.selection)
    return ch.request(Command.ATTEST, attest=quote.attest, signature=quote.signature,
                      pcrs={str(i): v for i, v in quote.pcrs().items()})


# == 1. enrollment ==========================================================================


def test_enrollment_stores_what_the_tpm_holds(stack: Stack, store: RedisStore,
                                              swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = machine(swtpm, tmp_path)
    rc, doc = m.enroll(stack, "dev1")
    assert rc == EXIT_OK, doc
    device = store.device_by_name("dev1")
    assert device is not None and device.device_id == doc["device_id"]
    assert device.status is DeviceStatus.ACTIVE
    with Tpm(swtpm.tcti) as tpm:
        assert device.ek_public == tpm.endorsement().public
        assert device.ak_public == tpm.ak_public()
        assert device.srk_public == tpm.srk_public()
        assert device.baselines[0].selection == SELECTION
        assert device.baselines[0].as_dict() == tpm.pcr_read(SELECTION)
    assert device.noise_public.hex() == m.state().noise_public
    assert "enrolled" in audit_events(store, device.device_id)


def test_ek_from_unknown_ca_is_untrusted(stack: Stack, store: RedisStore,
                                         swtpm_factory: SwtpmFactory,
                                         swtpm_template_other_ca: TemplateTpm,
                                         tmp_path: Path) -> None:
    m = machine(swtpm_factory(swtpm_template_other_ca), tmp_path)
    rc, doc = m.enroll(stack, "dev1")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "ek_untrusted")
    assert_enroll_refused(store, ErrorCode.EK_UNTRUSTED)
    assert not (m.home / st.STATE_FILE).exists()


def test_ek_not_matching_its_certificate(stack: Stack, store: RedisStore,
                                         swtpm: SwtpmProcess, tmp_path: Path) -> None:
    change_endorsement_seed(swtpm.tcti)
    rc, doc = machine(swtpm, tmp_path).enroll(stack, "dev1")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "ek_mismatch")
    assert_enroll_refused(store, ErrorCode.EK_MISMATCH)


def test_enrollment_token_is_checked_and_used_once(tmp_path: Path, swtpm_template: TemplateTpm,
                                                   swtpm_factory: SwtpmFactory) -> None:
    settings = {**SETTINGS, "ATTESTGATE_OPEN_ENROLLMENT": "0"}
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
                     settings=settings) as closed:
        store = RedisStore(closed.redis.url)
        try:
            rc, made = admin_cli(closed, "token", "create")
            assert rc == 0, made
            token_id, secret = made["token"].split(".")
            tpm = swtpm_factory()
            attempts = {
                "no token (open enrollment off)": (),
                "unknown token id": ("--token", f"{os.urandom(8).hex()}.{secret}"),
                "right id, wrong secret": ("--token", f"{token_id}.not-the-secret"),
            }
            for i, (what, extra) in enumerate(attempts.items()):
                rc, doc = machine(tpm, tmp_path, f"bad-{i}").enroll(closed, f"bad{i}", *extra)
                # The gateway closes without a word it could authenticate: exit 4, the
                # message names the token among the likely causes.
                assert (rc, doc.get("error")) == (EXIT_NETWORK, "network"), what
                assert "enrollment token" in doc["message"], what
                assert store.list_devices() == [], what
            assert store.get_token(token_id, time.time()) is not None  # not burnt by failures

            rc, doc = machine(tpm, tmp_path, "good").enroll(closed, "good", "--token",
                                                           made["token"])
            assert rc == EXIT_OK, doc
            assert store.get_token(token_id, time.time()) is None  # consumed
            again = machine(swtpm_factory(), tmp_path, "again")
            rc, doc = again.enroll(closed, "again", "--token", made["token"])
            assert (rc, doc.get("error")) == (EXIT_NETWORK, "network")
            assert [d.name for d in store.list_devices()] == ["good"]
        finally:
            store.close()


def test_same_ek_cannot_enroll_twice(stack: Stack, store: RedisStore,
                                     swtpm_factory: SwtpmFactory, tmp_path: Path) -> None:
    first = enrolled(stack, swtpm_factory(), tmp_path, "dev1")
    # A copy of the same template: the same EK, another home and name.
    rc, doc = machine(swtpm_factory(), tmp_path, "second").enroll(stack, "dev2")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "already_enrolled")
    assert [d.name for d in store.list_devices()] == [first.state().name]


def test_credential_answered_by_another_tpm(stack: Stack, store: RedisStore,
                                            swtpm_factory: SwtpmFactory,
                                            swtpm_template_other_ca: TemplateTpm) -> None:
    real, other = swtpm_factory(), swtpm_factory(swtpm_template_other_ca)
    with Tpm(real.tcti) as tpm_a, Tpm(other.tcti) as tpm_b, enroll_channel(stack) as (ch, sel):
        challenge = ch.request(Command.ENROLL,
                               **evidence(tpm_a, ch.handshake_hash, sel, "dev1"))
        # The evidence is A's; the credential only opens in A. B cannot activate it...
        with pytest.raises(AttestgateError) as exc:
            tpm_b.activate_credential(bytes(challenge["id_object"]),
                                      bytes(challenge["encrypted_secret"]))
        assert exc.value.code is ErrorCode.CREDENTIAL_FAILED
        # ...so the best B can send is a guess.
        with pytest.raises(Refused) as refused:
            ch.request(Command.ACTIVATE, challenge=os.urandom(32), mac=os.urandom(32))
        assert refused.value.code is ErrorCode.CREDENTIAL_FAILED
    assert_enroll_refused(store, ErrorCode.CREDENTIAL_FAILED)
    assert store.raw().keys("ag:{reg}:pending:*") == []  # the verified evidence is gone too


def _ak_not_restricted(ev: dict[str, Any], tpm: Tpm, h: bytes, sel: str) -> None:
    ev["ak_public"] = ev["post_public"]  # a TPM key, but it could sign anything


def _quote_over_other_nonce(ev: dict[str, Any], tpm: Tpm, h: bytes, sel: str) -> None:
    quote = tpm.quote(os.urandom(32), sel)
    ev["quote_attest"], ev["quote_signature"] = quote.attest, quote.signature


def _pcr_value_flipped(ev: dict[str, Any], tpm: Tpm, h: bytes, sel: str) -> None:
    value = bytearray(ev["pcrs"]["0"])
    value[0] ^= 0x01
    ev["pcrs"]["0"] = bytes(value)


@pytest.mark.parametrize(("forge", "code"), [
    (_ak_not_restricted, ErrorCode.AK_INVALID),
    (_quote_over_other_nonce, ErrorCode.QUOTE_BINDING),
    (_pcr_value_flipped, ErrorCode.PCR_DIGEST),
], ids=["ak-not-restricted", "quote-other-nonce", "pcr-value-flipped"])
def test_forged_enrollment_evidence(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                    forge: Callable[[dict[str, Any], Tpm, bytes, str], None],
                                    code: ErrorCode) -> None:
    with Tpm(swtpm.tcti) as tpm, enroll_channel(stack) as (ch, sel):
        ev = evidence(tpm, ch.handshake_hash, sel, "dev1")
        forge(ev, tpm, ch.handshake_hash, sel)
        with pytest.raises(Refused) as exc:
            ch.request(Command.ENROLL, **ev)
    assert exc.value.code is code
    assert_enroll_refused(store, code)


# == 2. reconnect ===========================================================================


def test_reconnect_and_its_latency(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    times = []
    with Tpm(swtpm.tcti) as tpm:
        for _ in range(CONNECTS_TIMED):
            t0 = time.perf_counter()
            ch = flows.connect(tpm, state, quiet)
            times.append(time.perf_counter() - t0)
            with ch:
                assert ch.request(Command.STATUS)["status"] == "active"
    median_ms = statistics.median(times) * 1000
    with capsys.disabled():
        print(f"\nconnect (IKpsk2 + TPM HMAC + quote + attestor), median of {CONNECTS_TIMED}: "
              f"{median_ms:.1f} ms (min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})")
    assert audit_events(store, state.device_id).count("attest_ok") == CONNECTS_TIMED
    rc, doc = m.run("post", "hello")
    assert rc == EXIT_OK, doc


def test_pcr_change_is_refused_then_locks(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                          tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(16, b"x")
        current = tpm.pcr_read("sha256:16")[16]

    for attempt in range(1, MAX_FAILURES + 1):
        rc, doc = m.run("post", "must not be stored")
        assert (rc, doc["error"]) == (EXIT_REFUSED, "pcr_mismatch"), doc
        assert doc["changed"] == [{"pcr": 16, "enrolled": state.baseline["16"],
                                   "current": current.hex()}]
        assert doc["failures"] == attempt
        assert doc["status"] == ("locked" if attempt == MAX_FAILURES else "active")
    assert store.count_posts() == 0
    refusals = [json.loads(e.detail) for e in store.read_audit(state.device_id)
                if e.event == "attest_refused"]
    assert [r["code"] for r in refusals] == ["pcr_mismatch"] * MAX_FAILURES
    assert refusals[0]["changed"][0]["pcr"] == 16
    assert "consequence_lock" in audit_events(store, state.device_id)
    device = store.get_device(state.device_id)
    assert device is not None and device.status is DeviceStatus.LOCKED

    # Back in the enrolled state, the lock still holds until an operator lifts it.
    with Tpm(swtpm.tcti) as tpm:
        tpm.reset_pcr(16)
    rc, doc = m.run("status")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "locked")
    rc, doc = admin_cli(stack, "unlock", "dev1")
    assert rc == 0 and doc["from"] == "locked", doc
    rc, doc = m.run("status")
    assert rc == EXIT_OK and doc["status"] == "active" and doc["failures"] == 0, doc


def test_operator_approves_the_new_state(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                         tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(16, b"new firmware")
    rc, doc = m.run("status")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "pcr_mismatch")
    rc, doc = admin_cli(stack, "approve", "dev1")
    assert rc == 0 and doc["baselines"] == 1, doc
    rc, doc = m.run("status")
    assert rc == EXIT_OK and doc["failures"] == 0 and doc["approved_baselines"] == 1, doc
    with Tpm(swtpm.tcti) as tpm:  # the new state replaced the enrolled one (--replace)
        tpm.reset_pcr(16)
    assert m.run("status")[1]["error"] == "pcr_mismatch"


# == 3. clone ==============================================================================


def _other_template(factory: SwtpmFactory, other: TemplateTpm) -> SwtpmProcess:
    return factory(other)


def _same_template_cleared(factory: SwtpmFactory, other: TemplateTpm) -> SwtpmProcess:
    tpm = factory()
    clear_owner(tpm.tcti)
    return tpm


@pytest.mark.parametrize("other_machine", [_other_template, _same_template_cleared],
                         ids=["other-template", "same-template-cleared"])
def test_cloned_home_on_another_tpm(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                    swtpm_factory: SwtpmFactory,
                                    swtpm_template_other_ca: TemplateTpm, tmp_path: Path,
                                    other_machine: Callable[[SwtpmFactory, TemplateTpm],
                                                            SwtpmProcess]) -> None:
    original = enrolled(stack, swtpm, tmp_path)
    clone = Machine(other_machine(swtpm_factory, swtpm_template_other_ca), tmp_path / "clone")
    shutil.copytree(original.home, clone.home)
    sessions, audit_len = session_count(stack), len(store.read_audit())
    for command in (("post", "from the clone"), ("status",), ("check",)):
        rc, doc = clone.run(*command)
        assert rc in (EXIT_REFUSED, EXIT_TPM), (command, doc)
    assert store.count_posts() == 0
    assert len(store.read_audit()) == audit_len
    assert session_count(stack) == sessions
    assert original.run("status")[0] == EXIT_OK  # the real machine is unaffected


# == 4. replay =============================================================================


def test_replayed_reconnect_gets_no_session(stack: Stack, store: RedisStore,
                                            swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    host, port = host_port(stack)
    with RecordingProxy.start(host, port) as proxy, Tpm(swtpm.tcti) as tpm:
        via_proxy = dataclasses.replace(state, server=proxy.address)
        with flows.connect(tpm, via_proxy, quiet) as ch:
            flows.post(tpm, via_proxy, ch, "recorded")
        # The post was answered, so every byte the client sent has passed the proxy.
        recorded = bytes(proxy.client_bytes[0])
    assert store.count_posts() == 1
    ok_before = audit_events(store).count("attest_ok")

    def replay() -> bytes:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(recorded)
            s.shutdown(socket.SHUT_WR)
            received = b""
            with contextlib.suppress(OSError):
                while chunk := s.recv(65536):
                    received += chunk
            return received

    # Verbatim: message 1's timestamp is not newer than the last one.
    gateway_at, registry_at = len(log_text(stack, "gateway")), len(log_text(stack, "registry"))
    assert replay() == b""
    assert "replayed message 1" in wait_for_log(stack, "registry", "replayed message 1",
                                                registry_at)
    assert "connect refused code=protocol" in wait_for_log(
        stack, "gateway", "connect refused code=protocol", gateway_at)
    # Even with the replay guard's state lost, the recorded quote frame does not decrypt
    # under the new responder ephemeral: the gateway answers message 2 and then closes.
    store.raw().delete(f"ag:{{reg}}:ts:{state.device_id}")
    gateway_at = len(log_text(stack, "gateway"))
    assert replay() != b""
    assert "first message rejected" in wait_for_log(stack, "gateway", "first message rejected",
                                                    gateway_at)
    assert store.count_posts() == 1
    assert audit_events(store).count("attest_ok") == ok_before


# == 5. relay ==============================================================================


def test_quote_relayed_from_another_session(stack: Stack, store: RedisStore,
                                            swtpm: SwtpmProcess, tmp_path: Path) -> None:
    state = enrolled(stack, swtpm, tmp_path).state()
    with Tpm(swtpm.tcti) as tpm, handshake(stack, tpm, state) as a, \
            handshake(stack, tpm, state) as b:
        assert a.handshake_hash != b.handshake_hash
        with pytest.raises(Refused) as exc:
            attest(b, tpm, state, a.handshake_hash)  # A's quote, sent in B
        assert exc.value.code is ErrorCode.QUOTE_BINDING
        with pytest.raises((NetworkError, Refused)):
            b.request(Command.READ, limit=1)  # B is closed
        assert attest(a, tpm, state, a.handshake_hash)["device_id"] == state.device_id
    refused = [json.loads(e.detail) for e in store.read_audit(state.device_id)
               if e.event == "attest_refused"]
    assert [r["code"] for r in refused] == ["quote_binding"]


# == 6. wrong session PSK ==================================================================


def test_wrong_session_psk_gets_no_session(stack: Stack, store: RedisStore,
                                           swtpm: SwtpmProcess, tmp_path: Path) -> None:
    state = enrolled(stack, swtpm, tmp_path).state()
    sessions, audit_len = session_count(stack), len(store.read_audit())
    with Tpm(swtpm.tcti) as tpm, pytest.raises((AttestgateError, NetworkError, Refused)):
        ch = handshake(stack, tpm, state, lambda e_i, e_r: Psk(os.urandom(32)))
        with ch:  # not reached if the client already sees the bad PSK
            attest(ch, tpm, state, ch.handshake_hash)
    assert session_count(stack) == sessions
    assert len(store.read_audit()) == audit_len
    assert store.count_posts() == 0


# == 7. revoked ============================================================================


def test_revoke_refuses_and_kicks_live_session(stack: Stack, store: RedisStore,
                                               swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    state = m.state()
    following = threading.Event()
    ended: dict[str, Any] = {}

    def follow() -> None:
        with Tpm(swtpm.tcti) as tpm, flows.connect(tpm, state, quiet) as ch:
            ch.request(Command.FOLLOW)
            following.set()
            try:
                while True:
                    ch.next_push(timeout=5)
            except (Refused, NetworkError) as exc:
                ended["at"], ended["exc"] = time.monotonic(), exc

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert following.wait(10)
    t0 = time.monotonic()
    rc, doc = admin_cli(stack, "revoke", "dev1")
    assert rc == 0 and doc["gateways_notified"] == 1, doc
    thread.join(6)
    assert not thread.is_alive()
    assert isinstance(ended["exc"], Refused) and ended["exc"].code is ErrorCode.REVOKED
    assert ended["at"] - t0 < KICK_LIMIT_S, f"closed {ended['at'] - t0:.2f} s after revoke"
    rc, doc = m.run("status")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "revoked")
    assert "revoked" in audit_events(store, state.device_id)


# == 8. audit ==============================================================================


def test_audit_chain_verifies_and_shows_an_edit(stack: Stack, store: RedisStore,
                                                swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    assert m.run("status")[0] == EXIT_OK
    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(16, b"x")
    assert m.run("status")[0] == EXIT_REFUSED
    rc, doc = admin_cli(stack, "audit", "--verify")
    assert rc == 0 and doc["problems"] == [] and doc["checked"] >= 3, doc

    # Rewrite the stream, same ids, one detail changed ("failures": 1 -> 0).
    r = store.raw()
    rows = r.xrange(AUDIT_LOG)
    target = next(i for i, f in rows if f[b"event"] == b"attest_refused")
    r.delete(AUDIT_LOG)
    for entry_id, fields in rows:
        if entry_id == target:
            edited = fields[b"detail"].replace(b'"failures":1', b'"failures":0')
            assert edited != fields[b"detail"]
            fields[b"detail"] = edited
        r.xadd(AUDIT_LOG, fields, id=entry_id)
    rc, doc = admin_cli(stack, "audit", "--verify")
    assert rc == 3, doc
    assert doc["problems"] == [{"entry_id": target.decode(), "problem": "edited",
                                "check": "hash"}]


# == 9. post signatures ====================================================================


def test_post_signature_must_verify(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                    tmp_path: Path) -> None:
    state = enrolled(stack, swtpm, tmp_path).state()
    post_key = KeyBlob.from_bytes(bytes.fromhex(state.post_key))
    with Tpm(swtpm.tcti) as tpm, flows.connect(tpm, state, quiet) as ch:
        key = os.urandom(16)
        ts = int(time.time() * 1000)
        other_text = tpm.sign(post_key, post_digest(state.device_id, ts, key, "other text"))
        with pytest.raises(Refused) as exc:
            ch.request(Command.POST, text="x", ts=ts, key=os.urandom(16), signature=other_text)
        assert exc.value.code is ErrorCode.BAD_SIGNATURE
        with pytest.raises(Refused) as exc:
            ch.request(Command.POST, text="other text", ts=ts, key=os.urandom(16),
                       signature=other_text)  # right text, signed for another key
        assert exc.value.code is ErrorCode.BAD_SIGNATURE
        with pytest.raises(Refused) as exc:
            ch.request(Command.POST, text="other text", ts=ts - 1000, key=key,
                       signature=other_text)  # right text and key, shown at another time
        assert exc.value.code is ErrorCode.BAD_SIGNATURE
        assert store.count_posts() == 0
        good = flows.post(tpm, state, ch, "signed by the TPM")
    rc, doc = admin_cli(stack, "verify-post", str(good["post_id"]))
    assert rc == 0 and doc["verified"] is True, doc
    assert store.count_posts() == 1


# == 10. offline check and PCR-bound key ====================================================


def test_offline_check_reports_pcr_change(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                          tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    rc, doc = m.run("check")
    assert rc == EXIT_OK and doc["ok"] is True and doc["changed"] == [], doc
    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(16, b"x")
        current = tpm.pcr_read("sha256:16")[16].hex()
    rc, doc = m.run("check")
    assert rc == EXIT_REFUSED and doc["ok"] is False, doc
    assert [(c["pcr"], c["enrolled"], c["current"]) for c in doc["changed"]] == [
        (16, m.state().baseline["16"], current)]


def test_bound_key_does_not_unseal_after_pcr_change(stack: Stack, store: RedisStore,
                                                    swtpm: SwtpmProcess,
                                                    tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path, "dev1", "--bind-pcrs")
    assert m.run("status")[0] == EXIT_OK
    host, port = host_port(stack)
    with RecordingProxy.start(host, port) as proxy:
        st.save(m.home, dataclasses.replace(m.state(), server=proxy.address))
        assert m.run("status")[0] == EXIT_OK and proxy.accepted == 1
        with Tpm(swtpm.tcti) as tpm:
            tpm.extend_pcr(16, b"x")
        rc, doc = m.run("status")
        assert (rc, doc["error"]) == (EXIT_REFUSED, "pcr_mismatch"), doc
        assert "unseal" in doc["message"]
        assert proxy.accepted == 1  # no connection was even attempted
    device = store.get_device(m.state().device_id)
    assert isinstance(device, Device) and device.failures == 0
