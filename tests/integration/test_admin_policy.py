"""``attestgate-admin baseline add`` and ``policy ...`` against a real redis-server.

What an operator relies on: a reference state added from an event log holds exactly the
values that log replays to (and keeps the log); bad input changes nothing and says why (exit 2);
every policy change is audited with the whole policy; a device's own policy replaces the
default; a policy goes with its device.
"""
# ruff: noqa: F811  (the fixtures imported from test_admin_cli are parameters here)

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from shared.eventlog import parse_log, replay
from shared.eventlog.build import encode_log, measured_event
from shared.eventlog.transport import decompress, log_digest
from shared.records import Baseline
from shared.store.redis_store import RedisStore
from tests.integration.test_admin_cli import (  # noqa: F401 - its fixtures, shared
    admin,
    home,
    make_device,
    redis_server,
    store,
)
from tests.unit.eventlog.eventlog_helpers import BANKS, boot

pytestmark = pytest.mark.integration

DB_AUTHORITY = hashlib.sha256(b"\x11" * 16 + b"\x30" * 40).hexdigest()


def _log(tmp_path: Path, name: str = "next.log", **kw: Any) -> tuple[Path, bytes]:
    log = encode_log(boot(**kw), BANKS)
    path = tmp_path / name
    path.write_bytes(log)
    return path, log


def _events(store: RedisStore, device_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event, json.loads(e.detail)) for e in store.read_audit(device_id)]


# -- baseline add ------------------------------------------------------------------------------


def test_a_reference_state_from_an_event_log(admin: Any, store: RedisStore,
                                             tmp_path: Path) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    path, log = _log(tmp_path, kernel="6.1.0-31")
    want = replay(parse_log(log))["sha256"]
    run = admin("baseline", "add", "alpha", "--event-log", str(path))
    assert run.code == 0 and run.doc["added"] is True, run.err
    assert run.doc["pcrs"] == {"0": want[0].hex(), "7": want[7].hex()}
    assert run.doc["event_log"] == log_digest(log) and run.doc["source"] == "event_log"
    after = store.get_device(dev.device_id)
    assert after is not None and len(after.baselines) == 2
    added = after.baselines[-1]
    assert added.as_dict() == {0: want[0], 7: want[7]} and added.approved_at > 0
    blob = store.get_event_log(dev.device_id, added.log)
    assert blob is not None and decompress(blob) == log  # kept to explain later refusals
    rows = admin("baseline", "list", "alpha").doc["baselines"]
    assert rows[-1]["id"] == added.baseline_id and rows[-1]["state"] == "current"
    assert [e for e, _ in _events(store, dev.device_id)] == ["baseline_added"]
    assert _events(store, dev.device_id)[0][1]["id"] == added.baseline_id
    # The same state again: nothing changes, nothing is audited.
    again = admin("baseline", "add", "alpha", "--event-log", str(path))
    assert again.code == 0 and again.doc["added"] is False
    assert store.get_device(dev.device_id) == after
    assert len(_events(store, dev.device_id)) == 1
    # Another log that replays to the same values: nothing added, and its log not kept.
    other = encode_log([*boot(kernel="6.1.0-31"), measured_event(12, 0xD, b"x", BANKS)], BANKS)
    other_path = tmp_path / "other.log"
    other_path.write_bytes(other)
    same = admin("baseline", "add", "alpha", "--event-log", str(other_path))
    assert same.code == 0 and same.doc["added"] is False, same.doc
    assert store.get_event_log(dev.device_id, log_digest(other)) is None
    assert store.get_event_log(dev.device_id, added.log) is not None
    assert admin("audit", "--verify").code == 0


def test_pcrs_the_log_does_not_describe_come_from_pcr_flags(admin: Any, store: RedisStore,
                                                           tmp_path: Path) -> None:
    selection = "sha256:0,7,16"
    dev = make_device("alpha")
    dev = dataclasses.replace(dev, baselines=(Baseline.of(selection, {
        0: b"\x00" * 32, 7: b"\x07" * 32, 16: b"\x16" * 32}),))
    store.create_device(dev, None)
    path, log = _log(tmp_path)
    missing = admin("baseline", "add", "alpha", "--event-log", str(path))
    assert missing.code == 2 and missing.doc["error"] == "bad_request"
    assert "PCR 16" in missing.doc["message"] and "--pcr 16=HEX" in missing.doc["message"]
    assert store.get_device(dev.device_id) == dev
    assert store.get_event_log(dev.device_id, log_digest(log)) is None  # nothing stored
    want = replay(parse_log(log))["sha256"]
    conflict = admin("baseline", "add", "alpha", "--event-log", str(path),
                     "--pcr", f"0={'ab' * 32}", "--pcr", f"16={'00' * 32}")
    assert conflict.code == 2 and conflict.doc["error"] == "log_inconsistent"
    assert store.get_device(dev.device_id) == dev
    ok = admin("baseline", "add", "alpha", "--event-log", str(path), "--pcr",
               f"16={'00' * 32}", "--pcr", f"7={want[7].hex()}")
    assert ok.code == 0 and ok.doc["pcrs"]["16"] == "00" * 32, ok.err
    assert ok.doc["pcrs"]["0"] == want[0].hex()


def test_a_reference_state_from_pcr_values_only(admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    short = admin("baseline", "add", "alpha", "--pcr", f"0={'01' * 32}")
    assert short.code == 2 and "PCR 7" in short.doc["message"]
    ok = admin("baseline", "add", "alpha", "--pcr", f"0={'01' * 32}", "--pcr", f"7={'02' * 32}")
    assert ok.code == 0 and ok.doc["source"] == "pcrs" and "event_log" not in ok.doc
    after = store.get_device(dev.device_id)
    assert after is not None
    assert after.baselines[-1].as_dict() == {0: b"\x01" * 32, 7: b"\x02" * 32}


@pytest.mark.parametrize("flags", [
    [], ["--pcr", "0=zz"], ["--pcr", "0"], ["--pcr", f"24={'00' * 32}"],
    ["--pcr", f"0={'00' * 20}"], ["--pcr", f"0={'00' * 32}", "--pcr", f"0={'11' * 32}"],
    ["--event-log", "/nonexistent/log"],
])
def test_bad_input_changes_nothing(admin: Any, store: RedisStore, flags: list[str]) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    run = admin("baseline", "add", "alpha", *flags)
    assert run.code == 2 and run.doc["error"] in ("bad_request",), run.doc
    assert store.get_device(dev.device_id) == dev and not _events(store, dev.device_id)


def test_a_log_with_anomalies_or_garbage_is_no_reference(admin: Any, store: RedisStore,
                                                         tmp_path: Path) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    events = boot()
    events.insert(3, measured_event(4, 0x99, b"unknown", BANKS))
    odd = tmp_path / "odd.log"
    odd.write_bytes(encode_log(events, BANKS))
    run = admin("baseline", "add", "alpha", "--event-log", str(odd))
    assert run.code == 2 and run.doc["error"] == "log_inconsistent"
    assert "unknown event type" in run.doc["message"]
    garbage = tmp_path / "garbage.log"
    garbage.write_bytes(b"\x00" * 100)
    run = admin("baseline", "add", "alpha", "--event-log", str(garbage))
    assert run.code == 2 and run.doc["error"] == "bad_request"
    no_bank = tmp_path / "sha1.log"
    no_bank.write_bytes(encode_log([dataclasses.replace(e, digests={"sha1": e.digests["sha1"]})
                                    for e in boot()], ("sha1",)))
    run = admin("baseline", "add", "alpha", "--event-log", str(no_bank))
    assert run.code == 2 and "no sha256 bank" in run.doc["message"]
    assert store.get_device(dev.device_id) == dev and not _events(store, dev.device_id)


# -- policy ------------------------------------------------------------------------------------


def _policy_file(tmp_path: Path, doc: dict[str, Any], name: str = "policy.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_policies_default_and_per_device_each_change_audited(
        admin: Any, store: RedisStore, tmp_path: Path) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    assert admin("policy", "show", "alpha").doc["applies"] == "none"
    fleet = _policy_file(tmp_path, {"boot_authorities": [DB_AUTHORITY], "dbx": "grow"})
    run = admin("policy", "set", "--default", fleet)
    assert run.code == 0 and run.doc["scope"] == "default", run.err
    stored = store.get_rule_policy("")
    assert stored is not None and json.loads(stored)["boot_authorities"] == [DB_AUTHORITY]
    shown = admin("policy", "show", "alpha").doc
    assert shown["applies"] == "default" and shown["policy"]["dbx"] == "grow"
    detail = admin("show", "alpha").doc["rule_policy"]
    assert detail == {"applies": "default", "digest": run.doc["digest"]}
    own = _policy_file(tmp_path, {"kernel_cmdline": "root=\\S+ ro", "boot_config": "accept"},
                       "own.json")
    assert admin("policy", "set", "alpha", own).code == 0
    shown = admin("policy", "show", "alpha").doc
    assert shown["applies"] == "device" and shown["policy"]["boot_authorities"] == []
    listed = admin("policy", "show").doc["policies"]
    assert [p["scope"] for p in listed] == ["default", "device"]
    assert admin("policy", "remove", "alpha").code == 0
    assert admin("policy", "show", "alpha").doc["applies"] == "default"
    gone = admin("policy", "remove", "alpha")
    assert gone.code == 3 and gone.doc["error"] == "not_found"
    audit = [(e.event, e.device_id, json.loads(e.detail)) for e in store.read_audit(None)]
    assert [(e, d) for e, d, _ in audit] == [("policy_set", ""),
                                            ("policy_set", dev.device_id),
                                            ("policy_removed", dev.device_id)]
    assert audit[0][2]["policy"]["boot_authorities"] == [DB_AUTHORITY]
    assert audit[1][2]["policy"]["kernel_cmdline"] == "root=\\S+ ro"
    assert audit[0][2]["policy"]["firmware"] == "approval"
    assert admin("audit", "--verify").code == 0


@pytest.mark.parametrize("doc", [
    {"firmware": "accept"}, {"boot_authorities": ["nope"]}, {"kernel_cmdline": "("},
    {"surprise": 1}, [1, 2],
])
def test_a_bad_policy_changes_nothing(admin: Any, store: RedisStore, tmp_path: Path,
                                      doc: Any) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    run = admin("policy", "set", "--default", str(path))
    assert run.code == 2 and run.doc["error"] == "bad_request" and run.doc["message"]
    assert store.get_rule_policy("") is None and not list(store.read_audit(None))


def test_scope_is_one_device_or_the_default(admin: Any, store: RedisStore,
                                            tmp_path: Path) -> None:
    store.create_device(make_device("alpha"), None)
    path = _policy_file(tmp_path, {})
    for argv in (["policy", "set", path], ["policy", "set", "alpha", "--default", path]):
        run = admin(*argv)
        assert run.code == 2, run.doc
    assert not store.list_rule_policies()


def test_an_unreadable_stored_policy_is_shown_as_refusing(admin: Any, store: RedisStore) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    store.put_rule_policy(dev.device_id, b"{broken")
    shown = admin("policy", "show", "alpha")
    assert shown.code == 0 and "refuses every acceptance" in shown.doc["policy"]["error"]
    text = admin("policy", "show", "alpha", json_out=False).out
    assert "unreadable" in text


def test_template_from_the_baseline_log_and_delete_takes_the_policy_along(
        admin: Any, store: RedisStore, tmp_path: Path) -> None:
    dev = make_device("alpha")
    store.create_device(dev, None)
    none = admin("policy", "template", "alpha")
    assert none.code == 3 and "baseline add" in none.doc["message"]
    path, _ = _log(tmp_path)
    assert admin("baseline", "add", "alpha", "--event-log", str(path)).code == 0
    tpl = admin("policy", "template", "alpha")
    assert tpl.code == 0 and tpl.doc["policy"]["boot_authorities"] == [DB_AUTHORITY]
    assert tpl.doc["policy"]["dbx"] == "grow"
    assert "kernel_cmdline" not in tpl.doc["policy"]  # PCR 8 is not quoted
    text = admin("policy", "template", "alpha", json_out=False)
    assert json.loads(text.out) == tpl.doc["policy"]  # `template dev > policy.json` works
    policy = tmp_path / "policy.json"
    policy.write_text(text.out)
    assert admin("policy", "set", "alpha", str(policy)).code == 0
    assert admin("delete", "alpha", "--yes").code == 0
    assert store.get_rule_policy(dev.device_id) is None
