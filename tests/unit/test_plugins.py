"""Policy and consequence plugins: loaded through importlib.metadata entry points, run by the
attestor's ``attest`` op, failing closed in every way a plugin can fail."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from device_builders import NOW, SELECTION, VAULT_KEY, TestDevice, make_device
from tpm_builders import quote_attest, sign_data, tpm_name

from services.attestor import plugins as pipeline
from services.attestor.enroll import EnrollSettings, quote_nonce
from services.attestor.handler import AttestorDeps, handle
from services.attestor.policy import AttestPolicy, Outcome
from shared.bus.interface import BusEvent, Reply, Request
from shared.config import Consequence, EnrollPolicy
from shared.errors import ErrorCode
from shared.plugins import (
    CONSEQUENCE_GROUP,
    POLICY_GROUP,
    Action,
    ActionKind,
    Decision,
    Evidence,
    Plugin,
    Plugins,
    Refused,
    load,
    load_all,
)
from shared.records import DeviceStatus
from shared.store.memory import MemoryStore
from shared.vault import Vault
from shared.wire import Event
from tests.support.plugins import register, register_example

H = hashlib.sha256(b"handshake hash").digest()


# -- plugins that fail, for the fail-closed tests (loaded by entry point too) ------------------


def raises(_: object) -> Decision:
    raise RuntimeError("plugin bug")


def wrong_type(_: object) -> bool:
    return True


def accept_all(_: Evidence) -> Decision:
    return Decision.accept()


NOT_CALLABLE = 42


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Plugins]:
    """examples/plugins registered as if pip-installed; the entry points loaded for real."""
    for path in register_example(tmp_path / "site"):
        monkeypatch.syspath_prepend(str(path))
    monkeypatch.setenv("ATTESTGATE_EXAMPLE_DENY", "mallory, Eve")
    yield load_all()


def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: str,
               entries: dict[str, str]) -> tuple[Plugin, ...]:
    register(tmp_path / "site", "attestgate-test-plugins", {group: entries})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return load(group)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def enrolled(store: MemoryStore, name: str) -> TestDevice:
    dev = make_device(name)
    store.devices[dev.device_id] = dev.record
    return dev


def attest(store: MemoryStore, dev: TestDevice, pcrs: dict[int, bytes], plugins: Plugins,
           max_failures: int = 3) -> Reply:
    attest_bytes = quote_attest(pcrs, extra_data=quote_nonce(H),
                                signer=tpm_name(dev.record.ak_public))
    body = {"device_id": dev.device_id, "h": H, "attest": attest_bytes,
            "signature": sign_data(dev.ak, attest_bytes),
            "pcrs": {str(i): v for i, v in pcrs.items()}}
    deps = AttestorDeps(store, Vault(VAULT_KEY),
                        EnrollSettings(EnrollPolicy.TOFU, None, frozenset(), SELECTION),
                        AttestPolicy(SELECTION, max_failures, Consequence.LOCK, None),
                        plugins=plugins)
    return handle(Request("r1", "attestor", "attest", body, NOW + 5), deps, NOW)


def audit(store: MemoryStore) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, json.loads(e.detail)) for e in store.read_audit()]


# -- loading ---------------------------------------------------------------------------------


def test_the_example_distribution_loads_through_entry_points(example: Plugins) -> None:
    assert [(p.name, p.error) for p in example.policies] == [("deny-listed", "")]
    assert [(p.name, p.error) for p in example.consequences] == [
        ("lock-on-secure-boot-change", "")]
    assert all(callable(p.fn) for p in (*example.policies, *example.consequences))


def test_a_plugin_that_cannot_load_is_kept_as_failed(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    found = registered(tmp_path, monkeypatch, POLICY_GROUP, {
        "missing": "no_such_module_for_attestgate:rule", "number": "test_plugins:NOT_CALLABLE",
        "fine": "test_plugins:accept_all"})
    assert [(p.name, p.fn is None, p.error) for p in found] == [
        ("fine", False, ""), ("missing", True, "import failed: ModuleNotFoundError"),
        ("number", True, "not callable")]


# -- policies through the attest op ---------------------------------------------------------------


def test_example_policy_refuses_a_deny_listed_device(store: MemoryStore,
                                                     example: Plugins) -> None:
    dev = enrolled(store, "mallory")
    reply = attest(store, dev, dev.pcrs, example)
    assert reply.error is ErrorCode.POLICY_REFUSED
    assert reply.body["failures"] == 1 and reply.body["changed"] == []
    assert store.devices[dev.device_id].failures == 1
    assert audit(store)[0] == ("policy_refused", {
        "plugin": "deny-listed",
        "reason": "device is on the deny list (ATTESTGATE_EXAMPLE_DENY)"})
    assert [e for e, _ in audit(store)] == ["policy_refused", "attest_refused"]


def test_example_policy_accepts_other_devices(store: MemoryStore, example: Plugins) -> None:
    dev = enrolled(store, "alice")
    assert attest(store, dev, dev.pcrs, example).ok
    assert [e for e, _ in audit(store)] == ["attest_ok"]


def test_policy_sees_frozen_verified_evidence(store: MemoryStore) -> None:
    seen: list[Evidence] = []

    def look(ev: Evidence) -> Decision:
        seen.append(ev)
        return Decision.accept()

    dev = enrolled(store, "alice")
    assert attest(store, dev, dev.pcrs, Plugins(policies=(Plugin("look", look),))).ok
    ev = seen[0]
    assert (ev.device.device_id, ev.device.name, ev.device.status) == (
        dev.device_id, "alice", "active")
    assert dict(ev.pcrs) == dev.pcrs and ev.reattest is False and ev.now == NOW
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.device.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ev.pcrs[0] = b"x"  # type: ignore[index]


@pytest.mark.parametrize(("entries", "problem"), [
    ({"bad": "test_plugins:raises"}, "raised RuntimeError"),
    ({"bad": "test_plugins:wrong_type"}, "returned bool, not Decision"),
    ({"bad": "no_such_module_for_attestgate:rule"}, "import failed: ModuleNotFoundError"),
])
def test_a_failing_policy_refuses_and_is_audited(
        store: MemoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        entries: dict[str, str], problem: str) -> None:
    policies = registered(tmp_path, monkeypatch, POLICY_GROUP, entries)
    dev = enrolled(store, "alice")
    reply = attest(store, dev, dev.pcrs, Plugins(policies=policies))
    assert reply.error is ErrorCode.POLICY_REFUSED
    assert ("plugin_failed", {"plugin": "bad", "problem": problem}) in audit(store)
    assert store.devices[dev.device_id].failures == 1
    assert store.devices[dev.device_id].last_attest_at == dev.record.last_attest_at


# -- consequences ---------------------------------------------------------------------------------


def test_example_consequence_locks_at_once_on_a_pcr7_change(store: MemoryStore,
                                                            example: Plugins) -> None:
    dev = enrolled(store, "alice")
    reply = attest(store, dev, {**dev.pcrs, 7: b"\x77" * 32}, example, max_failures=3)
    assert reply.error is ErrorCode.PCR_MISMATCH
    assert reply.body["status"] == "locked" and reply.body["failures"] == 1
    assert reply.events == (BusEvent(Event.DEVICE_LOCKED.value,
                                     {"device_id": dev.device_id, "status": "locked"}),)
    events = audit(store)
    assert ("plugin_action", {"plugin": "lock-on-secure-boot-change", "action": "lock",
                              "reason": "Secure Boot policy (PCR 7) changed"}) in events
    assert "consequence_lock" in [e for e, _ in events]


def test_example_consequence_leaves_other_pcrs_to_the_threshold(store: MemoryStore,
                                                                example: Plugins) -> None:
    dev = enrolled(store, "alice")
    changed = next(i for i in dev.pcrs if i != 7)
    reply = attest(store, dev, {**dev.pcrs, changed: b"\x01" * 32}, example, max_failures=3)
    assert reply.error is ErrorCode.PCR_MISMATCH and reply.body["status"] == "active"
    assert "plugin_action" not in [e for e, _ in audit(store)]


@pytest.mark.parametrize("entry", ["test_plugins:raises", "test_plugins:wrong_type",
                                   "no_such_module_for_attestgate:rule"])
def test_a_failing_consequence_keeps_the_refusal_and_is_audited(
        store: MemoryStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        entry: str) -> None:
    consequences = registered(tmp_path, monkeypatch, CONSEQUENCE_GROUP, {"bad": entry})
    dev = enrolled(store, "alice")
    reply = attest(store, dev, {**dev.pcrs, 7: b"\x77" * 32}, Plugins(consequences=consequences))
    assert reply.error is ErrorCode.PCR_MISMATCH and reply.body["status"] == "active"
    assert "plugin_failed" in [e for e, _ in audit(store)]


def test_the_strictest_action_wins() -> None:
    def says(kind: ActionKind | None) -> Plugin:
        return Plugin(str(kind), lambda _: Action(kind))

    refused = Refused(pipeline.device_view(make_device("a").record), "pcr_mismatch", 1, (),
                      None, NOW)
    verdict = pipeline.run_consequences(
        (says(ActionKind.ALERT), says(ActionKind.REVOKE), says(ActionKind.LOCK), says(None)),
        refused)
    assert verdict.action.kind is ActionKind.REVOKE and verdict.plugin == "revoke"


def test_escalate_changes_only_an_active_device() -> None:
    rec = make_device("a").record
    locked = dataclasses.replace(rec, status=DeviceStatus.LOCKED)
    out = pipeline.escalate(Outcome(locked, (), None), Action.of(ActionKind.REVOKE))
    assert out.device.status is DeviceStatus.LOCKED and out.events == ()
    out = pipeline.escalate(Outcome(rec, (), None), Action.of(ActionKind.REVOKE))
    assert out.device.status is DeviceStatus.REVOKED
    assert out.consequence is Consequence.REVOKE
