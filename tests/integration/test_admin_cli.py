"""attestgate-admin against a real redis-server: every command, in process, with ``--json``."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zmq
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from services.registry.admin import main
from shared.audit import verify_chain
from shared.audit_anchor import CHECKPOINT_FILE, CheckpointFile
from shared.bus import codec
from shared.bus.interface import BusEvent
from shared.errors import AttestgateError, ErrorCode
from shared.keys import device_id_for, enroll_psk, fingerprint
from shared.posts import post_digest
from shared.records import Baseline, Device, DeviceStatus, Post
from shared.store.interface import PostQuota
from shared.store.redis_store import AUDIT_LOG, RedisStore
from shared.store.serialize import post_fields
from shared.timing import TOKEN_DEFAULT_TTL
from shared.tpm.constants import Alg, Curve
from shared.tpm.marshal import tpm2b
from shared.tpm.pcrs import PcrChange
from shared.tpm.structures import SYM_NULL, EccParms, EccPoint, Scheme, build_public
from shared.vault import StoreUsage, audit_key, init_server_home, server_static
from shared.wire import Event
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, RedisUnavailable

pytestmark = pytest.mark.integration

SELECTION = "sha256:0,7"
ENROLLED = {0: b"\x00" * 32, 7: b"\x07" * 32}
CHANGED = {0: b"\x00" * 32, 7: b"\xee" * 32}
PSK_SEALED = b"\x5a" * 60  # stands for the AES-GCM-sealed device PSK: must never be printed
NOW = 1_700_000_000.0


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@pytest.fixture
def home(redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean Redis and a fresh server home, wired through the environment."""
    redis_server.flushall()
    monkeypatch.setenv("ATTESTGATE_REDIS_URL", redis_server.url)
    monkeypatch.setenv("ATTESTGATE_SERVER_HOME", str(tmp_path / "server"))
    # Nobody listens here unless a test binds it.
    monkeypatch.setenv("ATTESTGATE_EVENTS", f"tcp://127.0.0.1:{free_port()}")
    init_server_home(tmp_path / "server", lambda: StoreUsage(0, 0))  # as the gateway's first start
    return tmp_path / "server"


@pytest.fixture
def store(redis_server: RedisServer, home: Path) -> Iterator[RedisStore]:
    """The store as a service in this server home sees it: appends leave checkpoints."""
    s = RedisStore(redis_server.url, audit_key=audit_key(home),
                   checkpoints=CheckpointFile(home / CHECKPOINT_FILE))
    yield s
    s.close()


@dataclass
class Run:
    code: int
    doc: Any
    err: str
    out: str


@pytest.fixture
def admin(capsys: pytest.CaptureFixture[str], home: Path) -> Any:
    def run(*argv: str, json_out: bool = True) -> Run:
        code = main([*argv, "--json"] if json_out else list(argv))
        cap = capsys.readouterr()
        doc = json.loads(cap.out) if json_out and cap.out else None
        return Run(code, doc, cap.err, cap.out)

    return run


# -- records -----------------------------------------------------------------------------------


def ecc_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    nums = key.public_key().public_numbers()
    pub = build_public(
        Alg.ECC, Alg.SHA256, 0x00040072, b"",
        parameters=EccParms(SYM_NULL, Scheme(Alg.NULL), Curve.NIST_P256, Scheme(Alg.NULL)),
        unique=EccPoint(nums.x.to_bytes(32, "big"), nums.y.to_bytes(32, "big")),
    )
    return pub.marshal()


def ek_certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ek")])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test ek ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(0xABC)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


def make_device(name: str = "alpha", *, status: DeviceStatus = DeviceStatus.ACTIVE,
                failures: int = 0, refused: dict[int, bytes] | None = None,
                post_public: bytes = b"\x00\x04post", ek_cert: bytes = b"") -> Device:
    noise = hashlib.sha256(name.encode()).digest()
    return Device(
        device_id=device_id_for(noise), name=name, noise_public=noise, status=status,
        enrolled_at=NOW, ek_public=b"\x00\x03ekx", ek_cert=ek_cert,
        ek_fingerprint=hashlib.sha256(b"ek" + noise).hexdigest(),
        ak_public=b"\x00\x02ak", srk_public=b"\x00\x03srk", post_public=post_public,
        baselines=(Baseline.of(SELECTION, ENROLLED),), psk_sealed=PSK_SEALED,
        failures=failures, last_attest_at=NOW + 60,
        last_diff=(PcrChange(7, ENROLLED[7], refused[7]),) if refused else (),
        last_refused=Baseline.of(SELECTION, refused) if refused else None,
    )


def assert_no_secret(text: str) -> None:
    assert PSK_SEALED.hex() not in text and "5a5a5a5a" not in text


# -- server-key, devices, show -----------------------------------------------------------------


def test_server_key_prints_the_gateway_fingerprint(admin: Any, home: Path) -> None:
    first = admin("server-key")
    assert first.code == 0
    assert first.doc["fingerprint"] == fingerprint(server_static(home).public)
    again = admin("server-key", json_out=False)
    assert again.code == 0 and again.out.strip() == first.doc["fingerprint"]
    assert (home / "noise-static.key").stat().st_mode & 0o077 == 0


def test_devices_lists_every_device_with_iso_times(admin: Any, store: RedisStore) -> None:
    assert admin("devices").doc["devices"] == []
    store.create_device(make_device("alpha"), None)
    store.create_device(make_device("beta", status=DeviceStatus.LOCKED, failures=3), None)
    run = admin("devices")
    assert run.code == 0
    rows = {d["name"]: d for d in run.doc["devices"]}
    assert rows["beta"] == {
        "name": "beta", "device_id": make_device("beta").device_id, "status": "locked",
        "failures": 3, "enrolled_at": "2023-11-14T22:13:20+00:00",
        "last_attest_at": "2023-11-14T22:14:20+00:00",
    }
    text = admin("devices", json_out=False).out
    assert text.splitlines()[0].split() == ["NAME", "DEVICE", "ID", "STATUS", "FAILURES",
                                            "ENROLLED", "LAST", "ATTESTATION"]
    assert_no_secret(run.out + text)


def test_show_by_name_or_id_gives_keys_pcrs_and_diff_without_secrets(
        admin: Any, store: RedisStore) -> None:
    post_key = ec.generate_private_key(ec.SECP256R1())
    dev = make_device("alpha", refused=CHANGED, failures=2, post_public=ecc_public(post_key),
                      ek_cert=ek_certificate())
    store.create_device(dev, None)
    by_name = admin("show", "alpha")
    by_id = admin("show", dev.device_id)
    assert by_name.code == by_id.code == 0 and by_name.doc == by_id.doc
    doc = by_name.doc
    assert doc["status"] == "active" and doc["failures"] == 2
    assert doc["selection"] == SELECTION
    assert doc["baselines"] == [{"id": Baseline.of(SELECTION, ENROLLED).baseline_id,
                                 "selection": SELECTION,
                                 "pcrs": {"0": "00" * 32, "7": "07" * 32}}]
    assert doc["last_refused"]["pcrs"]["7"] == "ee" * 32
    assert doc["last_diff"] == [{"pcr": 7, "enrolled": "07" * 32, "current": "ee" * 32}]
    keys = doc["keys"]
    assert keys["ek"]["fingerprint"] == dev.ek_fingerprint
    assert keys["ek"]["certificate"]["subject"] == "CN=test ek"
    assert keys["ek"]["certificate"]["issuer"] == "CN=test ek ca"
    assert keys["post"]["type"] == "ecc-p256" and len(keys["post"]["name"]) == 68
    assert "error" in keys["ak"]  # dummy bytes: reported, not a crash
    text = admin("show", "alpha", json_out=False)
    assert text.code == 0 and "last refused state" in text.out
    assert_no_secret(by_name.out + text.out)
    assert "psk" not in by_name.out.lower()


def test_unknown_device_is_refused_with_exit_3(admin: Any) -> None:
    for argv in (["show", "nobody"], ["approve", "nobody"], ["revoke", "nobody"],
                 ["unlock", "nobody"], ["audit", "nobody"]):
        run = admin(*argv)
        assert run.code == 3, argv
        assert run.doc == {"ok": False, "error": "unknown_device", "message": run.doc["message"]}
        assert run.err.startswith("attestgate-admin: ") and "(unknown_device)" in run.err


# -- approve, revoke, unlock -------------------------------------------------------------------


def test_approve_adopts_the_refused_state_and_unlocks(admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha", status=DeviceStatus.LOCKED, failures=3, refused=CHANGED)
    store.create_device(dev, None)
    run = admin("approve", "alpha")
    assert run.code == 0 and run.doc["status"] == "active"
    after = store.get_device(dev.device_id)
    assert after is not None
    # --replace is the default: the refused state is now the only accepted one.
    assert [b.baseline_id for b in after.baselines] == [Baseline.of(SELECTION, CHANGED).baseline_id]
    assert after.baselines[0].as_dict() == CHANGED and after.baselines[0].approved_at > 0
    assert after.failures == 0 and after.status is DeviceStatus.ACTIVE
    assert after.last_refused is None
    (entry,) = store.read_audit(dev.device_id)
    assert entry.event == "approved"
    detail = json.loads(entry.detail)
    assert detail["pcrs"] == {"0": "00" * 32, "7": "ee" * 32} and detail["from"] == "locked"
    # Approving again: nothing refused any more.
    again = admin("approve", dev.device_id)
    assert again.code == 3 and again.doc["error"] == "not_found"


def test_approve_keeps_a_revoked_device_revoked(admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha", status=DeviceStatus.REVOKED, failures=3, refused=CHANGED)
    store.create_device(dev, None)
    assert admin("approve", "alpha").code == 0
    after = store.get_device(dev.device_id)
    assert after is not None and after.status is DeviceStatus.REVOKED
    assert len(after.baselines) == 1


def test_approve_without_a_refused_state_is_refused(admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha", status=DeviceStatus.LOCKED, failures=3)
    store.create_device(dev, None)
    run = admin("approve", "alpha")
    assert run.code == 3 and run.doc["error"] == "not_found"
    assert "(not_found)" in run.err
    assert store.get_device(dev.device_id) == dev  # unchanged
    assert store.read_audit() == []


class EventSink:
    """A gateway's events endpoint: a SUB bound on a free port, polled in a thread.

    It must be polled while the publisher connects: a bound socket attaches a new
    peer (and sends it the subscription) only when its owner thread touches it.
    """

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.received = threading.Event()  # set on the first frame
        self.endpoint = ""
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventSink:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            self.endpoint = f"tcp://127.0.0.1:{sub.bind_to_random_port('tcp://127.0.0.1')}"
            self._ready.set()
            while not self._stop.is_set():
                if sub.poll(20, zmq.POLLIN):
                    self.frames.append(sub.recv())
                    self.received.set()
        finally:
            sub.close(0)
            ctx.term()


def test_revoke_sets_status_audits_and_tells_the_gateway(
        admin: Any, store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    with EventSink() as sink:
        monkeypatch.setenv("ATTESTGATE_EVENTS", sink.endpoint)
        run = admin("revoke", "alpha")
        assert sink.received.wait(5)
    assert run.code == 0, run.err
    assert run.doc["gateways_notified"] == 1 and run.err == ""
    assert [codec.decode(f) for f in sink.frames] == [
        BusEvent(Event.DEVICE_REVOKED.value, {"device_id": dev.device_id})]
    after = store.get_device(dev.device_id)
    assert after is not None and after.status is DeviceStatus.REVOKED
    assert [e.event for e in store.read_audit(dev.device_id)] == ["revoked"]
    # A revoked device cannot be unlocked.
    unlock = admin("unlock", "alpha")
    assert unlock.code == 3 and unlock.doc["error"] == "revoked"


def test_revoke_with_no_gateway_listening_warns_but_succeeds(
        admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    run = admin("revoke", "alpha")
    assert run.code == 0 and run.doc["gateways_notified"] == 0
    assert "warning" in run.err and "next connect" in run.err
    after = store.get_device(dev.device_id)
    assert after is not None and after.status is DeviceStatus.REVOKED


@pytest.mark.parametrize("status", [DeviceStatus.LOCKED, DeviceStatus.REENROLL])
def test_unlock_makes_the_device_active(admin: Any, store: RedisStore,
                                        status: DeviceStatus) -> None:
    dev = make_device("alpha", status=status, failures=4)
    store.create_device(dev, None)
    run = admin("unlock", "alpha")
    assert run.code == 0 and run.doc["changed"] is True
    after = store.get_device(dev.device_id)
    assert after is not None and after.status is DeviceStatus.ACTIVE and after.failures == 0
    (entry,) = store.read_audit(dev.device_id)
    assert entry.event == "unlocked" and json.loads(entry.detail)["from"] == status.value


# -- tokens ------------------------------------------------------------------------------------


def test_token_create_stores_the_psk_the_client_will_derive(
        admin: Any, store: RedisStore, redis_server: RedisServer) -> None:
    run = admin("token", "create", "--ttl", "600")
    assert run.code == 0
    token = run.doc["token"]
    token_id, _, secret = token.partition(".")
    assert len(bytes.fromhex(token_id)) == 8 and token_id == run.doc["token_id"]
    assert len(secret) == 43 and "=" not in secret and "." not in secret
    stored = store.get_token(token_id, now=time.time())
    assert stored is not None
    assert stored.psk == enroll_psk(secret.encode()).value
    assert stored.expires_at - stored.created_at == pytest.approx(600)
    ttl_ms = store.raw().pttl("ag:{reg}:tok:" + token_id)
    assert 590_000 < ttl_ms <= 600_000
    (entry,) = store.read_audit()
    assert entry.event == "token_created" and json.loads(entry.detail)["token_id"] == token_id
    assert secret not in entry.detail
    # The secret is never shown again.
    listing = admin("audit", json_out=False).out + admin("audit").out
    assert secret not in listing


def test_token_create_default_ttl(admin: Any, store: RedisStore) -> None:
    run = admin("token", "create")
    stored = store.get_token(run.doc["token_id"], now=0)
    assert stored is not None
    assert stored.expires_at - stored.created_at == pytest.approx(TOKEN_DEFAULT_TTL)


# -- audit -------------------------------------------------------------------------------------


def _fill_audit(store: RedisStore) -> list[str]:
    for i in range(4):
        store.append_audit("test", "dev" + str(i % 2), {"n": i}, NOW + i)
    return [e.entry_id for e in store.read_audit()]


def test_audit_lists_and_verifies_a_clean_log(admin: Any, store: RedisStore) -> None:
    ids = _fill_audit(store)
    run = admin("audit", "--verify")
    assert run.code == 0 and run.doc["problems"] == [] and run.doc["checked"] == 4
    assert [e["entry_id"] for e in run.doc["entries"]] == ids
    assert run.doc["entries"][0]["detail"] == {"n": 0}
    limited = admin("audit", "--limit", "2")
    assert [e["entry_id"] for e in limited.doc["entries"]] == ids[2:]
    text = admin("audit", "--verify", json_out=False)
    assert text.code == 0 and "verified" in text.out


def test_audit_verify_names_an_edited_entry(admin: Any, store: RedisStore) -> None:
    ids = _fill_audit(store)
    r = store.raw()
    rows = r.xrange(AUDIT_LOG)
    r.delete(AUDIT_LOG)
    for entry_id, fields in rows:  # same ids and fields, one detail changed
        edited = {**fields, b"detail": b'{"n":99}'} if entry_id.decode() == ids[1] else fields
        r.xadd(AUDIT_LOG, edited, id=entry_id)
    run = admin("audit", "--verify")
    assert run.code == 3 and run.doc["ok"] is False
    assert run.doc["problems"] == [{"entry_id": ids[1], "problem": "edited", "check": "hash"}]
    assert "(audit_broken)" in run.err
    text = admin("audit", "--verify", json_out=False)
    assert text.code == 3 and ids[1] in text.out and "edited" in text.out


def test_audit_verify_names_the_entry_after_a_deleted_one(admin: Any, store: RedisStore) -> None:
    ids = _fill_audit(store)
    store.raw().xdel(AUDIT_LOG, ids[2])
    run = admin("audit", "--verify")
    assert run.code == 3
    assert run.doc["problems"] == [
        {"entry_id": ids[3], "problem": "missing or reordered", "check": "link"}]


def test_audit_verify_catches_a_cut_tail(admin: Any, store: RedisStore, home: Path) -> None:
    ids = _fill_audit(store)
    store.raw().xdel(AUDIT_LOG, ids[3])
    run = admin("audit", "--verify")
    assert run.code == 3
    assert [(p["entry_id"], p["check"]) for p in run.doc["problems"]] == [
        (ids[2], "head"), (ids[2], "truncated")]
    # agrees with the library
    assert verify_chain(store.read_audit(), store.audit_head(), audit_key(home))


def test_audit_of_one_device_verifies_the_whole_chain(admin: Any, store: RedisStore) -> None:
    store.create_device(make_device("alpha"), None)
    dev_id = make_device("alpha").device_id
    store.append_audit("other", "x", {}, NOW)
    store.append_audit("mine", dev_id, {}, NOW + 1)
    run = admin("audit", "alpha", "--verify")
    assert run.code == 0 and run.doc["checked"] == 2
    assert [e["event"] for e in run.doc["entries"]] == ["mine"]


# -- posts, purge, store unreachable, usage ----------------------------------------------------


def _signed_post(store: RedisStore, dev: Device, key: ec.EllipticCurvePrivateKey,
                 text: str, *, received_at: float = NOW) -> str:
    idem = os.urandom(16)
    ts = int(NOW * 1000)
    der = key.sign(post_digest(dev.device_id, ts, idem, text),
                   ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    sig = struct.pack(">HH", Alg.ECDSA, Alg.SHA256) + tpm2b(r.to_bytes(32, "big")) + tpm2b(
        s.to_bytes(32, "big"))
    post = Post("", dev.device_id, text, ts, idem, sig, received_at)
    post_id, _ = store.add_post(idem + dev.device_id.encode(), post_fields(post),
                                device_id=dev.device_id, now=received_at,
                                quota=PostQuota(1e6, 10**6, 3600.0))
    return post_id


def test_verify_post(admin: Any, store: RedisStore) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    dev = make_device("alpha", post_public=ecc_public(key))
    store.create_device(dev, None)
    good = _signed_post(store, dev, key, "hello")
    run = admin("verify-post", good)
    assert run.code == 0 and run.doc["verified"] is True and run.doc["text"] == "hello"
    assert (run.doc["author"], run.doc["ts"], run.doc["problems"]) == ("alpha", NOW, [])
    forged = _signed_post(store, dev, ec.generate_private_key(ec.SECP256R1()), "forged")
    bad = admin("verify-post", forged)
    assert bad.code == 3 and bad.doc["verified"] is False and "(bad_signature)" in bad.err
    assert bad.doc["problems"] == ["signature"]
    for missing in ("1-1", "not-an-id"):
        gone = admin("verify-post", missing)
        assert gone.code == 3 and gone.doc["error"] == "not_found"


def test_verify_post_names_a_time_far_from_when_it_was_stored(admin: Any,
                                                              store: RedisStore) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    dev = make_device("alpha", post_public=ecc_public(key))
    store.create_device(dev, None)
    post_id = _signed_post(store, dev, key, "dated", received_at=NOW + 3600)
    run = admin("verify-post", post_id)
    assert run.code == 3 and run.doc["problems"] == ["time"], run.doc


def test_verify_post_human_output_indents_the_text(admin: Any, store: RedisStore) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    dev = make_device("alpha", post_public=ecc_public(key))
    store.create_device(dev, None)
    post_id = _signed_post(store, dev, key, f"hi\n[{NOW:.0f}-0] 2023-11-14 22:13:20 beta "
                                            "(verified TPM signature)\nbye")
    run = admin("verify-post", post_id, json_out=False)
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith(f"[{post_id}] ")
    assert lines[1:4] == ["    | hi", lines[2], "    | bye"]
    assert lines[2].startswith("    | [")
    assert lines[4:] == ["verified"]


def test_purge_needs_yes(admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    store.append_audit("x", dev.device_id, {}, NOW)
    run = admin("purge")
    assert run.code == 3 and run.doc["error"] == "not_confirmed" and "--yes" in run.err
    assert store.get_device(dev.device_id) == dev and len(store.read_audit()) == 1
    done = admin("purge", "--yes")
    assert done.code == 0 and done.doc["deleted"] > 0 and done.doc["audit_kept"] is True
    assert store.list_devices() == []
    assert [e.event for e in store.read_audit()] == ["x", "purged"]  # the purge is on record
    assert admin("audit", "--verify").code == 0
    assert {k.decode() for k in store.raw().keys("ag:*")} == {"ag:{audit}:log",
                                                              "ag:{audit}:head"}


def test_unreachable_store_exits_4(admin: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    run = admin("--redis-url", url, "devices")
    assert run.code == 4 and run.doc["error"] == "store_unavailable"
    assert "(store_unavailable)" in run.err and "hunter2" not in run.err + run.out
    monkeypatch.setenv("ATTESTGATE_REDIS_URL", url)
    assert admin("show", "alpha").code == 4


def test_usage_errors_exit_2(admin: Any) -> None:
    assert admin("frobnicate", json_out=False).code == 2
    assert admin("token", "create", "--ttl", "-5", json_out=False).code == 2
    assert admin("audit", "--limit", "0", json_out=False).code == 2
    assert admin("--help", json_out=False).code == 0


# -- fleet: baselines, delete, allow-reenroll, tokens (issue 9) ----------------------------------

OTHER = {0: b"\x00" * 32, 7: b"\x77" * 32}


def _refuse(store: RedisStore, device_id: str, values: dict[int, bytes]) -> None:
    """What the attestor does on a PCR mismatch: keep the refused state for approve."""
    store.update_device(device_id, lambda d: dataclasses.replace(
        d, last_refused=Baseline.of(SELECTION, values), failures=d.failures + 1))


def test_approve_keep_keeps_the_old_baselines(admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha", refused=CHANGED)
    store.create_device(dev, None)
    run = admin("approve", "alpha", "--keep")
    assert run.code == 0 and run.doc["mode"] == "keep" and run.doc["baselines"] == 2, run.doc
    after = store.get_device(dev.device_id)
    assert after is not None
    assert [b.as_dict() for b in after.baselines] == [ENROLLED, CHANGED]
    assert all(b.expires_at == 0 for b in after.baselines)


def test_approve_replace_with_grace_expires_the_old_baseline(
        admin: Any, store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTESTGATE_BASELINE_GRACE", "3600")
    dev = make_device("alpha", refused=CHANGED)
    store.create_device(dev, None)
    run = admin("approve", "alpha", "--replace")
    old_id = Baseline.of(SELECTION, ENROLLED).baseline_id
    assert run.code == 0 and run.doc["superseded"] == [old_id] and run.doc["grace"] == 3600
    after = store.get_device(dev.device_id)
    assert after is not None
    new, old = after.baselines
    assert new.as_dict() == CHANGED and new.expires_at == 0
    assert old.as_dict() == ENROLLED and old.live(time.time())
    assert not old.live(old.expires_at) and old.expires_at - time.time() <= 3600
    rows = {b["id"]: b for b in admin("baseline", "list", "alpha").doc["baselines"]}
    assert rows[old_id]["state"] == "superseded" and rows[old_id]["expires_at"]
    assert rows[new.baseline_id]["state"] == "current" and rows[new.baseline_id]["approved_at"]


def test_bad_grace_setting_exits_2(admin: Any, store: RedisStore,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTESTGATE_BASELINE_GRACE", "soon")
    store.create_device(make_device("alpha", refused=CHANGED), None)
    run = admin("approve", "alpha")
    assert run.code == 2 and run.doc["error"] == "bad_setting"


def test_baseline_list_and_remove(admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha", refused=CHANGED)
    store.create_device(dev, None)
    assert admin("approve", "alpha", "--keep").code == 0
    _refuse(store, dev.device_id, OTHER)
    assert admin("approve", "alpha", "--keep").code == 0
    listed = admin("baseline", "list", "alpha").doc["baselines"]
    ids = [b["id"] for b in listed]
    assert ids == [Baseline.of(SELECTION, v).baseline_id for v in (ENROLLED, CHANGED, OTHER)]
    assert listed[1]["pcrs"] == {"0": "00" * 32, "7": "ee" * 32}
    assert [b["state"] for b in listed] == ["current"] * 3
    # The ids are stable: listing again gives the same ones.
    assert [b["id"] for b in admin("baseline", "list", dev.device_id).doc["baselines"]] == ids

    unknown = admin("baseline", "remove", "alpha", ids[0], "0123456789ab")
    assert unknown.code == 3 and unknown.doc["error"] == "not_found"
    assert len(store.get_device(dev.device_id).baselines) == 3  # type: ignore[union-attr]

    run = admin("baseline", "remove", "alpha", ids[0], ids[2])
    assert run.code == 0 and run.doc["removed"] == sorted([ids[0], ids[2]])
    after = store.get_device(dev.device_id)
    assert after is not None and [b.baseline_id for b in after.baselines] == [ids[1]]
    last = admin("baseline", "remove", "alpha", ids[1])
    assert last.code == 3 and last.doc["error"] == "last_baseline"
    assert store.get_device(dev.device_id) == after
    events = [(e.event, json.loads(e.detail)) for e in store.read_audit(dev.device_id)]
    assert [e for e, _ in events] == ["approved", "approved", "baseline_removed"]
    assert events[-1][1]["removed"] == sorted([ids[0], ids[2]])
    assert admin("audit", "--verify").code == 0


def test_delete_needs_yes_keeps_audit_and_frees_name_and_ek(admin: Any,
                                                            store: RedisStore) -> None:
    dev = make_device("alpha", status=DeviceStatus.REVOKED)
    store.create_device(dev, None)
    store.append_audit("revoked", dev.device_id, {}, NOW)
    store.advance_connect_ts(dev.device_id, 5)
    run = admin("delete", "alpha")
    assert run.code == 3 and run.doc["error"] == "not_confirmed" and "--yes" in run.err
    assert store.get_device(dev.device_id) == dev
    done = admin("delete", "alpha", "--yes")
    assert done.code == 0 and done.doc["was"] == "revoked", done.doc
    assert store.get_device(dev.device_id) is None
    assert store.device_by_name("alpha") is None and store.device_by_ek(dev.ek_fingerprint) is None
    assert store.device_by_noise(dev.noise_public) is None
    assert store.last_connect_ts(dev.device_id) == -1
    assert [e.event for e in store.read_audit(dev.device_id)] == ["revoked", "deleted"]
    assert admin("audit", "--verify").code == 0
    # The same EK and name enroll again (the registry's create_device).
    store.create_device(dataclasses.replace(dev, status=DeviceStatus.ACTIVE), None)
    assert admin("delete", "nobody", "--yes").code == 3


def test_allow_reenroll_lets_the_same_ek_replace_the_record(admin: Any,
                                                           store: RedisStore) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    newer = dataclasses.replace(make_device("alpha-new"), ek_fingerprint=dev.ek_fingerprint)
    with pytest.raises(AttestgateError) as refused:
        store.create_device(newer, None, dev.device_id)  # ACTIVE: no replacement
    assert refused.value.code is ErrorCode.ALREADY_ENROLLED
    run = admin("allow-reenroll", "alpha")
    assert run.code == 0 and run.doc["status"] == "reenroll" and run.doc["from"] == "active"
    assert [e.event for e in store.read_audit(dev.device_id)] == ["reenroll_allowed"]
    store.create_device(newer, None, dev.device_id)
    assert store.get_device(dev.device_id) is None
    assert store.device_by_ek(dev.ek_fingerprint) == newer
    assert store.device_by_name("alpha") is None


def test_replacing_keeps_the_name_for_the_same_device_only(store: RedisStore) -> None:
    dev = make_device("alpha", status=DeviceStatus.REENROLL)
    other = make_device("beta")
    store.create_device(dev, None)
    store.create_device(other, None)
    taken = dataclasses.replace(make_device("x"), name="BETA", ek_fingerprint=dev.ek_fingerprint)
    with pytest.raises(AttestgateError) as exc:
        store.create_device(taken, None, dev.device_id)
    assert exc.value.code is ErrorCode.NAME_TAKEN
    same = dataclasses.replace(make_device("x"), name="Alpha", ek_fingerprint=dev.ek_fingerprint)
    store.create_device(same, None, dev.device_id)
    assert store.device_by_name("alpha") == same and len(store.list_devices()) == 2


def test_token_list_and_revoke(admin: Any, store: RedisStore) -> None:
    a = admin("token", "create").doc
    b = admin("token", "create", "--ttl", "60").doc
    c = admin("token", "create").doc
    # c is used by an enrollment (the registry's create_device and audit entry).
    store.create_device(make_device("alpha"), c["token_id"])
    store.append_audit("enrolled", make_device("alpha").device_id,
                       {"name": "alpha", "token": c["token_id"]}, time.time())
    listed = admin("token", "list")
    assert listed.code == 0
    rows = {t["token_id"]: t for t in listed.doc["tokens"]}
    assert set(rows) == {a["token_id"], b["token_id"], c["token_id"]}
    assert rows[a["token_id"]]["state"] == "unused" and rows[a["token_id"]]["created_at"]
    assert rows[a["token_id"]]["expires_at"] == a["expires_at"]
    assert rows[c["token_id"]]["state"] == "used"
    assert rows[c["token_id"]]["device_id"] == make_device("alpha").device_id
    for secret in (a["token"], b["token"], c["token"]):  # never a secret
        assert secret.split(".")[1] not in json.dumps(listed.doc)
        assert secret.split(".")[1] not in admin("token", "list", json_out=False).out

    run = admin("token", "revoke", a["token_id"])
    assert run.code == 0 and run.doc["state"] == "revoked"
    assert store.get_token(a["token_id"], time.time()) is None
    again = admin("token", "revoke", a["token_id"])
    assert again.code == 3 and again.doc["error"] == "not_found"
    used = admin("token", "revoke", c["token_id"])
    assert used.code == 3
    assert admin("token", "revoke", "not-a-token").code == 2
    rows = {t["token_id"]: t for t in admin("token", "list").doc["tokens"]}
    assert rows[a["token_id"]]["state"] == "revoked"
    assert rows[b["token_id"]]["state"] == "unused"
    assert "token_revoked" in [e.event for e in store.read_audit()]
    assert admin("audit", "--verify").code == 0
