"""Settings are parsed strictly: every bad value is refused with one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import (
    DEFAULT_PCR_SELECTION,
    ConfigError,
    Consequence,
    EnrollPolicy,
    ServerConfig,
    boolean,
    integer,
    number,
    parse_window,
)
from shared.timing import REATTEST_INTERVAL

BASE = {"ATTESTGATE_ENROLL_POLICY": "tofu"}


def cfg(**env: str) -> ServerConfig:
    return ServerConfig.from_env({**BASE, **env})


def refused(name: str, value: str, **extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cfg(**{name: value}, **extra)
    err = info.value
    assert err.name == name and err.value == value
    line = str(err)
    assert "\n" not in line and name in line and repr(value) in line and err.allowed in line
    return err


def test_defaults() -> None:
    c = ServerConfig.from_env({})
    assert (c.listen_host, c.listen_port) == ("127.0.0.1", 7443)
    assert c.redis_url == "redis://127.0.0.1:6379/0"
    # The gateway's endpoint first (it binds it), then the web console's.
    assert c.bus_endpoints == ("tcp://127.0.0.1:7450", "tcp://127.0.0.1:7452")
    assert c.events_endpoints == ("tcp://127.0.0.1:7451", "tcp://127.0.0.1:7453")
    assert c.server_home == Path("run/server")
    assert c.enroll_policy is EnrollPolicy.REQUIRE_EK_CERT
    assert c.ek_ca_dir == Path("run/server/ek-ca")
    assert c.open_enrollment is True
    assert c.pcr_selection == DEFAULT_PCR_SELECTION
    assert c.max_failures == 3 and c.consequence is Consequence.LOCK
    assert c.reattest_interval == REATTEST_INTERVAL
    assert c.connect_window == "" and c.log_level == "INFO"


def test_empty_means_default() -> None:
    c = cfg(ATTESTGATE_MAX_FAILURES="", ATTESTGATE_OPEN_ENROLLMENT="", ATTESTGATE_LOG_LEVEL="")
    assert c.max_failures == 3 and c.open_enrollment is True and c.log_level == "INFO"


# -- booleans: exactly 1/0, true/false, yes/no, on/off, any case ----------------------------------


@pytest.mark.parametrize("value", ["0", "false", "False", "FALSE", "no", "NO", "No", "off", "OFF",
                                   " off "])
def test_open_enrollment_off_spellings(value: str) -> None:
    assert cfg(ATTESTGATE_OPEN_ENROLLMENT=value).open_enrollment is False


@pytest.mark.parametrize("value", ["1", "true", "True", "yes", "YES", "on", "On"])
def test_open_enrollment_on_spellings(value: str) -> None:
    assert cfg(ATTESTGATE_OPEN_ENROLLMENT=value).open_enrollment is True


@pytest.mark.parametrize("value", ["2", "nope", "disabled", "y", "n", "f", "t", "-1", "0.0"])
def test_boolean_anything_else_is_refused(value: str) -> None:
    err = refused("ATTESTGATE_OPEN_ENROLLMENT", value)
    assert "1/0, true/false, yes/no, on/off" in err.allowed


def test_boolean_reader_for_new_settings() -> None:
    assert boolean({"X": "off"}, "X", True) is False
    assert boolean({}, "X", False) is False
    with pytest.raises(ConfigError):
        boolean({"X": "maybe"}, "X", True)


# -- numbers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "1001", "3.5", "three", "1e3", "nan", " "])
def test_max_failures(value: str) -> None:
    if not value.strip():
        assert cfg(ATTESTGATE_MAX_FAILURES=value).max_failures == 3
        return
    assert "1 to 1000" in refused("ATTESTGATE_MAX_FAILURES", value).allowed


def test_max_failures_in_range() -> None:
    assert cfg(ATTESTGATE_MAX_FAILURES="1").max_failures == 1
    assert cfg(ATTESTGATE_MAX_FAILURES="1000").max_failures == 1000


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "-inf", "bogus", "86401", "0.05"])
def test_reattest_interval(value: str) -> None:
    refused("ATTESTGATE_REATTEST_INTERVAL", value)


def test_reattest_interval_in_range() -> None:
    assert cfg(ATTESTGATE_REATTEST_INTERVAL="0.3").reattest_interval == 0.3
    assert cfg(ATTESTGATE_REATTEST_INTERVAL="600").reattest_interval == 600.0


def test_integer_and_number_readers_for_new_settings() -> None:
    assert integer({"N": "20"}, "N", 5, 1, 100) == 20
    assert number({"R": "2.5"}, "R", 1.0, 0.1, 10.0) == 2.5
    for env in ({"N": "0"}, {"N": "x"}):
        with pytest.raises(ConfigError):
            integer(env, "N", 5, 1, 100)
    with pytest.raises(ConfigError):
        number({"R": "nan"}, "R", 1.0, 0.1, 10.0)


# -- choices --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), [
    ("ATTESTGATE_ENROLL_POLICY", "open"), ("ATTESTGATE_ENROLL_POLICY", "TOFU"),
    ("ATTESTGATE_ON_FAILURE", "explode"), ("ATTESTGATE_LOG_LEVEL", "bogus"),
    ("ATTESTGATE_LOG_LEVEL", "verbose"),
])
def test_choices(name: str, value: str) -> None:
    assert "expected one of" in refused(name, value).allowed


def test_log_level_any_case() -> None:
    assert cfg(ATTESTGATE_LOG_LEVEL="debug").log_level == "DEBUG"


# -- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["7443", "localhost", "127.0.0.1:0", "127.0.0.1:65536",
                                   "127.0.0.1:http", ":7443"])
def test_listen(value: str) -> None:
    refused("ATTESTGATE_LISTEN", value)


def test_listen_ipv6() -> None:
    c = cfg(ATTESTGATE_LISTEN="[::1]:7000")
    assert (c.listen_host, c.listen_port) == ("::1", 7000)


@pytest.mark.parametrize("value", ["notaurl", "http://127.0.0.1:6379", "redis://", "redis://h:x/0",
                                   "redis://h:99999/0", "redis://h:6379/abc", "unix://"])
def test_redis_url(value: str) -> None:
    refused("ATTESTGATE_REDIS_URL", value)


@pytest.mark.parametrize("value", ["redis://127.0.0.1:6379/0", "redis://:pw@h/1", "rediss://h",
                                   "unix:///run/redis.sock"])
def test_redis_url_accepted(value: str) -> None:
    assert cfg(ATTESTGATE_REDIS_URL=value).redis_url == value


@pytest.mark.parametrize("name", ["ATTESTGATE_BUS", "ATTESTGATE_EVENTS"])
@pytest.mark.parametrize("value", ["127.0.0.1:7450", "tcp://127.0.0.1", "udp://h:1", ",",
                                   "tcp://h:1,bogus", "tcp://h:0"])
def test_endpoints(name: str, value: str) -> None:
    refused(name, value)


def test_endpoints_list() -> None:
    c = cfg(ATTESTGATE_BUS="tcp://a:1, tcp://b:2")
    assert c.bus_endpoints == ("tcp://a:1", "tcp://b:2")


# -- PCRs and the window --------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["sha256:99", "sha256:24", "sha256:-1", "md5:0", "sha256",
                                   "sha256:", "sha256:0,0", "sha256:a", "sha256:0+sha256:1"])
def test_pcr_selection(value: str) -> None:
    refused("ATTESTGATE_PCR_SELECTION", value)


def test_pcr_selection_accepted() -> None:
    assert cfg(ATTESTGATE_PCR_SELECTION="sha256:0,7+sha1:0").pcr_selection == "sha256:0,7+sha1:0"


@pytest.mark.parametrize("value", ["bogus", "8-18", "08:00", "08:75-09:00", "25:00-26:00",
                                   "08:00-08:00", "8:00-18:00-19:00"])
def test_connect_window(value: str) -> None:
    refused("ATTESTGATE_CONNECT_WINDOW", value)


def test_connect_window_accepted() -> None:
    assert parse_window("08:00-18:00") == (480, 1080)
    assert parse_window("22:00-06:00") == (1320, 360)
    assert parse_window("") is None
    assert cfg(ATTESTGATE_CONNECT_WINDOW="08:00-18:00").connect_window == "08:00-18:00"


# -- files the enrollment policy needs ------------------------------------------------------------


def test_missing_ek_ca_dir(tmp_path: Path) -> None:
    c = ServerConfig.from_env({"ATTESTGATE_EK_CA_DIR": str(tmp_path / "nope")})
    with pytest.raises(ConfigError) as info:
        c.check_files()
    assert info.value.name == "ATTESTGATE_EK_CA_DIR"
    (tmp_path / "nope").mkdir()
    with pytest.raises(ConfigError):
        c.check_files()  # empty: no certificate file
    (tmp_path / "nope" / "root.pem").write_text("x")
    c.check_files()


def test_default_ek_ca_dir_is_checked_too(tmp_path: Path) -> None:
    c = ServerConfig.from_env({"ATTESTGATE_SERVER_HOME": str(tmp_path)})
    with pytest.raises(ConfigError) as info:
        c.check_files()
    assert info.value.name == "ATTESTGATE_EK_CA_DIR" and str(tmp_path / "ek-ca") in str(info.value)


def test_allowlist_policy_needs_its_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig.from_env({"ATTESTGATE_ENROLL_POLICY": "allowlist"})
    assert info.value.name == "ATTESTGATE_EK_ALLOWLIST"
    c = ServerConfig.from_env({"ATTESTGATE_ENROLL_POLICY": "allowlist",
                               "ATTESTGATE_EK_ALLOWLIST": str(tmp_path / "allow")})
    with pytest.raises(ConfigError):
        c.check_files()
    (tmp_path / "allow").write_text("ab\n")
    c.check_files()


def test_tofu_needs_no_files() -> None:
    cfg(ATTESTGATE_EK_CA_DIR="/nonexistent").check_files()
