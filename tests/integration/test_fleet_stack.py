"""No dead ends (issue 9), against a real stack, real swtpm and the real CLIs.

For each refusal and failed check the client can print, the test runs the commands the
message names, exactly as printed (between backticks), and ends with a working device.
And baselines: after an approve, the old PCR state is refused (``--replace``, the
default) or still accepted (``--keep``).
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import flows
from client.channel import NetworkError, Refused
from client.tpm import Tpm
from services.registry import admin
from shared.audit_anchor import CHECKPOINT_FILE
from shared.errors import ErrorCode
from shared.records import DeviceStatus
from shared.store.redis_store import RedisStore
from shared.wire import Command
from tests.integration.test_attestation import (
    EXIT_NETWORK,
    EXIT_OK,
    EXIT_REFUSED,
    MAX_FAILURES,
    SETTINGS,
    Machine,
    enrolled,
    machine,
)
from tests.support.clis import admin_cli, cli
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, swtpm_template: TemplateTpm
          ) -> Iterator[Stack]:
    with Stack.start(tmp_path_factory.mktemp("stack"), ca_dir=swtpm_template.trust_dir,
                     settings=SETTINGS) as s:
        yield s


@pytest.fixture(scope="module")
def reenroll_stack(tmp_path_factory: pytest.TempPathFactory, swtpm_template: TemplateTpm
                   ) -> Iterator[Stack]:
    with Stack.start(tmp_path_factory.mktemp("stack-reenroll"), ca_dir=swtpm_template.trust_dir,
                     settings={**SETTINGS, "ATTESTGATE_ON_FAILURE": "reenroll"}) as s:
        yield s


def emptied(stack: Stack) -> Iterator[RedisStore]:
    store = RedisStore(stack.redis.url)
    store.purge()  # the copies of one template share one EK
    (stack.directory / "server" / CHECKPOINT_FILE).unlink(missing_ok=True)
    yield store
    store.close()


@pytest.fixture
def store(stack: Stack) -> Iterator[RedisStore]:
    yield from emptied(stack)


@pytest.fixture
def reenroll_store(reenroll_stack: Stack) -> Iterator[RedisStore]:
    yield from emptied(reenroll_stack)


def commands(message: str) -> list[list[str]]:
    """The commands a message names, between backticks, split as a shell would."""
    found = [shlex.split(c) for c in message.split("`")[1::2]]
    assert found, f"no command in: {message}"
    assert all(c[0] in ("attestgate", "attestgate-admin") for c in found), found
    return found


def follow(stack: Stack, message: str) -> list[int]:
    """Run every command the message names, literally; their exit codes."""
    codes = []
    for argv in commands(message):
        if argv[0] == "attestgate-admin":
            rc, _ = admin_cli(stack, *argv[1:])
        else:
            rc, _ = cli(*argv[1:])
        codes.append(rc)
    return codes


def change_pcr(tpm: SwtpmProcess, data: bytes = b"new firmware") -> None:
    with Tpm(tpm.tcti) as t:
        t.extend_pcr(16, data)


def reset_pcr(tpm: SwtpmProcess) -> None:
    with Tpm(tpm.tcti) as t:
        t.reset_pcr(16)


def works(m: Machine) -> None:
    """A working device: it connects, posts, and its offline check passes."""
    rc, doc = m.run("post", "back again")
    assert rc == EXIT_OK, doc
    rc, doc = m.run("check")
    assert rc == EXIT_OK and doc["ok"] is True, doc


def events(store: RedisStore) -> list[str]:
    return [e.event for e in store.read_audit()]


# == baselines ==============================================================================


def test_approve_replaces_the_old_state(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                        tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    change_pcr(swtpm)
    assert m.run("status")[1]["error"] == "pcr_mismatch"
    rc, doc = admin_cli(stack, "approve", "dev1")
    assert rc == 0 and doc["mode"] == "replace" and doc["baselines"] == 1, doc
    assert m.run("status")[0] == EXIT_OK
    reset_pcr(swtpm)  # the old (enrolled) PCR value is no longer accepted
    rc, doc = m.run("status")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "pcr_mismatch"), doc
    listed = admin_cli(stack, "baseline", "list", "dev1")[1]["baselines"]
    assert [b["state"] for b in listed] == ["current"]


def test_approve_keep_accepts_both_states(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                          tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    change_pcr(swtpm)
    assert m.run("status")[0] == EXIT_REFUSED
    rc, doc = admin_cli(stack, "approve", "dev1", "--keep")
    assert rc == 0 and doc["baselines"] == 2, doc
    assert m.run("status")[0] == EXIT_OK
    reset_pcr(swtpm)
    assert m.run("status")[0] == EXIT_OK
    # Removing the enrolled baseline by id: that state is refused from now on.
    enrolled_id = admin_cli(stack, "baseline", "list", "dev1")[1]["baselines"][0]["id"]
    assert admin_cli(stack, "baseline", "remove", "dev1", enrolled_id)[0] == 0
    assert m.run("status")[1]["error"] == "pcr_mismatch"


# == every refusal has a way out ==========================================================


def test_pcr_mismatch_advice_leads_back(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                        tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    change_pcr(swtpm)
    rc, doc = m.run("post", "refused")
    assert (rc, doc["error"], doc["status"]) == (EXIT_REFUSED, "pcr_mismatch", "active"), doc
    assert follow(stack, doc["message"]) == [0, EXIT_OK]  # approve, status
    works(m)


def test_locked_advice_leads_back(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                  tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    change_pcr(swtpm)
    for _ in range(MAX_FAILURES):
        m.run("status")
    rc, doc = m.run("status")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "locked"), doc
    rc, check = m.run("check")  # the check knows it too
    assert rc == EXIT_REFUSED and check["server_status"] == "locked", check
    # approve (the state was intended), unlock (already active: a no-op), status
    assert follow(stack, doc["message"]) == [0, 0, EXIT_OK]
    works(m)


def test_revoked_advice_leads_back(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                   tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    works(m)
    old_id = m.state().device_id
    assert admin_cli(stack, "revoke", "dev1")[0] == 0
    rc, doc = m.run("status")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "revoked"), doc
    rc, check = m.run("check")  # a revoked device no longer passes its own check
    assert rc == EXIT_REFUSED and check["ok"] is False and check["changed"] == [], check
    assert follow(stack, check["message"]) == [0, EXIT_OK]  # delete --yes, enroll --force
    assert m.state().device_id != old_id and m.state().name == "dev1"
    works(m)
    # A second revoke: the refusal's own message leads back the same way.
    assert admin_cli(stack, "revoke", "dev1")[0] == 0
    rc, doc = m.run("post", "refused")
    assert doc["error"] == "revoked"
    assert follow(stack, doc["message"]) == [0, EXIT_OK]
    works(m)
    assert events(store).count("deleted") == 2
    assert [e.event for e in store.read_audit(old_id)][-2:] == ["revoked", "deleted"]


def test_reenroll_consequence_means_enroll_again(reenroll_stack: Stack,
                                                 reenroll_store: RedisStore,
                                                 swtpm: SwtpmProcess, tmp_path: Path) -> None:
    stack, store = reenroll_stack, reenroll_store
    m = enrolled(stack, swtpm, tmp_path)
    old_id = m.state().device_id
    change_pcr(swtpm)
    for _ in range(MAX_FAILURES):
        rc, doc = m.run("status")
        assert doc["error"] == "pcr_mismatch", doc
    assert doc["status"] == "reenroll"
    # The mismatch that made it REENROLL already says what to run: enroll again.
    assert [c[:2] for c in commands(doc["message"])] == [["attestgate", "enroll"]]
    rc, doc = m.run("status")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "reenroll_required"), doc
    assert follow(stack, doc["message"]) == [EXIT_OK]  # enroll --force
    new_id = m.state().device_id
    assert new_id != old_id and store.get_device(old_id) is None
    device = store.get_device(new_id)
    assert device is not None and device.status is DeviceStatus.ACTIVE
    reenrolled = [json.loads(e.detail) for e in store.read_audit(new_id)
                  if e.event == "reenrolled"]
    assert reenrolled and reenrolled[0]["replaces"] == old_id
    works(m)  # in its new PCR state, which is its new baseline


def test_bound_key_advice_leads_back(stack: Stack, store: RedisStore, swtpm: SwtpmProcess,
                                     tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path, "dev1", "--bind-pcrs")
    works(m)
    change_pcr(swtpm)
    rc, doc = m.run("status")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "pcr_mismatch") and "unseal" in doc["message"]
    assert admin_cli(stack, "approve", "dev1")[0] == EXIT_REFUSED  # the server saw nothing
    assert follow(stack, doc["message"]) == [0, EXIT_OK]  # allow-reenroll, enroll --force
    assert m.state().bind_pcrs is True
    works(m)
    assert "reenroll_allowed" in events(store) and "reenrolled" in events(store)


def test_check_follows_the_server_after_approve(stack: Stack, store: RedisStore,
                                                swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    works(m)
    change_pcr(swtpm)
    rc, doc = m.run("check")
    assert rc == EXIT_REFUSED and doc["changed"], doc
    # status (refused: the server records the state), approve, status (learns the view)
    assert follow(stack, doc["message"]) == [EXIT_REFUSED, 0, EXIT_OK]
    rc, doc = m.run("check")
    assert rc == EXIT_OK and doc["ok"] is True and doc["baselines"] == "server", doc
    works(m)
    reset_pcr(swtpm)  # the replaced enrolled state: the check agrees with the server
    assert m.run("check")[0] == EXIT_REFUSED
    assert m.run("status")[0] == EXIT_REFUSED


def test_already_enrolled_advice_leads_back(stack: Stack, store: RedisStore,
                                            swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    other_home = machine(swtpm, tmp_path, "second-home")  # same TPM, home lost
    rc, doc = other_home.enroll(stack, "dev1-again")
    assert (rc, doc["error"]) == (EXIT_REFUSED, "already_enrolled"), doc
    # allow-reenroll <its EK fingerprint>, then the same enroll command with --force
    assert follow(stack, doc["message"]) == [0, EXIT_OK]
    assert other_home.state().name == "dev1-again"
    works(other_home)
    assert m.run("status")[0] != EXIT_OK  # the old enrollment is gone


def test_deleted_device_is_told_how_to_come_back(stack: Stack, store: RedisStore,
                                                 swtpm: SwtpmProcess, tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    assert admin_cli(stack, "delete", "dev1", "--yes")[0] == 0
    old_id = m.state().device_id
    rc, doc = m.run("status")  # nothing authenticated answers: a network error, not a refusal
    assert (rc, doc["error"]) == (EXIT_NETWORK, "network"), doc
    assert follow(stack, doc["message"]) == [EXIT_OK]  # enroll --force
    assert m.state().device_id != old_id
    works(m)


def test_superseded_state_is_accepted_during_the_grace(stack: Stack, store: RedisStore,
                                                       swtpm: SwtpmProcess,
                                                       tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    change_pcr(swtpm)
    assert m.run("status")[0] == EXIT_REFUSED
    out = io.StringIO()
    rc = admin.run(["approve", "dev1", "--json"], stdout=out, stderr=io.StringIO(),
                   env={**stack.env, "ATTESTGATE_BASELINE_GRACE": "3600"}, clock=time.time,
                   rng=os.urandom)
    assert rc == 0 and json.loads(out.getvalue())["grace"] == 3600
    assert m.run("status")[0] == EXIT_OK
    reset_pcr(swtpm)  # the superseded enrolled state: still accepted for an hour
    assert m.run("status")[0] == EXIT_OK
    rows = admin_cli(stack, "baseline", "list", "dev1")[1]["baselines"]
    assert [b["state"] for b in rows] == ["current", "superseded"]
    assert admin_cli(stack, "baseline", "remove", "dev1", rows[1]["id"])[0] == 0
    assert m.run("status")[1]["error"] == "pcr_mismatch"


def live_session(tpm: SwtpmProcess, m: Machine) -> tuple[threading.Thread, dict[str, Any]]:
    """A `follow` session of the machine's current enrollment, the TPM released once open;
    returns the thread and where it records how the session ended."""
    with Tpm(tpm.tcti) as t:
        ch = flows.connect(t, m.state(), lambda _: None)
    ch.request(Command.FOLLOW)
    ended: dict[str, Any] = {}

    def run() -> None:
        with ch:
            try:
                while True:
                    ch.next_push(timeout=10)
            except (Refused, NetworkError) as exc:
                ended["exc"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, ended


def test_reenrollment_and_delete_close_the_old_sessions(stack: Stack, store: RedisStore,
                                                        swtpm: SwtpmProcess,
                                                        tmp_path: Path) -> None:
    m = enrolled(stack, swtpm, tmp_path)
    thread, ended = live_session(swtpm, m)
    assert admin_cli(stack, "allow-reenroll", "dev1")[0] == 0
    rc, doc = m.enroll(stack, "dev1", "--force")
    assert rc == EXIT_OK, doc
    thread.join(8)
    assert not thread.is_alive()
    assert isinstance(ended["exc"], Refused) and ended["exc"].code is ErrorCode.REVOKED

    thread, ended = live_session(swtpm, m)  # the new enrollment's session
    rc, doc = admin_cli(stack, "delete", "dev1", "--yes")
    assert rc == 0 and doc["gateways_notified"] == 1, doc
    thread.join(8)
    assert not thread.is_alive()
    assert isinstance(ended["exc"], Refused) and ended["exc"].code is ErrorCode.REVOKED



def test_name_taken_advice_leads_back(swtpm_template: TemplateTpm,
                                      swtpm_template_other_ca: TemplateTpm,
                                      swtpm_factory: SwtpmFactory, tmp_path: Path) -> None:
    """`name_taken` says "pick another --name": the same enroll with another name works.
    Names are unique in any case, so DEV1 is taken by dev1 (and nothing is stored). Two
    TPMs with different EKs: one from each of two trusted CAs."""
    trust = tmp_path / "trust"
    trust.mkdir()
    for template in (swtpm_template, swtpm_template_other_ca):
        for cert in template.trust_dir.iterdir():
            shutil.copy(cert, trust / f"{template.ca_name}-{cert.name}")
    with Stack.start(tmp_path / "stack", ca_dir=trust, settings=SETTINGS) as two_cas:
        store = RedisStore(two_cas.redis.url)
        try:
            enrolled(two_cas, swtpm_factory(swtpm_template), tmp_path, "dev1")
            other = machine(swtpm_factory(swtpm_template_other_ca), tmp_path, "other")
            rc, doc = other.enroll(two_cas, "DEV1")
            assert (rc, doc["error"]) == (EXIT_REFUSED, "name_taken"), doc
            assert "pick another --name" in doc["message"], doc
            assert [d.name for d in store.list_devices()] == ["dev1"]  # nothing stored
            rc, doc = other.enroll(two_cas, "dev2")  # the advice, followed
            assert rc == EXIT_OK, doc
            works(other)
        finally:
            store.close()
