"""Measured-boot event logs in the protocol (protocol 3), on a real stack with swtpm.

The swtpm "boots" from an event log: each event's SHA-256 digest is extended into its PCR
(``deploy.boot_log.boot_tpm``). A device enrolls with that log; a second boot where one boot
application (the kernel) was measured differently is refused with that component named and
the verdict ``kernel_update``; after ``attestgate-admin approve`` it posts again. Under a rule
policy the same kernel update passes by rule (audited with the rule), a firmware update does
not, and a reference state added ahead (``baseline add --event-log``) is accepted.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import flows
from client import state as st
from client.channel import Channel, Refused, open_connect
from client.cli import main as client_main
from client.tpm import KeyBlob, Tpm
from deploy.boot_log import BANKS, boot_tpm, demo_boot
from shared.audit_anchor import CHECKPOINT_FILE
from shared.binding import quote_nonce
from shared.config import parse_host_port
from shared.errors import ErrorCode
from shared.eventlog import parse_log
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event, replace_event
from shared.eventlog.transport import chunks, log_digest
from shared.framing import FrameDecoder
from shared.hint import HintReason, parse_hint
from shared.keys import Psk, session_psk_message
from shared.store.redis_store import RedisStore
from shared.wire import LOG_CHUNK, MAGIC, MAX_LOG_BUS, PROTOCOL_VERSION, Command
from tests.support.clis import admin_cli, cli
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration

REAL_LOG = Path("/work/shared/testdata/eventlogs/go-tpm-tools/rhel8-uefi.bin")
EXIT_OK, EXIT_REFUSED = 0, 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, swtpm_template: TemplateTpm
          ) -> Iterator[Stack]:
    # The default PCR selection (sha256:0-7), as a real deployment has it.
    with Stack.start(tmp_path_factory.mktemp("stack"), ca_dir=swtpm_template.trust_dir,
                     settings={"ATTESTGATE_MAX_FAILURES": "5"}) as s:
        yield s


@pytest.fixture
def clean(stack: Stack) -> Iterator[RedisStore]:
    store = RedisStore(stack.redis.url)
    store.purge()
    (stack.directory / "server" / CHECKPOINT_FILE).unlink(missing_ok=True)
    yield store
    store.close()




def cli_text(*argv: str) -> tuple[int, str]:
    """The human output (stderr and stdout together)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = client_main([*argv, "-q"])
    return rc, out.getvalue()




def kernel_update(log: bytes) -> bytes:
    """``log`` after a kernel update: the last boot application in PCR 4 (the kernel, loaded
    after shim and grub) measured with another image digest. Nothing else changes."""
    parsed = parse_log(log)
    apps = [i for i, e in enumerate(parsed.events)
            if e.pcr == 4 and e.type == t.EV_EFI_BOOT_SERVICES_APPLICATION]
    i = apps[-1]
    new = measured_event(4, t.EV_EFI_BOOT_SERVICES_APPLICATION, parsed.events[i].data,
                         parsed.banks, b"vmlinuz of the next kernel release")
    return encode_log(replace_event(parsed.events, i, new), parsed.banks)


class Device:
    def __init__(self, stack: Stack, tpm: SwtpmProcess, home: Path, log_dir: Path) -> None:
        self.stack, self.tpm, self.home, self.log_dir = stack, tpm, home, log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = log_dir / "current.log"

    def boot(self, log: bytes, *, reboot: bool = True) -> None:
        """Power-cycle the TPM (PCRs back to zero) and measure ``log`` into it."""
        if reboot:
            self.tpm.restart()
        boot_tpm(self.tpm.tcti, log)
        self.log_file.write_bytes(log)

    def args(self) -> list[str]:
        return ["--tpm", self.tpm.tcti, "--home", str(self.home),
                "--event-log", str(self.log_file)]

    def enroll(self, name: str) -> tuple[int, dict[str, Any]]:
        return cli("enroll", "--server", self.stack.server, "--name", name, "--tofu",
                   *self.args())

    def post(self, text: str) -> tuple[int, dict[str, Any]]:
        return cli("post", text, *self.args())


@pytest.fixture
def device(stack: Stack, clean: RedisStore, swtpm_factory: SwtpmFactory, tmp_path: Path) -> Device:
    return Device(stack, swtpm_factory(), tmp_path / "home", tmp_path / "logs")


def real_log() -> bytes:
    if not REAL_LOG.is_file():
        pytest.skip(f"{REAL_LOG} absent (the handout test data is not on this machine)")
    return REAL_LOG.read_bytes()


# -- item 6: a real log, a kernel update, approval ------------------------------------------


def test_kernel_update_on_a_real_log_is_named_and_then_approved(
        stack: Stack, clean: RedisStore, device: Device) -> None:
    first = real_log()
    device.boot(first, reboot=False)
    rc, doc = device.enroll("rhel8")
    assert rc == EXIT_OK, doc
    record = clean.get_device(doc["device_id"])
    assert record.baselines[0].log == log_digest(first)
    assert clean.get_event_log(record.device_id, log_digest(first)) is not None
    assert device.post("first boot")[0] == EXIT_OK

    second = kernel_update(first)
    device.boot(second)
    rc, doc = device.post("after the kernel update")
    assert rc == EXIT_REFUSED and doc["error"] == "pcr_mismatch", doc
    assert [c["pcr"] for c in doc["changed"]] == [4]
    ev = doc["eventlog"]
    assert ev["verdict"] == "kernel_update", ev
    [change] = ev["changes"]
    assert (change["pcr"], change["kind"], change["verdict"]) == (
        4, "boot_application", "kernel_update")
    assert change["old"]["digest"] != change["new"]["digest"]
    assert ev["summary"].startswith("the Linux kernel changed;")

    # The user's CLI: the sentence first, then the PCR diff, then the component.
    rc, text = cli_text("post", "again", *device.args())
    assert rc == EXIT_REFUSED
    lines = text.splitlines()
    assert lines[0].startswith("attestgate: refused: the Linux kernel changed;")
    pcr_line = next(i for i, line in enumerate(lines) if line.strip().startswith("PCR  4 —"))
    comp_line = next(i for i, line in enumerate(lines) if "boot_application" in line)
    assert 0 < pcr_line < comp_line
    assert "[kernel_update, hint]" in lines[comp_line]

    # The operator sees the same in `show` and in the audit log.
    rc, shown = admin_cli(stack, "show", "rhel8")
    assert rc == 0 and shown["last_eventlog"]["verdict"] == "kernel_update"
    assert shown["last_refused"]["event_log"] == log_digest(second)
    rc, audit = admin_cli(stack, "audit", "rhel8")
    refused = [e["detail"] for e in audit["entries"] if e["event"] == "attest_refused"]
    assert refused and refused[-1]["eventlog"]["verdict"] == "kernel_update"

    rc, approved = admin_cli(stack, "approve", "rhel8")
    assert rc == 0, approved
    rc, doc = device.post("approved: the new kernel")
    assert rc == EXIT_OK, doc
    after = clean.get_device(record.device_id)
    # approve replaces by default: the new state's log is kept, the old one is gone.
    assert [b.log for b in after.baselines] == [log_digest(second)]
    assert clean.get_event_log(record.device_id, log_digest(second)) is not None
    assert clean.get_event_log(record.device_id, log_digest(first)) is None


# -- item 4: a policy that survives the update; a reference state added ahead ---------------


def firmware_update(log: bytes) -> bytes:
    """``log`` with another S-CRTM version string (PCR 0): a firmware update."""
    parsed = parse_log(log)
    i = next(i for i, e in enumerate(parsed.events) if e.type == t.EV_S_CRTM_VERSION)
    new = measured_event(0, t.EV_S_CRTM_VERSION,
                         "GCE Virtual Firmware v2".encode("utf-16-le") + b"\0\0", parsed.banks)
    return encode_log(replace_event(parsed.events, i, new), parsed.banks)


def test_a_kernel_update_passes_by_rule_and_a_firmware_update_needs_a_reference_state(
        stack: Stack, clean: RedisStore, device: Device, tmp_path: Path) -> None:
    first = real_log()
    device.boot(first, reboot=False)
    rc, doc = device.enroll("rhel8")
    assert rc == EXIT_OK, doc
    device_id = doc["device_id"]

    # The operator starts from the template (the baseline's verified PCR 7 authorities: the
    # db certificate that signed shim, and shim's own vendor certificate), sets it for all.
    rc, tpl = admin_cli(stack, "policy", "template", "rhel8")
    assert rc == 0 and len(tpl["policy"]["boot_authorities"]) == 2, tpl
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(tpl["policy"]))
    rc, doc = admin_cli(stack, "policy", "set", "--default", str(policy))
    assert rc == 0, doc

    device.boot(kernel_update(first))
    rc, doc = device.post("a new kernel, signed as before")
    assert rc == EXIT_OK, doc
    rc, audit = admin_cli(stack, "audit", "rhel8")
    by_rule = [e["detail"] for e in audit["entries"] if e["event"] == "attest_ok_by_rule"]
    assert len(by_rule) == 1, audit
    rules = by_rule[0]["rules"]
    assert rules["accepted"] and rules["rules"] == ["boot_authorities"], rules
    assert rules["verdict"] == "kernel_update" and rules["policy"] == "default"
    assert clean.get_device(device_id).failures == 0

    # A firmware update is never accepted by rule: the user is told which rule and why.
    third = firmware_update(first)
    device.boot(third)
    rc, doc = device.post("new firmware")
    assert rc == EXIT_REFUSED and doc["rules"]["rules"] == ["firmware"], doc
    assert doc["eventlog"]["verdict"] == "firmware_update"
    rc, text = cli_text("post", "again", *device.args())
    assert rc == EXIT_REFUSED
    assert "The default rule policy did not accept it (rule: firmware):" in text
    assert "firmware changes need an approval" in text

    # The operator adds that state ahead from its log: accepted by exact baseline from then on.
    reference = tmp_path / "firmware-v2.log"
    reference.write_bytes(third)
    rc, doc = admin_cli(stack, "baseline", "add", "rhel8", "--event-log", str(reference))
    assert rc == 0 and doc["added"] and doc["event_log"] == log_digest(third), doc
    rc, doc = device.post("firmware v2, approved ahead")
    assert rc == EXIT_OK, doc
    rc, audit = admin_cli(stack, "audit", "rhel8")
    events = [e["event"] for e in audit["entries"]]
    assert events[-1] == "attest_ok" and "baseline_added" in events


# -- the log must replay; it travels in chunks ----------------------------------------------


def big_boot(kernel: str) -> bytes:
    """The demo boot plus 200 KiB of grub measurements in PCR 8 (outside the quote), so the
    log needs several LOG chunks."""
    events = demo_boot(kernel)
    filler = [measured_event(8, t.EV_IPL, f"grub_cmd: set x{i}={'y' * 1000}\0".encode(), BANKS)
              for i in range(200)]
    return encode_log([*events, *filler], BANKS)


def test_enroll_with_a_log_that_does_not_replay_is_refused(clean: RedisStore,
                                                           device: Device) -> None:
    device.boot(encode_log(demo_boot("6.1.0-28-amd64"), BANKS), reboot=False)
    device.log_file.write_bytes(encode_log(demo_boot("6.1.0-31-amd64"), BANKS))  # another boot
    rc, doc = device.enroll("liar")
    assert rc == EXIT_REFUSED and doc["error"] == "log_inconsistent", doc
    assert clean.list_devices() == []
    refused = [json.loads(e.detail) for e in clean.read_audit() if e.event == "enroll_refused"]
    assert refused[-1]["code"] == "log_inconsistent"


def test_a_large_log_travels_in_chunks_and_a_stale_one_is_refused(
        clean: RedisStore, device: Device) -> None:
    first = big_boot("6.1.0-28-amd64")
    assert len(first) > 3 * LOG_CHUNK
    device.boot(first, reboot=False)
    rc, doc = device.enroll("big")
    assert rc == EXIT_OK, doc
    assert clean.get_event_log(doc["device_id"], log_digest(first)) is not None

    second = big_boot("6.1.0-31-amd64")
    device.boot(second)
    rc, doc = device.post("x")
    assert rc == EXIT_REFUSED and doc["eventlog"]["verdict"] == "kernel_update", doc

    device.log_file.write_bytes(big_boot("6.1.0-30-amd64"))  # not what this boot measured
    rc, doc = device.post("x")
    assert rc == EXIT_REFUSED and doc["error"] == "log_inconsistent", doc
    assert "eventlog" not in doc


def test_without_a_log_everything_is_as_before(clean: RedisStore, device: Device) -> None:
    device.boot(encode_log(demo_boot("6.1.0-28-amd64"), BANKS), reboot=False)
    rc, doc = cli("enroll", "--server", device.stack.server, "--name", "plain", "--tofu",
                  "--tpm", device.tpm.tcti, "--home", str(device.home), "--event-log", "none")
    assert rc == EXIT_OK, doc
    assert clean.get_device(doc["device_id"]).baselines[0].log == ""
    device.boot(encode_log(demo_boot("6.1.0-31-amd64"), BANKS))
    rc, doc = cli("post", "x", "--tpm", device.tpm.tcti, "--home", str(device.home))
    assert rc == EXIT_REFUSED and doc["error"] == "pcr_mismatch"
    assert "eventlog" not in doc and [c["pcr"] for c in doc["changed"]] == [4]


@contextlib.contextmanager
def attest_asking_for_a_log(stack: Stack, device: Device, log_size: int
                            ) -> Iterator[tuple[Channel, st.ClientState]]:
    """A reconnect by hand up to the server's ``need_log`` (the TPM booted another state)."""
    state = st.load(device.home)
    host, port = parse_host_port(stack.server)
    with Tpm(device.tpm.tcti) as tpm:
        static = flows.unseal_static(tpm, state)
        key = KeyBlob.from_bytes(bytes.fromhex(state.psk_key))

        def psk(e_i: bytes, e_r: bytes) -> Psk:
            return Psk(tpm.hmac(key, session_psk_message(e_i, e_r)))

        ch = open_connect(host, port, static, bytes.fromhex(state.server_public),
                          time.time_ns(), psk)
        with ch:
            quote = tpm.quote(quote_nonce(ch.handshake_hash), state.selection)
            reply = ch.request(Command.ATTEST, attest=quote.attest, signature=quote.signature,
                               pcrs={str(i): v for i, v in quote.pcrs().items()},
                               log_size=log_size)
            assert reply == {"need_log": True}
            yield ch, state


def enrolled_then_updated(device: Device, name: str) -> None:
    device.boot(encode_log(demo_boot("6.1.0-28-amd64"), BANKS), reboot=False)
    rc, doc = device.enroll(name)
    assert rc == EXIT_OK, doc
    device.boot(encode_log(demo_boot("6.1.0-31-amd64"), BANKS))


def assert_uncounted(store: RedisStore, state: st.ClientState) -> None:
    d = store.get_device(state.device_id)
    assert d is not None and d.failures == 0 and d.last_refused is None
    assert [e.event for e in store.read_audit(state.device_id)
            if e.event == "attest_refused"] == []


def test_a_broken_chunk_sequence_closes_the_session_uncounted(
        stack: Stack, clean: RedisStore, device: Device) -> None:
    enrolled_then_updated(device, "chunky")
    with attest_asking_for_a_log(stack, device, 100) as (ch, state):
        with pytest.raises(Refused) as exc:
            ch.request(Command.LOG, offset=10, data=b"x" * 10)  # a gap
        assert exc.value.code is ErrorCode.PROTOCOL
    assert_uncounted(clean, state)


def test_a_log_that_does_not_compress_under_the_bus_cap_is_too_large(
        stack: Stack, clean: RedisStore, device: Device) -> None:
    enrolled_then_updated(device, "noisy")
    blob = os.urandom(MAX_LOG_BUS + 4096)  # random bytes do not compress
    with attest_asking_for_a_log(stack, device, len(blob)) as (ch, state):
        last = 0
        start = time.perf_counter()
        for offset, data in chunks(blob):
            last = ch.send(Command.LOG, offset=offset, data=data)
        with pytest.raises(Refused) as exc:
            ch.reply_to(last)
        took = time.perf_counter() - start
        assert exc.value.code is ErrorCode.TOO_LARGE
    print(f"\n{len(blob)} B in {len(blob) // LOG_CHUNK + 1} chunks: refused after "
          f"{took * 1000:.0f} ms")
    assert_uncounted(clean, state)


def test_a_protocol_2_client_is_told_to_upgrade(stack: Stack) -> None:
    host, port = parse_host_port(stack.server)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(MAGIC + bytes([2]) + b"C" + os.urandom(104))
        dec = FrameDecoder()
        frame = None
        while frame is None:
            data = s.recv(4096)
            assert data, "closed without a hint"
            dec.feed(data)
            frame = dec.next_frame()
    hint = parse_hint(frame)
    assert hint is not None and hint.reason is HintReason.VERSION
    assert hint.version == PROTOCOL_VERSION == 3  # a v2 client says "upgrade" for > 2
