"""Services refuse to start on anything they cannot honour, with one line and exit 2.

Every service's main runs as a real process (``python -m services.<name>``), as
honcho or supervisord would: bad settings, a port in use, an unwritable server
home, and server keys that are missing while the store depends on them. Then the
same for ``attestgate-admin server-key`` and ``init``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.audit_anchor import CHECKPOINT_FILE
from shared.keys import device_id_for
from shared.records import Baseline, Device, DeviceStatus
from shared.secret_policy import POLICY_KEY_FILE
from shared.store.redis_store import RedisStore
from shared.vault import (
    AUDIT_KEY_FILE,
    KEY_FILES,
    NOISE_KEY_FILE,
    STORAGE_KEY_FILE,
    StoreUsage,
    Vault,
    init_server_home,
)
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, RedisUnavailable
from tests.support.stack import REPO

pytestmark = pytest.mark.integration

_LOG_LINE = re.compile(r"ts=\S+ level=(debug|info|warning) ")  # logfmt (shared/logfmt.py)
SERVICES = ("gateway", "attestor", "registry", "board")
START_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


def base_env(tmp_path: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTESTGATE_")}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "ATTESTGATE_LISTEN": f"127.0.0.1:{free_port()}",
        "ATTESTGATE_REDIS_URL": redis_url,
        "ATTESTGATE_BUS": f"tcp://127.0.0.1:{free_port()}",
        "ATTESTGATE_EVENTS": f"tcp://127.0.0.1:{free_port()}",
        "ATTESTGATE_SERVER_HOME": str(tmp_path / "server"),
        "ATTESTGATE_ENROLL_POLICY": "tofu",
    }


@dataclass
class Exit:
    service: str
    code: int
    stderr: str

    def one_line(self) -> str:
        """The one line that says why (log lines of what went fine before are not counted)."""
        lines = [ln for ln in self.stderr.strip().splitlines() if not _LOG_LINE.match(ln)]
        assert len(lines) == 1, f"{self.service}: {self.stderr}"
        assert "Traceback" not in self.stderr
        return lines[0]


def start_all(env: Mapping[str, str], services: Sequence[str] = SERVICES) -> list[Exit]:
    """Start the services at once; each must exit by itself (they are refused)."""
    procs = {s: subprocess.Popen([sys.executable, "-m", f"services.{s}"], cwd=REPO, env=dict(env),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for s in services}
    out = []
    try:
        for name, p in procs.items():
            _, err = p.communicate(timeout=START_TIMEOUT)
            out.append(Exit(name, p.returncode, err.decode(errors="replace")))
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


# -- settings -----------------------------------------------------------------------------------

# A closed loopback port: no store is ever reached; a bad setting stops the service first.
BAD_SETTINGS = [
    ("ATTESTGATE_OPEN_ENROLLMENT", "maybe"),
    ("ATTESTGATE_OPEN_ENROLLMENT", "disabled"),
    ("ATTESTGATE_MAX_FAILURES", "0"),
    ("ATTESTGATE_REATTEST_INTERVAL", "-5"),
    ("ATTESTGATE_REATTEST_INTERVAL", "nan"),
    ("ATTESTGATE_PCR_SELECTION", "sha256:99"),
    ("ATTESTGATE_CONNECT_WINDOW", "bogus"),
    ("ATTESTGATE_LOG_LEVEL", "bogus"),
    ("ATTESTGATE_REDIS_URL", "notaurl"),
    ("ATTESTGATE_LISTEN", "7443"),
    ("ATTESTGATE_BUS", "127.0.0.1:7450"),
    ("ATTESTGATE_EVENTS", "tcp://127.0.0.1"),
    ("ATTESTGATE_ENROLL_POLICY", "open"),
    ("ATTESTGATE_ON_FAILURE", "explode"),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_setting_stops_every_service(tmp_path: Path, name: str, value: str) -> None:
    env = {**base_env(tmp_path, f"redis://127.0.0.1:{free_port()}/0"), name: value}
    for ex in start_all(env):
        assert ex.code == 2, ex
        line = ex.one_line()
        assert line.startswith(f"attestgate-{ex.service}: ") and name in line and value in line
    assert not (tmp_path / "server").exists()  # nothing was created


def test_missing_ek_ca_dir_stops_every_service(tmp_path: Path) -> None:
    env = {**base_env(tmp_path, f"redis://127.0.0.1:{free_port()}/0"),
           "ATTESTGATE_ENROLL_POLICY": "require-ek-cert",
           "ATTESTGATE_EK_CA_DIR": str(tmp_path / "no-such-ca")}
    for ex in start_all(env):
        assert ex.code == 2 and "ATTESTGATE_EK_CA_DIR" in ex.one_line(), ex


def test_missing_allowlist_stops_every_service(tmp_path: Path) -> None:
    env = {**base_env(tmp_path, f"redis://127.0.0.1:{free_port()}/0"),
           "ATTESTGATE_ENROLL_POLICY": "allowlist",
           "ATTESTGATE_EK_ALLOWLIST": str(tmp_path / "no-such-file")}
    for ex in start_all(env):
        assert ex.code == 2 and "ATTESTGATE_EK_ALLOWLIST" in ex.one_line(), ex


def test_port_in_use(tmp_path: Path) -> None:
    init_server_home(tmp_path / "server", lambda: StoreUsage(0, 0))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**base_env(tmp_path, f"redis://127.0.0.1:{free_port()}/0"),
               "ATTESTGATE_LISTEN": f"127.0.0.1:{port}"}
        (ex,) = start_all(env, ["gateway"])
        assert ex.code == 2 and "ATTESTGATE_LISTEN" in ex.one_line(), ex
        (ex,) = start_all({**env, "ATTESTGATE_LISTEN": f"127.0.0.1:{free_port()}",
                           "ATTESTGATE_BUS": f"tcp://127.0.0.1:{port}"}, ["gateway"])
        assert ex.code == 2 and "ATTESTGATE_BUS" in ex.one_line(), ex


def test_unwritable_server_home(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.flushall()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    env = {**base_env(tmp_path, redis_server.url),
           "ATTESTGATE_SERVER_HOME": str(blocker / "server")}
    for ex in start_all(env, ["gateway", "attestor", "registry"]):
        assert ex.code == 2, ex
        line = ex.one_line()
        assert "ATTESTGATE_SERVER_HOME" in line and str(blocker / "server") in line


# -- server keys --------------------------------------------------------------------------------


def a_device(name: str = "alpha") -> Device:
    noise = hashlib.sha256(name.encode()).digest()
    return Device(
        device_id=device_id_for(noise), name=name, noise_public=noise,
        status=DeviceStatus.ACTIVE, enrolled_at=1.0, ek_public=b"\x00\x01e", ek_cert=b"",
        ek_fingerprint=hashlib.sha256(b"ek" + noise).hexdigest(), ak_public=b"\x00\x01a",
        srk_public=b"\x00\x01s", post_public=b"\x00\x01p",
        baselines=(Baseline.of("sha256:0", {0: b"\x00" * 32}),), psk_sealed=b"\x5a" * 60,
    )


@pytest.fixture
def enrolled(tmp_path: Path, redis_server: RedisServer) -> dict[str, str]:
    """A server home with its keys and a store holding one device."""
    redis_server.flushall()
    init_server_home(tmp_path / "server", lambda: StoreUsage(0, 0))
    store = RedisStore(redis_server.url)
    store.create_device(a_device(), None)
    store.close()
    return base_env(tmp_path, redis_server.url)


@pytest.mark.parametrize("lost", [STORAGE_KEY_FILE, NOISE_KEY_FILE, AUDIT_KEY_FILE])
def test_a_lost_key_is_not_recreated_while_devices_depend_on_it(
        tmp_path: Path, enrolled: dict[str, str], lost: str) -> None:
    home = tmp_path / "server"
    if lost == AUDIT_KEY_FILE:  # the audit key protects the log: give it an entry
        store = RedisStore(enrolled["ATTESTGATE_REDIS_URL"])
        store.raw().xadd("ag:{audit}:log", {"event": "x"})
        store.close()
    (home / lost).unlink()
    for ex in start_all(enrolled, ["gateway", "attestor", "registry"]):
        assert ex.code == 2, ex
        line = ex.one_line()
        assert lost in line and "restore" in line and "backup" in line
    assert not (home / lost).exists()


def test_a_storage_key_that_does_not_open_the_devices_is_refused(
        tmp_path: Path, enrolled: dict[str, str]) -> None:
    """Keys present but not the ones the devices were enrolled under (another server home)."""
    for ex in start_all(enrolled, ["attestor", "registry"]):
        assert ex.code == 2, ex
        line = ex.one_line()
        assert "does not decrypt" in line and "restore" in line


def test_the_right_storage_key_starts(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.flushall()
    home = tmp_path / "server"
    init_server_home(home, lambda: StoreUsage(0, 0))
    dev = a_device()
    sealed = Vault.open(home).seal(b"\x07" * 32, dev.device_id)
    store = RedisStore(redis_server.url)
    store.create_device(dataclasses.replace(dev, psk_sealed=sealed), None)
    store.close()
    env = base_env(tmp_path, redis_server.url)
    log = tmp_path / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.registry"], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while "worker start" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)  # polling for readiness
        assert "worker start" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_typo_in_the_server_home_does_not_orphan_the_devices(
        tmp_path: Path, enrolled: dict[str, str]) -> None:
    typo = tmp_path / "srever"
    env = {**enrolled, "ATTESTGATE_SERVER_HOME": str(typo)}
    for ex in start_all(env, ["gateway", "attestor", "registry"]):
        assert ex.code == 2 and "restore" in ex.one_line() and str(typo) in ex.one_line(), ex
    assert not any((typo / f).exists() for f in KEY_FILES)


def test_first_start_creates_the_keys_once(tmp_path: Path, redis_server: RedisServer) -> None:
    """Gateway and workers start together on a fresh home and agree on one set of keys."""
    redis_server.flushall()
    env = base_env(tmp_path, redis_server.url)
    home = tmp_path / "server"
    log = open(tmp_path / "services.log", "wb")  # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, "-m", f"services.{s}"], cwd=REPO, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
             for s in ("gateway", "attestor", "registry", "attestor", "registry")]
    log.close()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (home / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), (tmp_path / "services.log").read_text()
            time.sleep(0.05)  # polling for readiness, as Stack.wait_gateway does
        run = _admin(env, "server-key")
        assert run.returncode == 0, run.stderr
        assert all(p.poll() is None for p in procs), (tmp_path / "services.log").read_text()
        assert all((home / f).stat().st_mode & 0o777 == 0o600 for f in KEY_FILES)
        assert (tmp_path / "services.log").read_text().count("first start: created") == 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)
    assert all(p.returncode == 0 for p in procs)


def _admin(env: Mapping[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.registry.admin", *argv, "--json"],
                          cwd=REPO, env=dict(env), capture_output=True, text=True, timeout=60,
                          check=False)


def test_server_key_never_creates_a_key(tmp_path: Path, redis_server: RedisServer) -> None:
    env = {**base_env(tmp_path, redis_server.url),
           "ATTESTGATE_SERVER_HOME": str(tmp_path / "typo")}
    run = _admin(env, "server-key")
    assert run.returncode == 3 and json.loads(run.stdout)["error"] == "no_server_key"
    assert "attestgate-admin init" in run.stderr and str(tmp_path / "typo") in run.stderr
    assert not (tmp_path / "typo").exists()


def test_admin_init_creates_the_keys_on_an_empty_store(tmp_path: Path,
                                                       redis_server: RedisServer) -> None:
    redis_server.flushall()
    env = base_env(tmp_path, redis_server.url)
    run = _admin(env, "init")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    # The secret-policy key (--bind-pcrs secrets) is the operator's alone: init makes it too.
    assert sorted(doc["created"]) == sorted((*KEY_FILES, POLICY_KEY_FILE))
    key = _admin(env, "server-key")
    assert key.returncode == 0 and json.loads(key.stdout)["fingerprint"] == doc["fingerprint"]
    again = _admin(env, "init")
    assert again.returncode == 0 and json.loads(again.stdout)["created"] == []


def test_admin_init_refuses_when_the_store_depends_on_lost_keys(
        tmp_path: Path, enrolled: dict[str, str]) -> None:
    (tmp_path / "server" / STORAGE_KEY_FILE).unlink()
    run = _admin(enrolled, "init")
    assert run.returncode == 3 and json.loads(run.stdout)["error"] == "keys_lost"
    assert "restore" in run.stderr and STORAGE_KEY_FILE in run.stderr
    assert not (tmp_path / "server" / STORAGE_KEY_FILE).exists()


def test_admin_init_new_audit_key_keeps_the_old_log_aside(
        tmp_path: Path, redis_server: RedisServer) -> None:
    """A log no key here can verify (lost audit.key, or from before audit keys)."""
    redis_server.flushall()
    env = base_env(tmp_path, redis_server.url)
    home = tmp_path / "server"
    init_server_home(home, lambda: StoreUsage(0, 0))
    (home / AUDIT_KEY_FILE).unlink()
    store = RedisStore(redis_server.url)
    store.raw().xadd("ag:{audit}:log", {"event": "old"})
    store.raw().set("ag:{audit}:head", "ab" * 32)
    (ex,) = start_all(env, ["registry"])
    assert ex.code == 2 and "--new-audit-key" in ex.one_line()
    plain = _admin(env, "init")
    assert plain.returncode == 3 and json.loads(plain.stdout)["error"] == "keys_lost"
    run = _admin(env, "init", "--new-audit-key")
    assert run.returncode == 0, run.stderr
    archived = json.loads(run.stdout)["audit_archived"]
    assert archived["entries"] == 1 and archived["head"] == "ab" * 32
    assert store.raw().xlen(archived["archive"]) == 1  # the old log is kept, aside
    store.close()
    verify = _admin(env, "audit", "--verify")
    assert verify.returncode == 0, verify.stdout
    (entry,) = json.loads(verify.stdout)["entries"]
    assert entry["event"] == "audit_rekeyed" and entry["detail"]["archive"] == archived["archive"]
    again = _admin(env, "init", "--new-audit-key")
    assert again.returncode == 3 and json.loads(again.stdout)["error"] == "audit_key_present"
