"""A device's life on the fake store: re-enrollment in place, delete, baseline expiry,
the client's kept server view and the exact advice it prints (issue 9)."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest
from device_builders import NOW, SELECTION, VAULT_KEY, TestDevice, make_device, pcr_values

from client import server_view
from client import state as st
from client.advice import Advice
from client.explain import explain_refusal
from services.attestor.policy import accepted, matching_baseline
from services.registry.handler import RegistryDeps, handle
from shared.bus.interface import Request
from shared.errors import AttestgateError, ErrorCode
from shared.keys import fingerprint
from shared.records import Baseline, DeviceStatus
from shared.store.interface import PENDING_ENROLLED
from shared.store.memory import MemoryStore
from shared.store.serialize import device_from_bytes, device_to_bytes
from shared.vault import Vault
from shared.wire import Event

H = "ab" * 32


def register(store: MemoryStore, dev: TestDevice) -> tuple[bool, list[str], list[object]]:
    store.put_pending(PENDING_ENROLLED + H, device_to_bytes(dev.record), 120)
    reply = handle(Request("r1", "registry", "register", {"h": H}, NOW + 5),
                   RegistryDeps(store, Vault(VAULT_KEY), True), NOW)
    return reply.ok, [e.event for e in store.read_audit()], list(reply.events)


def same_tpm(old: TestDevice, name: str) -> TestDevice:
    """A new enrollment (new keys) of the TPM that enrolled ``old`` (same EK)."""
    new = make_device(name)
    return dataclasses.replace(new, record=dataclasses.replace(
        new.record, ek_fingerprint=old.record.ek_fingerprint))


# -- re-enrollment replaces a REENROLL record; any other status refuses ------------------


@pytest.mark.parametrize("status", [DeviceStatus.ACTIVE, DeviceStatus.LOCKED,
                                    DeviceStatus.REVOKED])
def test_same_tpm_cannot_enroll_again_unless_allowed(status: DeviceStatus) -> None:
    store = MemoryStore()
    old = make_device("alice", status=status)
    store.devices[old.device_id] = old.record
    ok, events, _ = register(store, same_tpm(old, "alice2"))
    assert not ok and events == [] and list(store.devices) == [old.device_id]


def test_same_tpm_enrolls_again_in_reenroll_and_replaces_the_record() -> None:
    store = MemoryStore()
    old = make_device("alice", status=DeviceStatus.REENROLL)
    store.devices[old.device_id] = old.record
    store.advance_connect_ts(old.device_id, 7)
    new = same_tpm(old, "alice")  # its own name is free for it
    ok, events, published = register(store, new)
    assert ok and events == ["reenrolled"]
    assert list(store.devices) == [new.device_id]
    assert store.last_connect_ts(old.device_id) == -1
    detail = json.loads(store.read_audit()[0].detail)
    assert detail["replaces"] == old.device_id and detail["name"] == "alice"
    # The old id's live sessions are closed: the gateways hear it as revoked.
    assert [(e.topic, e.body) for e in published] == [  # type: ignore[attr-defined]
        (Event.DEVICE_REVOKED.value, {"device_id": old.device_id})]


def test_reenroll_name_is_free_only_for_its_own_tpm() -> None:
    store = MemoryStore()
    old = make_device("alice", status=DeviceStatus.REENROLL)
    store.devices[old.device_id] = old.record
    stranger = make_device("Alice")  # another TPM taking the name of a REENROLL device
    ok, events, _ = register(store, stranger)
    assert not ok and events == [] and list(store.devices) == [old.device_id]


def test_delete_device_frees_everything() -> None:
    store = MemoryStore()
    dev = make_device("alice", status=DeviceStatus.REVOKED)
    store.devices[dev.device_id] = dev.record
    assert store.delete_device(dev.device_id) == dev.record
    assert store.delete_device(dev.device_id) is None
    again = same_tpm(dev, "alice")
    ok, events, _ = register(store, again)
    assert ok and events == ["enrolled"]


def test_create_device_replacing_a_device_that_left_reenroll_is_refused() -> None:
    store = MemoryStore()
    old = make_device("alice", status=DeviceStatus.ACTIVE)  # e.g. unlocked meanwhile
    store.devices[old.device_id] = old.record
    with pytest.raises(AttestgateError) as exc:
        store.create_device(same_tpm(old, "alice").record, None, old.device_id)
    assert exc.value.code is ErrorCode.ALREADY_ENROLLED


# -- baselines: stable ids, expiry --------------------------------------------------------


def test_baseline_id_is_stable_and_survives_the_store() -> None:
    a = Baseline.of(SELECTION, pcr_values(b"a"))
    b = dataclasses.replace(a, approved_at=NOW, expires_at=NOW + 60)
    assert a.baseline_id == b.baseline_id and len(a.baseline_id) == 12
    assert a.baseline_id != Baseline.of(SELECTION, pcr_values(b"b")).baseline_id
    dev = make_device("alice")
    stored = dataclasses.replace(dev.record, baselines=(a, b))
    assert device_from_bytes(device_to_bytes(stored)).baselines == (a, b)


def test_superseded_baseline_is_accepted_until_it_expires() -> None:
    old_values, new_values = pcr_values(b"old"), pcr_values(b"new")
    dev = make_device("alice").record
    dev = dataclasses.replace(dev, baselines=(
        Baseline(SELECTION, tuple(sorted(new_values.items())), approved_at=NOW),
        Baseline(SELECTION, tuple(sorted(old_values.items())), expires_at=NOW + 60)))
    assert matching_baseline(dev, old_values, NOW + 59) is not None
    assert matching_baseline(dev, old_values, NOW + 60) is None
    assert matching_baseline(dev, new_values, NOW + 10**6) is not None
    # An accepted attestation drops what has expired.
    assert len(accepted(dev, NOW + 30, 1, 1).baselines) == 2
    assert [b.as_dict() for b in accepted(dev, NOW + 61, 1, 1).baselines] == [new_values]


# -- the client's kept view and its advice ------------------------------------------------


def client_state(bind_pcrs: bool = False) -> st.ClientState:
    return st.ClientState(
        version=st.STATE_VERSION, server="127.0.0.1:7443", server_public="11" * 32,
        device_id="d" * 32, name="dev one", selection="sha256:0,7",
        baseline={"0": "00" * 32, "7": "07" * 32}, bind_pcrs=bind_pcrs, noise_sealed="",
        noise_encrypted="", noise_public="22" * 32, psk_key="", post_key="", enrolled_at=NOW)


def test_server_view_learned_and_refused(tmp_path: Path) -> None:
    assert server_view.load(tmp_path, "d" * 32) is None
    server_view.learned(tmp_path, "d" * 32, {"status": "active",
                                             "baselines": [{"7": b"\xee" * 32}]})
    view = server_view.load(tmp_path, "d" * 32)
    assert view is not None and view.status == "active" and view.baselines == ({"7": "ee" * 32},)
    assert (tmp_path / server_view.VIEW_FILE).stat().st_mode & 0o077 == 0
    server_view.refused(tmp_path, "d" * 32, ErrorCode.REVOKED, {})
    view = server_view.load(tmp_path, "d" * 32)
    assert view is not None and view.status == "revoked" and view.baselines
    server_view.refused(tmp_path, "d" * 32, ErrorCode.PCR_MISMATCH, {"status": "locked"})
    assert server_view.load(tmp_path, "d" * 32).status == "locked"  # type: ignore[union-attr]
    assert server_view.load(tmp_path, "e" * 32) is None  # another enrollment's view
    server_view.learned(tmp_path, "d" * 32, {"status": "active", "baselines": [{"99": b""}]})
    assert server_view.load(tmp_path, "d" * 32).status == "locked"  # type: ignore[union-attr]
    (tmp_path / server_view.VIEW_FILE).write_text("{not json")
    assert server_view.load(tmp_path, "d" * 32) is None


def test_server_view_is_written_only_when_what_the_server_said_changed(tmp_path: Path) -> None:
    reply = {"status": "active", "baselines": [{"7": b"\xee" * 32}]}
    server_view.learned(tmp_path, "d" * 32, reply)
    path = tmp_path / server_view.VIEW_FILE
    first = path.stat()
    server_view.learned(tmp_path, "d" * 32, reply)  # every connect says the same
    again = path.stat()
    two = {"status": "active", "baselines": [{"7": b"\xee" * 32}, {"7": b"\x01" * 32}]}
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    server_view.learned(tmp_path, "d" * 32, two)
    view = server_view.load(tmp_path, "d" * 32)
    assert view is not None and len(view.baselines) == 2
    server_view.refused(tmp_path, "d" * 32, ErrorCode.LOCKED, {})
    server_view.learned(tmp_path, "d" * 32, two)
    assert server_view.load(tmp_path, "d" * 32).status == "active"  # type: ignore[union-attr]


def commands(text: str) -> list[list[str]]:
    return [shlex.split(c) for c in text.split("`")[1::2]]


def test_advice_names_exact_commands_for_this_machine() -> None:
    state = client_state(bind_pcrs=True)
    advice = Advice(state, ("--home", "/tmp/h x"))
    enroll = ["attestgate", "enroll", "--force", "--server", "127.0.0.1:7443", "--name",
              "dev one", "--server-key", fingerprint(b"\x11" * 32), "--bind-pcrs",
              "--home", "/tmp/h x"]
    assert commands(explain_refusal(ErrorCode.REVOKED, {}, advice)) == [
        ["attestgate-admin", "delete", "dev one", "--yes"], enroll]
    assert commands(explain_refusal(ErrorCode.REENROLL_REQUIRED, {}, advice)) == [enroll]
    assert commands(advice.unsealed_failed()) == [
        ["attestgate-admin", "allow-reenroll", "dev one"], enroll]
    status = ["attestgate", "status", "--home", "/tmp/h x"]
    assert commands(explain_refusal(ErrorCode.LOCKED, {}, advice)) == [
        ["attestgate-admin", "approve", "dev one"], ["attestgate-admin", "unlock", "dev one"],
        status]
    pcr = explain_refusal(ErrorCode.PCR_MISMATCH, {"changed": [], "status": "active"}, advice)
    assert commands(pcr) == [["attestgate-admin", "approve", "dev one"], status]
    assert commands(Advice(client_state()).check_changed()) == [
        ["attestgate", "status"], ["attestgate-admin", "approve", "dev one"],
        ["attestgate", "status"]]
    # A mismatch that made the device REVOKED or REENROLL leads where those do.
    revoked = explain_refusal(ErrorCode.PCR_MISMATCH, {"changed": [], "status": "revoked"},
                              advice)
    assert commands(revoked) == [["attestgate-admin", "delete", "dev one", "--yes"], enroll]
    reenroll = explain_refusal(ErrorCode.PCR_MISMATCH, {"changed": [], "status": "reenroll"},
                               advice)
    assert commands(reenroll) == [enroll]
    # Without a state the words stay generic, never a wrong name.
    assert "<device>" in explain_refusal(ErrorCode.LOCKED, {})
