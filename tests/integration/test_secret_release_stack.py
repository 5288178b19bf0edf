"""Secret release (issue 11) against the whole stack: real redis, gateway, workers, swtpm.

Each test runs its own stack and its own TPMs. The admin CLI stores a secret; the
device fetches it with ``attestgate secret get`` inside an attested session; the
server wraps a fresh AES key to the device's certified SRK. Tests grep the Redis
contents, the service logs and the client home for the secret's bytes.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tpm2_pytss import utils
from tpm2_pytss.constants import TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPM2B_SENSITIVE

from client import flows
from client import state as st
from client.channel import NetworkError, Refused
from client.cli import EXIT_OK, EXIT_REFUSED, main
from client.tpm import Tpm
from services.registry.admin import run as admin_run
from shared.codec import pack, unpack_map
from shared.errors import AttestgateError, ErrorCode
from shared.secrets import MAX_SECRET, Part
from shared.store.redis_store import RedisStore
from shared.tpm.credential import wrap_sealed_data
from shared.tpm.structures import parse_public
from shared.wire import Command
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration


def _quiet(_line: str) -> None:
    pass


@dataclass
class World:
    stack: Stack
    tpm: SwtpmProcess
    home: Path
    state: st.ClientState
    tmp: Path

    def admin(self, *argv: str) -> tuple[int, dict[str, Any], str]:
        out, err = io.StringIO(), io.StringIO()
        rc = admin_run([*argv, "--json"], env=self.stack.env, stdout=out, stderr=err,
                       clock=lambda: 1_800_000_000.0, rng=os.urandom)
        return rc, json.loads(out.getvalue()), err.getvalue()

    def put(self, name: str, value: bytes, action: str = "put") -> dict[str, Any]:
        src = self.tmp / f"value-{name}"
        src.write_bytes(value)
        rc, doc, err = self.admin("secret", action, self.state.name, name, "--file", str(src))
        src.unlink()
        assert rc == 0, (doc, err)
        return doc

    def get(self, name: str, out: Path, home: Path | None = None,
            tcti: str | None = None) -> int:
        return main(["secret", "get", name, "--out", str(out), "--tpm", tcti or self.tpm.tcti,
                     "--home", str(home or self.home), "-q"])

    def part(self, name: str, offset: int = 0) -> Part:
        with Tpm(self.tpm.tcti) as tpm, flows.connect(tpm, self.state, _quiet) as ch:
            return Part.from_body(ch.request(Command.SECRET_GET, name=name, offset=offset))

    def audit(self) -> list[tuple[str, dict[str, Any]]]:
        store = RedisStore(self.stack.redis.url)
        try:
            return [(e.event, json.loads(e.detail)) for e in store.read_audit(self.state.device_id)]
        finally:
            store.close()


@pytest.fixture
def world(tmp_path: Path, swtpm: SwtpmProcess) -> Iterator[World]:
    with Stack.start(tmp_path / "stack") as stack:
        home = tmp_path / "home"
        with Tpm(swtpm.tcti) as tpm:
            state = flows.enroll(tpm, home, stack.server, "alpha", None,
                                 flows.ServerPin(None, True), False, _quiet)
        yield World(stack, swtpm, home, state, tmp_path)


def _redis_dump(stack: Stack) -> bytes:
    store = RedisStore(stack.redis.url)
    try:
        r = store.raw()
        out = []
        for key in r.scan_iter(match="*"):
            kind = r.type(key)
            if kind == b"string":
                out.append(r.get(key))
            elif kind == b"hash":
                out += [k + v for k, v in r.hgetall(key).items()]
            elif kind == b"stream":
                out += [repr(e).encode() for e in r.xrange(key)]
            out.append(r.dump(key) or b"")
        return b"".join(out)
    finally:
        store.close()


def _forms(secret: bytes) -> list[bytes]:
    """The secret as raw bytes, hex and base64 (any 24-byte window would betray it)."""
    window = secret[:24]
    return [window, window.hex().encode(), base64.b64encode(window)[:24],
            base64.urlsafe_b64encode(window)[:24]]


def _tree(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file())


# -- the right device gets exactly the bytes ----------------------------------------------------


@pytest.mark.parametrize("size", [37, MAX_SECRET])
def test_right_device_gets_exactly_the_bytes(world: World, size: int) -> None:
    secret = os.urandom(size)
    world.put("disk-key", secret)
    out = world.tmp / "out" / "disk-key"
    out.parent.mkdir()
    assert world.get("disk-key", out) == EXIT_OK
    assert out.read_bytes() == secret
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert [p.name for p in out.parent.iterdir()] == ["disk-key"]  # no temporary left
    rc, doc, _ = world.admin("secret", "list", "alpha")
    assert rc == 0
    assert [(r["name"], r["version"], r["size"]) for r in doc["secrets"]] == [
        ("disk-key", 1, size)]
    events = world.audit()
    released = [d for e, d in events if e == "secret_released"]
    parts = 1 if size <= 48 * 1024 else 2
    assert [d["offset"] for d in released] == [i * 48 * 1024 for i in range(parts)]
    assert all(d["name"] == "disk-key" and d["version"] == 1 for d in released)
    assert ("secret_put", {"name": "disk-key", "version": 1, "size": size,
                           "bind_pcrs": ""}) in events


def test_secret_never_in_clear_in_redis_logs_or_client_home(world: World) -> None:
    secret = os.urandom(64)
    world.put("api-key", secret)
    out = world.tmp / "api-key.out"
    assert world.get("api-key", out) == EXIT_OK
    assert out.read_bytes() == secret
    rc, doc, _ = world.admin("secret", "list")
    assert rc == 0 and doc["secrets"][0]["size"] == 64
    rc, audit_doc, _ = world.admin("audit")
    haystacks = {
        "redis": _redis_dump(world.stack),
        "logs": _tree(world.stack.directory / "logs"),
        "client home": _tree(world.home),
        "admin output": json.dumps([doc, audit_doc]).encode(),
    }
    for where, data in haystacks.items():
        for form in _forms(secret):
            assert form not in data, where


def test_unknown_secret_is_refused_and_audited(world: World) -> None:
    out = world.tmp / "nothing"
    assert world.get("missing", out) == EXIT_REFUSED
    assert not out.exists()
    assert ("secret_refused", {"name": "missing", "code": "not_found"}) in world.audit()


# -- only this TPM ------------------------------------------------------------------------------


def test_copy_of_client_home_on_another_tpm_cannot_unwrap(
        world: World, swtpm_factory: SwtpmFactory,
        swtpm_template_other_ca: TemplateTpm) -> None:
    secret = os.urandom(100)
    world.put("vpn", secret)
    other = swtpm_factory(swtpm_template_other_ca)
    # The whole home copied next to another TPM: it does not even get a session.
    copy = world.tmp / "home-copy"
    shutil.copytree(world.home, copy)
    out = world.tmp / "stolen"
    assert world.get("vpn", out, home=copy, tcti=other.tcti) != EXIT_OK
    assert not out.exists()
    # A part released to this device, handed to the other TPM, does not import.
    part = world.part("vpn")
    with Tpm(other.tcti) as tpm, pytest.raises(AttestgateError) as exc:
        tpm.unwrap_secret_key(part.public, part.duplicate, part.seed)
    assert exc.value.code is ErrorCode.CREDENTIAL_FAILED
    # ...while the right TPM opens the very same part.
    with Tpm(world.tpm.tcti) as tpm:
        key = tpm.unwrap_secret_key(part.public, part.duplicate, part.seed)
    assert part.decrypt(key, world.state.device_id, "vpn") == secret


def test_tampered_part_fails_with_our_error_code(world: World) -> None:
    secret = os.urandom(300)
    world.put("blob", secret)
    part = world.part("blob")

    def flip(b: bytes, i: int) -> bytes:
        return b[:i] + bytes([b[i] ^ 1]) + b[i + 1:]

    with Tpm(world.tpm.tcti) as tpm:
        for field in ("duplicate", "seed"):
            bad = dataclasses.replace(part, **{field: flip(getattr(part, field), 40)})
            with pytest.raises(AttestgateError) as exc:
                tpm.unwrap_secret_key(bad.public, bad.duplicate, bad.seed)
            assert exc.value.code is ErrorCode.CREDENTIAL_FAILED, field
        key = tpm.unwrap_secret_key(part.public, part.duplicate, part.seed)
    for bad in (dataclasses.replace(part, ciphertext=flip(part.ciphertext, 5)),
                dataclasses.replace(part, nonce=flip(part.nonce, 0))):
        with pytest.raises(AttestgateError) as exc:
            bad.decrypt(key, world.state.device_id, "blob")
        assert exc.value.code is ErrorCode.CREDENTIAL_FAILED
    with pytest.raises(AttestgateError) as exc:  # the same part claimed for another name
        part.decrypt(key, world.state.device_id, "other")
    assert exc.value.code is ErrorCode.CREDENTIAL_FAILED


def test_rotate_bumps_the_version_and_old_parts_cannot_pass_for_it(world: World) -> None:
    old, new = os.urandom(50), os.urandom(70)
    world.put("token", old)
    old_part = world.part("token")
    doc = world.put("token", new, action="rotate")
    assert doc["secrets"][0]["version"] == 2
    out = world.tmp / "token.out"
    assert world.get("token", out) == EXIT_OK
    assert out.read_bytes() == new
    with Tpm(world.tpm.tcti) as tpm:
        key = tpm.unwrap_secret_key(old_part.public, old_part.duplicate, old_part.seed)
    relabelled = dataclasses.replace(old_part, version=2, total=70)
    with pytest.raises(AttestgateError) as exc:
        relabelled.decrypt(key, world.state.device_id, "token")
    assert exc.value.code is ErrorCode.CREDENTIAL_FAILED
    events = [e for e, _ in world.audit()]
    assert "secret_rotated" in events
    # put refuses to overwrite; rm removes, and then nothing is released.
    src = world.tmp / "v"
    src.write_bytes(b"x")
    rc, doc, _ = world.admin("secret", "put", "alpha", "token", "--file", str(src))
    assert (rc, doc["error"]) == (3, "exists")
    rc, doc, _ = world.admin("secret", "rm", "alpha", "token")
    assert rc == 0 and doc["version"] == 2
    assert world.get("token", world.tmp / "gone") == EXIT_REFUSED


def test_oversized_secret_is_refused_and_nothing_stored(world: World) -> None:
    src = world.tmp / "big"
    src.write_bytes(os.urandom(MAX_SECRET + 1))
    rc, doc, _ = world.admin("secret", "put", "alpha", "big", "--file", str(src))
    assert (rc, doc["error"]) == (2, "too_large")
    rc, doc, _ = world.admin("secret", "list", "alpha")
    assert doc["secrets"] == []


# -- revoked gets nothing -----------------------------------------------------------------------


def test_revoked_device_gets_nothing(world: World) -> None:
    world.put("disk-key", os.urandom(32))
    rc, _, _ = world.admin("revoke", "alpha")
    assert rc == 0
    out = world.tmp / "after-revoke"
    assert world.get("disk-key", out) == EXIT_REFUSED
    assert not out.exists()
    assert "secret_released" not in [e for e, _ in world.audit()]


def test_revoked_mid_session_gets_nothing(world: World) -> None:
    """A session opened before the revocation is closed or refused, never served."""
    world.put("disk-key", os.urandom(32))
    with Tpm(world.tpm.tcti) as tpm, flows.connect(tpm, world.state, _quiet) as ch:
        rc, _, _ = world.admin("revoke", "alpha")
        assert rc == 0
        with pytest.raises((Refused, NetworkError)):
            ch.request(Command.SECRET_GET, name="disk-key", offset=0)
    assert "secret_released" not in [e for e, _ in world.audit()]


# -- the wrap itself, cross-checked with tpm2_pytss.utils.wrap --------------------------------


def test_sealed_data_wrap_matches_tpm2_pytss_and_imports(swtpm: SwtpmProcess) -> None:
    key = os.urandom(32)
    with Tpm(swtpm.tcti) as tpm:
        srk_public = tpm.srk_public()
        public, duplicate, seed = wrap_sealed_data(srk_public, key, os.urandom)
        assert tpm.unwrap_secret_key(public, duplicate, seed) == key
        # The reference implementation's sealed-data object, wrapped by utils.wrap.
        sens, ref_pub = TPM2B_SENSITIVE.keyedhash_from_secret(
            key, objectAttributes=TPMA_OBJECT.USERWITHAUTH)
        srk, _ = TPM2B_PUBLIC.unmarshal(srk_public)
        _, ref_dup, ref_seed = utils.wrap(srk.publicArea, ref_pub, sens)
        assert tpm.unwrap_secret_key(bytes(ref_pub.marshal()), bytes(ref_dup.marshal()),
                                     bytes(ref_seed.marshal())) == key
    ours, ref = parse_public(public), parse_public(bytes(ref_pub.marshal()))
    assert (ours.type, ours.name_alg, ours.attributes, ours.parameters) == (
        ref.type, ref.name_alg, ref.attributes, ref.parameters)


# -- --bind-pcrs: PolicyAuthorize, approve, offline unseal ----------------------------------------

BOUND_SELECTION = "sha256:0,7,16"  # the attestation selection of this stack, PCR 16 included


@pytest.fixture
def bound_world(tmp_path: Path, swtpm: SwtpmProcess) -> Iterator[World]:
    settings = {"ATTESTGATE_PCR_SELECTION": BOUND_SELECTION}
    with Stack.start(tmp_path / "stack", settings=settings) as stack:
        home = tmp_path / "home"
        with Tpm(swtpm.tcti) as tpm:
            state = flows.enroll(tpm, home, stack.server, "alpha", None,
                                 flows.ServerPin(None, True), False, _quiet)
        assert state.selection == BOUND_SELECTION
        yield World(stack, swtpm, home, state, tmp_path)


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    rc = main([*argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_bind_pcrs_changed_pcr_cannot_unseal_until_approved(
        bound_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = bound_world
    secret = os.urandom(48 * 1024 + 5)  # two parts, each its own PCR-bound key object
    src = w.tmp / "value"
    src.write_bytes(secret)
    rc, doc, err = w.admin("secret", "put", "alpha", "disk-key", "--file", str(src),
                           "--bind-pcrs")
    src.unlink()
    assert rc == 0, (doc, err)
    assert doc["secrets"][0]["bind_pcrs"] == BOUND_SELECTION
    assert doc["secrets"][0]["policies"] == 1
    tpm_args = ["--tpm", w.tpm.tcti, "--home", str(w.home)]
    out = w.tmp / "out"
    assert w.get("disk-key", out) == EXIT_OK
    assert out.read_bytes() == secret
    out.unlink()
    # The cache opens offline (no server involved) while the state is approved.
    w.stack.stop()
    rc, got = _cli_json(["secret", "unseal", "disk-key", "--out", str(out), *tpm_args], capsys)
    assert rc == EXIT_OK, got
    assert out.read_bytes() == secret
    out.unlink()
    cache = _tree(w.home)
    for form in _forms(secret):
        assert form not in cache
    # A changed PCR 16: the cached blob no longer opens.
    with Tpm(w.tpm.tcti) as tpm:
        tpm.extend_pcr(16, b"an unapproved update")
    rc, got = _cli_json(["secret", "unseal", "disk-key", "--out", str(out), *tpm_args], capsys)
    assert (rc, got["error"]) == (EXIT_REFUSED, "pcr_mismatch")
    assert not out.exists()


def test_bind_pcrs_approve_signs_the_new_state(
        bound_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = bound_world
    secret = os.urandom(90)
    src = w.tmp / "value"
    src.write_bytes(secret)
    rc, doc, err = w.admin("secret", "put", "alpha", "vpn", "--file", str(src), "--bind-pcrs")
    assert rc == 0, (doc, err)
    tpm_args = ["--tpm", w.tpm.tcti, "--home", str(w.home)]
    out = w.tmp / "out"
    assert w.get("vpn", out) == EXIT_OK
    out.unlink()
    with Tpm(w.tpm.tcti) as tpm:
        tpm.extend_pcr(16, b"a kernel update")
    # The server refuses the changed state: no session, no secret; the cache stays shut.
    assert w.get("vpn", out) == EXIT_REFUSED
    rc, got = _cli_json(["secret", "unseal", "vpn", "--out", str(out), *tpm_args], capsys)
    assert (rc, got["error"]) == (EXIT_REFUSED, "pcr_mismatch")
    # The operator approves the new state: a new signed policy, nothing re-wrapped.
    rc, doc, err = w.admin("approve", "alpha")
    assert rc == 0, (doc, err)
    assert doc["secrets_signed"] == ["vpn"]
    # One signed policy per approved baseline (approve may keep or replace the old one).
    assert ("secret_policy_signed", {"name": "vpn", "policies": doc["baselines"]}) in w.audit()
    assert w.get("vpn", out) == EXIT_OK  # fetches the current signed policies
    assert out.read_bytes() == secret
    out.unlink()
    rc, got = _cli_json(["secret", "unseal", "vpn", "--out", str(out), *tpm_args], capsys)
    assert rc == EXIT_OK, got
    assert out.read_bytes() == secret


def test_tampered_cached_blob_fails_with_our_error_code(
        bound_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    w = bound_world
    src = w.tmp / "value"
    src.write_bytes(os.urandom(40))
    rc, doc, err = w.admin("secret", "put", "alpha", "k", "--file", str(src), "--bind-pcrs")
    assert rc == 0, (doc, err)
    assert w.get("k", w.tmp / "first") == EXIT_OK
    cache = w.home / "secrets" / "k.blob"
    original = cache.read_bytes()
    tpm_args = ["--tpm", w.tpm.tcti, "--home", str(w.home)]
    def rewrite(change: Any) -> None:
        data = unpack_map(original, max_size=1 << 20)
        change(data["parts"][0])
        cache.write_bytes(pack(data))

    cases = {
        "ciphertext": (lambda p: p.update(ciphertext=bytes([p["ciphertext"][0] ^ 1])
                                          + p["ciphertext"][1:]), "credential_failed"),
        "duplicate": (lambda p: p.update(duplicate=p["duplicate"][:40]
                                         + bytes([p["duplicate"][40] ^ 1])
                                         + p["duplicate"][41:]), "credential_failed"),
        "signature": (lambda p: p.update(policies=[[p["policies"][0][0],
                                                    p["policies"][0][1][:-1]
                                                    + bytes([p["policies"][0][1][-1] ^ 1])]]),
                      "credential_failed"),
        "policy": (lambda p: p.update(policies=[[os.urandom(32), p["policies"][0][1]]]),
                   "pcr_mismatch"),
    }
    for what, (change, code) in cases.items():
        rewrite(change)
        out = w.tmp / f"out-{what}"
        rc, got = _cli_json(["secret", "unseal", "k", "--out", str(out), *tpm_args], capsys)
        assert (rc, got["error"]) == (EXIT_REFUSED, code), what
        assert not out.exists()
    cache.write_bytes(b"\x81\xa1x\xc4\x01y")  # valid msgpack, not a cache
    rc, got = _cli_json(["secret", "unseal", "k", "--out", str(w.tmp / "o"), *tpm_args], capsys)
    assert got["error"] == "bad_request"


def test_put_reads_the_value_from_stdin(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    value = os.urandom(200)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(value)))
    rc, doc, err = world.admin("secret", "put", "alpha", "piped", "-")
    assert rc == 0, (doc, err)
    assert doc["secrets"][0]["size"] == 200
    out = world.tmp / "piped.out"
    assert world.get("piped", out) == EXIT_OK
    assert out.read_bytes() == value


def test_put_all_covers_every_active_device_once(world: World) -> None:
    src = world.tmp / "v"
    src.write_bytes(b"fleet-wide value")
    rc, doc, err = world.admin("secret", "put", "--all", "fleet", "--file", str(src))
    assert rc == 0, (doc, err)
    assert [(r["device"], r["version"]) for r in doc["secrets"]] == [("alpha", 1)]
    rc, doc, _ = world.admin("secret", "put", "--all", "fleet", "--file", str(src))
    assert rc == 0 and doc["secrets"] == [] and doc["skipped"] == ["alpha"]
    rc, doc, _ = world.admin("secret", "rotate", "--all", "fleet", "--file", str(src))
    assert rc == 0 and [r["version"] for r in doc["secrets"]] == [2]
    out = world.tmp / "fleet.out"
    assert world.get("fleet", out) == EXIT_OK
    assert out.read_bytes() == b"fleet-wide value"


def test_rotate_leaves_old_cached_blobs_without_any_newly_signed_state(
        bound_world: World, capsys: pytest.CaptureFixture[str]) -> None:
    """Signed policies name the secret's version (policyRef): after rotate, a state the
    operator approves is signed for the new version only, so an old cached blob, even fed
    the new signatures, does not open in it."""
    w = bound_world
    old, new = os.urandom(40), os.urandom(41)
    src = w.tmp / "value"
    src.write_bytes(old)
    assert w.admin("secret", "put", "alpha", "disk", "--file", str(src), "--bind-pcrs")[0] == 0
    assert w.get("disk", w.tmp / "o1") == EXIT_OK
    cache = w.home / "secrets" / "disk.blob"
    old_cache = cache.read_bytes()
    src.write_bytes(new)
    rc, doc, _ = w.admin("secret", "rotate", "alpha", "disk", "--file", str(src))
    assert rc == 0 and doc["secrets"][0]["version"] == 2 and doc["secrets"][0]["policies"] == 1
    with Tpm(w.tpm.tcti) as tpm:
        tpm.extend_pcr(16, b"new state")
    assert w.get("disk", w.tmp / "o2") == EXIT_REFUSED  # state not approved yet
    assert w.admin("approve", "alpha")[1]["secrets_signed"] == ["disk"]
    assert w.get("disk", w.tmp / "o3") == EXIT_OK
    assert (w.tmp / "o3").read_bytes() == new
    fresh = unpack_map(cache.read_bytes(), max_size=1 << 20)
    tpm_args = ["--tpm", w.tpm.tcti, "--home", str(w.home)]
    stale = unpack_map(old_cache, max_size=1 << 20)
    spliced = unpack_map(old_cache, max_size=1 << 20)
    spliced["parts"][0]["policies"] = fresh["parts"][0]["policies"]
    relabelled = unpack_map(pack(spliced), max_size=1 << 20)
    relabelled["parts"][0]["version"] = 2
    for what, doc_ in (("old", stale), ("spliced", spliced), ("relabelled", relabelled)):
        cache.write_bytes(pack(doc_))
        out = w.tmp / f"out-{what}"
        rc, got = _cli_json(["secret", "unseal", "disk", "--out", str(out), *tpm_args], capsys)
        assert rc == EXIT_REFUSED, (what, got)
        assert got["error"] in ("pcr_mismatch", "credential_failed"), (what, got)
        assert not out.exists()
