"""The attest op with measured-boot event logs (protocol 3): need_log, log_inconsistent, and
refusals that say what changed. Memory store, quotes signed by builder keys, logs written by
``deploy.boot_log`` (the demo's synthetic boot) through ``shared.eventlog.build``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zlib
from typing import Any

import pytest
from device_builders import NOW, VAULT_KEY, TestDevice, make_device
from tpm_builders import quote_attest, sign_data, tpm_name

from client.flows import check_log_size
from deploy.boot_log import BANKS, demo_boot
from services.attestor.enroll import EnrollSettings, quote_nonce
from services.attestor.eventlogs import EVENTLOG_BUDGET, capped
from services.attestor.handler import AttestorDeps, handle
from services.attestor.policy import AttestPolicy
from shared.bus.codec import encode
from shared.bus.interface import Reply, Request
from shared.codec import pack
from shared.config import Consequence, EnrollPolicy
from shared.errors import AttestgateError, ErrorCode
from shared.eventlog import Change, Component, StateDiff, Verdict, parse_log, replay
from shared.eventlog.build import encode_log
from shared.eventlog.transport import (
    chunks,
    compress,
    decompress,
    log_digest,
)
from shared.eventlog.types import MAX_LOG_BYTES
from shared.messages import encode_request
from shared.records import Baseline
from shared.store.memory import MemoryStore
from shared.store.serialize import device_from_bytes, device_to_bytes
from shared.vault import Vault
from shared.wire import (
    LOG_CHUNK,
    MAX_BUS_MESSAGE,
    MAX_EVIDENCE_FIELD,
    MAX_LOG_BUS,
    MAX_LOG_TRANSFER,
    MAX_MESSAGE,
    MAX_REQUEST_ID,
    Command,
)

H = hashlib.sha256(b"handshake hash").digest()
SEL8 = "sha256:0,1,2,3,4,5,6,7"
SEL16 = "sha256:0,1,2,3,4,5,6,7,16"
OLD_KERNEL, NEW_KERNEL = "6.1.0-28-amd64", "6.1.0-31-amd64"


def log_of(kernel: str) -> bytes:
    return encode_log(demo_boot(kernel), BANKS)


def pcrs_of(log: bytes, indices: range | list[int] = range(8)) -> dict[int, bytes]:
    """What an honest TPM booted with ``log`` quotes (PCRs no event extends are zero)."""
    replayed = replay(parse_log(log))["sha256"]
    return {i: replayed.get(i, bytes(32)) for i in indices}


def deps(store: MemoryStore, selection: str = SEL8) -> AttestorDeps:
    return AttestorDeps(store, Vault(VAULT_KEY),
                        EnrollSettings(EnrollPolicy.TOFU, None, frozenset(), selection),
                        AttestPolicy(selection, 3, Consequence.LOCK, None))


def enrolled(store: MemoryStore, log: bytes | None, selection: str = SEL8,
             pcrs: dict[int, bytes] | None = None) -> TestDevice:
    """A device whose enrolled baseline is ``log``'s boot, with the log stored (if any)."""
    values = pcrs or pcrs_of(log or log_of(OLD_KERNEL))
    dev = make_device("laptop", baselines=(values,))
    ref = log_digest(log) if log else ""
    record = dataclasses.replace(dev.record, baselines=(Baseline.of(selection, values, ref),))
    store.devices[dev.device_id] = record
    if log:
        store.put_event_log(dev.device_id, ref, compress(log))
    return dataclasses.replace(dev, record=record)


def quote(dev: TestDevice, pcrs: dict[int, bytes], **extra: Any) -> dict[str, Any]:
    attest = quote_attest(pcrs, extra_data=quote_nonce(H), signer=tpm_name(dev.record.ak_public))
    return {"device_id": dev.device_id, "h": H, "attest": attest,
            "signature": sign_data(dev.ak, attest),
            "pcrs": {str(i): v for i, v in pcrs.items()}, **extra}


def attest(store: MemoryStore, body: dict[str, Any], selection: str = SEL8) -> Reply:
    return handle(Request("r1", "attestor", "attest", body, NOW + 5), deps(store, selection), NOW)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


# -- the protocol: ask only when no baseline matches ------------------------------------------


def test_matching_quote_is_accepted_without_the_log(store: MemoryStore) -> None:
    log = log_of(OLD_KERNEL)
    dev = enrolled(store, log)
    reply = attest(store, quote(dev, pcrs_of(log), log_size=len(log)))
    assert reply.ok and "need_log" not in reply.body  # one round trip
    assert [e.event for e in store.read_audit()] == ["attest_ok"]


def test_a_mismatch_asks_for_the_log_and_counts_nothing(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_size=len(new)))
    assert reply.ok and reply.body == {"need_log": True}
    assert store.devices[dev.device_id].failures == 0
    assert store.read_audit() == []


def test_kernel_update_refusal_names_the_component(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_size=len(new), log_z=compress(new)))
    assert reply.error is ErrorCode.PCR_MISMATCH
    assert [c["pcr"] for c in reply.body["changed"]] == [4]  # the PCR diff, as today
    ev = reply.body["eventlog"]
    assert ev["verdict"] == "kernel_update"
    assert ev["verdicts"] == ["kernel_update"]
    assert ev["changed_pcrs"] == [4]  # 8 and 9 changed too, but nothing vouches for them
    apps = [c for c in ev["changes"] if c["kind"] == "boot_application"]
    assert len(apps) == 1 and apps[0]["pcr"] == 4 and apps[0]["verdict"] == "kernel_update"
    assert apps[0]["verified"] is False and apps[0]["new"]["hint"] is True  # no name covered
    assert ev["summary"] == ("the Linux kernel changed; firmware, Secure Boot and the boot "
                             "loader are unchanged; this usually follows a system update")
    device = store.devices[dev.device_id]
    assert device.failures == 1
    # The refused state keeps its log, so that `approve` adopts a baseline with a log.
    assert device.last_refused is not None and device.last_refused.log == log_digest(new)
    assert store.get_event_log(dev.device_id, log_digest(new)) == compress(new)
    assert json.loads(device.last_eventlog) == ev
    [entry] = store.read_audit()
    assert entry.event == "attest_refused" and json.loads(entry.detail)["eventlog"] == ev


def test_with_grub_pcrs_quoted_the_kernel_names_are_verified(store: MemoryStore) -> None:
    sel = "sha256:0,1,2,3,4,5,6,7,8,9"
    old, new = log_of(OLD_KERNEL), log_of(NEW_KERNEL)
    dev = enrolled(store, old, sel, pcrs_of(old, range(10)))
    reply = attest(store, quote(dev, pcrs_of(new, range(10)), log_z=compress(new)), sel)
    ev = reply.body["eventlog"]
    assert ev["verdict"] == "kernel_update" and ev["changed_pcrs"] == [4, 8, 9]
    assert ev["summary"].startswith(
        "the Linux kernel changed (vmlinuz-6.1.0-28-amd64 → vmlinuz-6.1.0-31-amd64); firmware,")
    cmdline = next(c for c in ev["changes"] if c["kind"] == "kernel_cmdline")
    assert cmdline["verified"] is True and cmdline["verdict"] == "kernel_update"
    assert OLD_KERNEL in cmdline["old"]["value"] and NEW_KERNEL in cmdline["new"]["value"]


def test_after_approval_the_new_boot_is_accepted(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    new = log_of(NEW_KERNEL)
    attest(store, quote(dev, pcrs_of(new), log_size=len(new), log_z=compress(new)))
    d = store.devices[dev.device_id]
    assert d.last_refused is not None
    store.devices[dev.device_id] = dataclasses.replace(
        d, baselines=(*d.baselines, d.last_refused), last_refused=None)  # what approve does
    assert attest(store, quote(dev, pcrs_of(new), log_size=len(new))).ok


def test_the_closest_baseline_is_compared(store: MemoryStore) -> None:
    """Enrolled on -28, approved -31, now -32: the diff is -31 -> -32, not -28 -> -32."""
    first, second, third = log_of(OLD_KERNEL), log_of(NEW_KERNEL), log_of("6.1.0-32-amd64")
    dev = enrolled(store, first)
    b2 = Baseline.of(SEL8, pcrs_of(second), log_digest(second))
    store.put_event_log(dev.device_id, b2.log, compress(second))
    store.devices[dev.device_id] = dataclasses.replace(
        dev.record, baselines=(*dev.record.baselines, b2))
    reply = attest(store, quote(dev, pcrs_of(third), log_z=compress(third)))
    apps = [c for c in reply.body["eventlog"]["changes"] if c["kind"] == "boot_application"]
    assert apps[0]["old"]["digest"] == parse_log(second).events[-2].digests["sha256"].hex()


def test_a_log_that_does_not_replay_is_refused(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    stale = log_of("6.1.0-30-amd64")  # another boot's log, sent with this boot's quote
    reply = attest(store, quote(dev, pcrs_of(log_of(NEW_KERNEL)), log_size=len(stale),
                                log_z=compress(stale)))
    assert reply.error is ErrorCode.LOG_INCONSISTENT
    d = store.devices[dev.device_id]
    assert d.failures == 1  # counted: it came over the device's authenticated channel
    assert d.last_refused is None and d.last_eventlog == ""
    assert store.get_event_log(dev.device_id, log_digest(stale)) is None
    [entry] = store.read_audit()
    assert json.loads(entry.detail)["code"] == "log_inconsistent"


def test_a_log_that_does_not_parse_is_inconsistent(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    new = pcrs_of(log_of(NEW_KERNEL))
    reply = attest(store, quote(dev, new, log_size=9, log_z=compress(b"not a log")))
    assert reply.error is ErrorCode.LOG_INCONSISTENT


def test_a_log_of_another_bank_is_inconsistent(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    sha1_only = encode_log(demo_boot(NEW_KERNEL), ("sha1",), crypto_agile=False)
    reply = attest(store, quote(dev, pcrs_of(log_of(NEW_KERNEL)), log_z=compress(sha1_only)))
    assert reply.error is ErrorCode.LOG_INCONSISTENT


def test_without_logs_the_refusal_is_as_today(store: MemoryStore) -> None:
    dev = enrolled(store, None)
    new = pcrs_of(log_of(NEW_KERNEL))
    reply = attest(store, quote(dev, new))
    assert reply.error is ErrorCode.PCR_MISMATCH
    assert set(reply.body) == {"changed", "failures", "max_failures", "status"}


def test_a_log_but_no_baseline_log_refuses_as_today_and_keeps_the_log(store: MemoryStore
                                                                     ) -> None:
    dev = enrolled(store, None)
    new = log_of(NEW_KERNEL)
    reply = attest(store, quote(dev, pcrs_of(new), log_size=len(new)))
    assert reply.body == {"need_log": True}
    reply = attest(store, quote(dev, pcrs_of(new), log_size=len(new), log_z=compress(new)))
    assert reply.error is ErrorCode.PCR_MISMATCH and "eventlog" not in reply.body
    refused = store.devices[dev.device_id].last_refused
    assert refused is not None and refused.log == log_digest(new)  # approve adopts it


def test_a_quoted_pcr_no_log_describes_is_an_unknown_change(store: MemoryStore) -> None:
    """PCR 16 changed, the logs (0-9) are identical: never "nothing changed"."""
    log = log_of(OLD_KERNEL)
    before = pcrs_of(log, [*range(8), 16])
    dev = enrolled(store, log, SEL16, before)
    after = {**before, 16: hashlib.sha256(bytes(32) + b"\x01" * 32).digest()}
    reply = attest(store, quote(dev, after, log_z=compress(log)), SEL16)
    ev = reply.body["eventlog"]
    assert ev["verdict"] == "unknown_change"
    assert ev["changed_pcrs"] == [16]
    assert any("PCR 16" in p for p in ev["problems"])
    assert "operator" in ev["summary"]


def test_a_huge_diff_is_cut_to_the_budget_and_says_so() -> None:
    side = Component(4, "boot_application", "\\EFI\\x" * 40, "", "ab" * 32, False, True, 0)
    many = tuple(Change(4, "boot_application", Verdict.BOOTLOADER_UPDATE, side, side)
                 for _ in range(500))
    diff = StateDiff(Verdict.BOOTLOADER_UPDATE, (Verdict.BOOTLOADER_UPDATE,), (4,), many, (),
                     "the boot loader changed")
    doc = capped(diff)
    assert len(pack(doc)) <= EVENTLOG_BUDGET
    assert doc["omitted"] == 500 - len(doc["changes"]) > 0
    small = capped(dataclasses.replace(diff, changes=many[:3]))
    assert "omitted" not in small and len(small["changes"]) == 3


# -- transport and storage --------------------------------------------------------------------


def test_chunks_cover_the_log_in_order() -> None:
    log = bytes(range(256)) * 1000  # 256 000 B
    parts = list(chunks(log))
    assert [off for off, _ in parts] == list(range(0, len(log), LOG_CHUNK))
    assert all(len(p) <= LOG_CHUNK for _, p in parts)
    assert b"".join(p for _, p in parts) == log


def test_decompress_is_bounded() -> None:
    bomb = zlib.compress(bytes(MAX_LOG_TRANSFER + 1), 9)
    with pytest.raises(AttestgateError) as exc:
        decompress(bomb)
    assert exc.value.code is ErrorCode.TOO_LARGE
    for bad in (b"garbage", zlib.compress(b"log")[:-2], zlib.compress(b"log") + b"x"):
        with pytest.raises(AttestgateError) as exc:
            decompress(bad)
        assert exc.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(AttestgateError) as exc:
        compress(bytes(MAX_LOG_TRANSFER + 1))
    assert exc.value.code is ErrorCode.TOO_LARGE


def test_store_refuses_oversized_or_misnamed_logs(store: MemoryStore) -> None:
    with pytest.raises(AttestgateError) as exc:
        store.put_event_log("dev", "ab" * 32, bytes(300 * 1024))
    assert exc.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(AttestgateError) as exc:
        store.put_event_log("dev", "../x", b"z")
    assert exc.value.code is ErrorCode.BAD_REQUEST


def test_device_record_round_trips_log_reference_and_diff() -> None:
    dev = make_device("x")
    b = Baseline.of(SEL8, dev.pcrs, "ab" * 32)
    d = dataclasses.replace(dev.record, baselines=(b,), last_refused=b,
                            last_eventlog='{"verdict":"kernel_update"}')
    assert device_from_bytes(device_to_bytes(d)) == d
    plain = dataclasses.replace(dev.record)  # no log: the stored form has no new keys
    raw = device_to_bytes(plain)
    assert b"evdiff" not in raw and b"log" not in raw
    assert device_from_bytes(raw) == plain


# -- sizes: every message of the transfer fits its limit ----------------------------------------


def test_a_full_chunk_fits_one_channel_message() -> None:
    msg = encode_request(MAX_REQUEST_ID, Command.LOG, offset=MAX_LOG_TRANSFER - LOG_CHUNK,
                         data=bytes(LOG_CHUNK))
    assert len(msg) <= MAX_MESSAGE
    assert MAX_LOG_TRANSFER == 1024 * 1024  # = the parser's cap
    assert MAX_LOG_TRANSFER == MAX_LOG_BYTES


def test_an_attest_with_the_largest_log_fits_one_bus_message() -> None:
    body = {"device_id": "d" * 64, "h": bytes(32), "ts": 2**62, "nonce": bytes(64),
            "attest": bytes(MAX_EVIDENCE_FIELD), "signature": bytes(MAX_EVIDENCE_FIELD),
            "pcrs": {str(i): bytes(32) for i in range(24)}, "log_size": MAX_LOG_TRANSFER,
            "log_z": bytes(MAX_LOG_BUS)}
    frame = encode(Request("r" * 64 + "-l", "attestor", "attest", body, 2.0**31))
    assert len(frame) <= MAX_BUS_MESSAGE


def test_an_enroll_with_the_largest_log_fits_one_bus_message() -> None:
    evidence = ("ek_public", "ek_cert", "ak_public", "srk_public", "srk_attest", "srk_signature",
                "post_public", "post_attest", "post_signature", "quote_attest", "quote_signature")
    body = {**{k: bytes(MAX_EVIDENCE_FIELD) for k in evidence}, "name": "n" * 64,
            "h": bytes(32), "noise_public": bytes(32), "token_id": "a" * 16,
            "pcrs": {str(i): bytes(32) for i in range(24)}, "log_z": bytes(MAX_LOG_BUS)}
    frame = encode(Request("r" * 64 + "-b", "attestor", "enroll_begin", body, 2.0**31))
    assert len(frame) <= MAX_BUS_MESSAGE


def test_the_client_refuses_a_log_the_server_could_not_take() -> None:
    check_log_size(None)
    check_log_size(log_of(OLD_KERNEL))
    with pytest.raises(AttestgateError) as exc:
        check_log_size(os.urandom(MAX_LOG_BUS + 1024))  # does not compress
    assert exc.value.code is ErrorCode.BAD_REQUEST


def test_a_device_keeps_one_refused_log_beyond_its_baselines(store: MemoryStore) -> None:
    dev = enrolled(store, log_of(OLD_KERNEL))
    a, b, c = (log_of(k) for k in ("6.1.0-29-amd64", "6.1.0-30-amd64", "6.1.0-31-amd64"))

    def refuse(log: bytes) -> None:
        reply = attest(store, quote(dev, pcrs_of(log), log_z=compress(log)))
        assert reply.error is ErrorCode.PCR_MISMATCH

    def kept() -> set[str]:
        return {digest for (_, digest) in store.event_logs}

    refuse(a)
    refuse(b)
    assert kept() == {log_digest(log_of(OLD_KERNEL)), log_digest(b)}  # a is forgotten
    d = store.devices[dev.device_id]
    assert d.last_refused is not None
    store.devices[dev.device_id] = dataclasses.replace(  # approve b
        d, baselines=(*d.baselines, d.last_refused), last_refused=None, failures=0)
    refuse(c)
    refuse(a)
    assert kept() == {log_digest(log_of(OLD_KERNEL)), log_digest(b), log_digest(a)}
