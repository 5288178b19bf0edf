"""Event log: parse / replay / verify a 100-event log vs the hashing a replay cannot avoid."""

from __future__ import annotations

import hashlib
from pathlib import Path

from bench._common import Result, Settings, median_ms
from shared.eventlog import parse_log, replay, verify
from shared.eventlog import types as t
from shared.eventlog.build import encode_log, measured_event

BANKS = ("sha1", "sha256", "sha384")
# A real 116-event log (3 banks, Secure Boot databases, GPT, grub); the row is left out when
# the handout test data is not on the machine.
REAL_LOG = Path("/work/shared/testdata/eventlogs/go-tpm-tools/ubuntu-2404-amd-sevsnp.bin")


def _log() -> bytes:
    """100 events shaped like a GCE Ubuntu boot: variables, separators, grub commands."""
    events = [measured_event(pcr, t.EV_SEPARATOR, bytes(4), BANKS) for pcr in range(8)]
    events += [measured_event(7, t.EV_EFI_VARIABLE_DRIVER_CONFIG, bytes(40 + 100 * i), BANKS)
               for i in range(5)]
    events += [measured_event(4, t.EV_EFI_BOOT_SERVICES_APPLICATION, bytes(96), BANKS,
                              measured=b"image") for _ in range(3)]
    cmds = [f"grub_cmd: set option_{i}=value_{i}".encode() for i in range(84)]
    events += [measured_event(8, t.EV_IPL, c + b"\x00", BANKS, measured=c[10:]) for c in cmds]
    return encode_log(events, BANKS)


def run(settings: Settings) -> list[Result]:
    data = _log()
    log = parse_log(data)
    quoted = {"sha256": replay(log)["sha256"]}
    runs = 50 if settings.quick else 300
    base = median_ms(lambda: [hashlib.sha256(bytes(64)).digest() for _ in range(100)], runs)
    label = "100 x sha256(64 B)"
    results = [
        Result("eventlog_parse_100", "eventlog", "parse 100 events",
               median_ms(lambda: parse_log(data), runs), "ms", label, base),
        Result("eventlog_replay_100", "eventlog", "replay 3 banks",
               median_ms(lambda: replay(log), runs), "ms", label, base),
        Result("eventlog_verify_100", "eventlog",
               "full verify of 100 events vs a sha256 quote, from bytes (parse, decode, "
               "replay, digest checks, components, anomalies)",
               median_ms(lambda: verify(data, quoted), runs), "ms", label, base),
    ]
    if REAL_LOG.is_file():
        real = REAL_LOG.read_bytes()
        real_quoted = {"sha256": replay(parse_log(real))["sha256"]}
        real_base = median_ms(lambda: hashlib.sha256(real).digest(), runs)
        results.append(Result(
            "eventlog_verify_real", "eventlog",
            f"full verify of a real {len(parse_log(real).events)}-event log ({REAL_LOG.name})",
            median_ms(lambda: verify(real, real_quoted), runs), "ms",
            f"sha256 of the log's {len(real) // 1024} KiB", real_base))
    return results
