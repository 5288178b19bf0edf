"""Which event log the client sends: --event-log, then $ATTESTGATE_EVENT_LOG, then the kernel's
log only for the machine's own TPM; ``none`` turns it off; an explicit unreadable log is a
usage error, the default is best effort."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.eventlog_source import event_log
from shared.errors import AttestgateError, ErrorCode


@pytest.fixture
def logs(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("flag", "env", "kernel"):
        out[name] = tmp_path / f"{name}.log"
        out[name].write_bytes(b"\x00" + name.encode())
    return out


def test_flag_then_env_then_kernel(logs: dict[str, Path]) -> None:
    env = {"ATTESTGATE_EVENT_LOG": str(logs["env"])}
    kernel = str(logs["kernel"])
    assert event_log(str(logs["flag"]), env, "device:/dev/tpmrm0", kernel) == b"\x00flag"
    assert event_log(None, env, "device:/dev/tpmrm0", kernel) == b"\x00env"
    assert event_log(None, {}, "device:/dev/tpmrm0", kernel) == b"\x00kernel"
    assert event_log(None, {}, "tabrmd", kernel) == b"\x00kernel"


@pytest.mark.parametrize("tcti", ["swtpm:host=127.0.0.1,port=2321", "mssim:port=1", None])
def test_the_kernel_log_is_not_sent_for_another_tpm(logs: dict[str, Path],
                                                    tcti: str | None) -> None:
    assert event_log(None, {}, tcti, str(logs["kernel"])) is None


def test_none_turns_it_off(logs: dict[str, Path]) -> None:
    env = {"ATTESTGATE_EVENT_LOG": str(logs["env"])}
    assert event_log("none", env, "device:/dev/tpmrm0", str(logs["kernel"])) is None
    assert event_log(None, {"ATTESTGATE_EVENT_LOG": "none"}, "device:/dev/tpm0",
                     str(logs["kernel"])) is None


def test_an_explicit_unreadable_log_is_a_usage_error(tmp_path: Path) -> None:
    for path, env in ((str(tmp_path / "absent"), {}),
                      (None, {"ATTESTGATE_EVENT_LOG": str(tmp_path / "absent")})):
        with pytest.raises(AttestgateError) as exc:
            event_log(path, env, None)
        assert exc.value.code is ErrorCode.BAD_REQUEST


def test_an_unreadable_kernel_log_means_no_log(tmp_path: Path) -> None:
    assert event_log(None, {}, "device:/dev/tpmrm0", str(tmp_path / "absent")) is None
