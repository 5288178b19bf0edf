"""Faults under supervisord: SIGKILL each process in turn while real devices post and connect.

The stack runs exactly as ``make supervise`` runs it: ``deploy/supervisord.conf``
(copied, with its paths pointed at a directory of this test's own) and
``deploy/run-redis.sh`` with ``deploy/redis.conf`` (AOF, ``appendfsync always``),
on ports of its own given through the ATTESTGATE_* variables. Two enrolled devices
(two swtpm, two EK CAs) keep posting and connecting while a board worker, the
attestor, the registry, the gateway and Redis are killed one after another.

What users rely on, and what is asserted:

* supervisord restarts every killed process (a new pid, RUNNING);
* every client call returns within its deadline: an acknowledgement, or an error
  code after which the client retries (never a hang), and the stack serves again
  after each restart;
* every acknowledged post is in Redis exactly once, under the id the client was
  given, even across the Redis SIGKILL; a post retried with its key is not stored twice;
* no device record is half-written: every record parses completely and every
  index entry points at a record.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from supervisor.xmlrpc import SupervisorTransport

from client import flows
from client import state as st
from client.channel import Channel, NetworkError, Refused
from client.tpm import Tpm
from shared.errors import AttestgateError, ErrorCode
from shared.records import DeviceStatus
from shared.store.redis_store import RedisStore
from shared.timing import CLIENT_CONNECT_TIMEOUT, CLIENT_REQUEST_TIMEOUT, REQUEST_TIMEOUT
from shared.wire import Command
from tests.support.ports import free_port
from tests.support.swtpm import SwtpmProcess, TemplateTpm
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration

log = logging.getLogger("attestgate.tests.faults")

REPO = Path(__file__).resolve().parents[2]
GROUP = "attestgate"
# In the order they are killed. Names as supervisord knows them (deploy/supervisord.conf).
VICTIMS = ("board-0", "attestor-0", "registry-0", "gateway", "redis")

# -- timing (one commented block, STYLE §10) ----------------------------------------------
START_TIMEOUT_S = 30.0  # supervisord + Redis + four Python services on a loaded machine
RESTART_TIMEOUT_S = 20.0  # supervisord restarts at once; startsecs (1-2 s) until RUNNING
RECOVERY_TIMEOUT_S = 25.0  # acks flow again after a restart (workers re-join the bus)
STOP_TIMEOUT_S = 40.0  # supervisord's stopwaitsecs: 30 s for Redis, 15 s for the others
POST_TIMEOUT_S = REQUEST_TIMEOUT + 3.0  # the gateway answers every request by its deadline
# The slowest legitimate client call: a connect (TCP + message 2 + the ATTEST reply).
CALL_DEADLINE_S = CLIENT_CONNECT_TIMEOUT + CLIENT_REQUEST_TIMEOUT
SLACK_S = 3.0
POST_INTERVAL_S = 0.05  # a steady load, not a flood: ~20 posts/s per device at most
RETRY_PAUSE_S = 0.2
FREEZE_MAX_S = 2.0  # a frozen victim is handed a client's call within milliseconds
STALL_S = 0.3  # a call this old waits on the frozen victim (one takes ~10-50 ms)
ACKS_PER_RECOVERY = 5  # acks after a restart that show the stack serves again
JOIN_TIMEOUT_S = CALL_DEADLINE_S + SLACK_S

# Codes a client may see while a process is down: each one means "not done, retry".
RETRY_CODES = frozenset({"network", ErrorCode.SERVICE_UNAVAILABLE.value,
                         ErrorCode.STORE_UNAVAILABLE.value, ErrorCode.BUSY.value})


# -- supervisord --------------------------------------------------------------------------


def _config(run: Path) -> str:
    """deploy/supervisord.conf with its paths pointed at ``run`` and this Python."""
    text = (REPO / "deploy" / "supervisord.conf").read_text()
    python = Path(sys.executable)
    for old, new in (("%(here)s/../.venv/bin/python", str(python)),
                     ("%(here)s/../.venv/bin", str(python.parent)),
                     ("%(here)s/../run", str(run)),
                     ("%(here)s/run-redis.sh", str(REPO / "deploy" / "run-redis.sh")),
                     ("%(here)s/..", str(REPO))):
        assert old in text, old
        text = text.replace(old, new)
    live = [line for line in text.splitlines() if not line.lstrip().startswith(";")]
    assert not [line for line in live if "%(here)s" in line]
    return text


@dataclass
class Supervised:
    """supervisord (a child of this test) running the attestgate group."""

    proc: subprocess.Popen[bytes]
    conf: Path
    sock: Path
    gateway_port: int
    redis_url: str
    env: dict[str, str]
    logs: Path

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    def processes(self) -> dict[str, dict[str, Any]]:
        """supervisord's view of every program (XML-RPC, as supervisorctl asks it)."""
        transport = SupervisorTransport(None, None, f"unix://{self.sock}")
        try:
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            return {p["name"]: p for p in proxy.supervisor.getAllProcessInfo()}
        finally:
            transport.close()

    def wait_running(self, name: str, not_pid: int, timeout: float) -> int:
        """Wait until ``name`` is RUNNING with a pid other than ``not_pid``; its pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, xmlrpc.client.Fault):
                info = self.processes()[name]
                if info["statename"] == "RUNNING" and info["pid"] not in (0, not_pid):
                    return int(info["pid"])
            time.sleep(0.05)
        raise AssertionError(f"{name} not restarted: {self.processes().get(name)}\n"
                             + self.tail(name))

    def tail(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM supervisord (our child, by pid): it stops every program, then exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def supervised(directory: Path, trust: Path) -> Iterator[Supervised]:
    run = directory / "run"
    logs = run / "logs"
    logs.mkdir(parents=True)  # supervisord creates no directories (Makefile: supervise)
    conf = directory / "supervisord.conf"
    conf.write_text(_config(run))
    gateway_port, redis_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {
        **os.environ,
        "ATTESTGATE_LISTEN": f"127.0.0.1:{gateway_port}",
        "ATTESTGATE_REDIS_PORT": str(redis_port),
        "ATTESTGATE_REDIS_DIR": str(run / "redis"),
        "ATTESTGATE_REDIS_URL": redis_url,
        "ATTESTGATE_BUS": f"tcp://127.0.0.1:{free_port()}",
        "ATTESTGATE_EVENTS": f"tcp://127.0.0.1:{free_port()}",
        # The console (in the group) on ports of its own; the workers need not reach it here.
        "ATTESTGATE_CONSOLE_LISTEN": f"127.0.0.1:{free_port()}",
        "ATTESTGATE_CONSOLE_BUS": f"tcp://127.0.0.1:{free_port()}",
        "ATTESTGATE_CONSOLE_EVENTS": f"tcp://127.0.0.1:{free_port()}",
        "ATTESTGATE_SERVER_HOME": str(run / "server"),
        "ATTESTGATE_ENROLL_POLICY": "require-ek-cert",
        "ATTESTGATE_EK_CA_DIR": str(trust),
        "ATTESTGATE_LOG_LEVEL": "INFO",
        # The load is steady but above the default per-device post rate (5/s).
        "ATTESTGATE_POST_RATE": "1000",
        "ATTESTGATE_POST_BURST": "1000",
        "PYTHONPATH": str(REPO),
    }
    with (logs / "supervisord.out").open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    sup = Supervised(proc, conf, run / "supervisor.sock", gateway_port, redis_url, env, logs)
    try:
        _wait_started(sup)
        yield sup
    finally:
        last = {}
        with contextlib.suppress(OSError, xmlrpc.client.Fault):
            last = sup.processes()
        sup.stop()
        for name, info in last.items():  # supervisord took every program down with it
            if info["pid"]:
                assert not _alive(int(info["pid"])), f"{name} outlived supervisord"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_started(sup: Supervised) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert sup.proc.poll() is None, (sup.logs / "supervisord.out").read_text()
        with contextlib.suppress(OSError, xmlrpc.client.Fault):
            procs = sup.processes()
            if set(VICTIMS) <= set(procs) and all(
                    p["statename"] == "RUNNING" for p in procs.values()):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", sup.gateway_port), 0.5).close()
                    return
        time.sleep(0.1)
    raise AssertionError("stack not up under supervisord:\n"
                         + "\n".join(sup.tail(n) for n in ("gateway", "redis")))


# -- the load: real devices posting and connecting ------------------------------------------


class LockedTpm:
    """One TPM shared by a device's threads, one command at a time (what tpmrm does)."""

    def __init__(self, tpm: Tpm) -> None:
        self._tpm = tpm
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._tpm, name)

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return method(*args, **kwargs)

        return locked


class Capture:
    """Stands in for a Channel in ``flows.post``: keeps the request so a retry resends it."""

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def request(self, cmd: Command, **fields: Any) -> dict[str, Any]:
        assert cmd is Command.POST
        self.fields = fields
        return {}


@dataclass
class Load:
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[str] = field(default_factory=Counter)  # "<call> <code>" -> n
    latencies: list[float] = field(default_factory=list)
    sent: dict[bytes, str] = field(default_factory=dict)  # key -> text, every post tried
    acked: dict[bytes, str] = field(default_factory=dict)  # key -> post id acknowledged
    unexpected: list[str] = field(default_factory=list)
    acks: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)
    inflight: dict[str, float] = field(default_factory=dict)  # thread -> call start

    def begin(self) -> float:
        with self.changed:
            self.inflight[threading.current_thread().name] = t0 = time.monotonic()
            self.changed.notify_all()
        return t0

    def record(self, call: str, code: str, latency: float) -> None:
        with self.changed:
            self.inflight.pop(threading.current_thread().name, None)
        with self.lock:
            self.outcomes[f"{call} {code}"] += 1
            self.latencies.append(latency)
            if code != "ok" and code not in RETRY_CODES:
                self.unexpected.append(f"{call} {code}")

    def ack(self, key: bytes, post_id: str) -> None:
        with self.changed:
            previous = self.acked.setdefault(key, post_id)
            assert previous == post_id, "one key acknowledged under two ids"
            self.acks += 1
            self.changed.notify_all()

    def wait_acks(self, n: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.acks >= n, timeout)

    def wait_stalled_call(self, since: float, timeout: float) -> bool:
        """Wait until a client call has been in flight for STALL_S since ``since``.

        A call that began before ``since`` counts too: when every device's connect was
        under way at the freeze, those connects are the ones the frozen victim holds (each
        device connects one at a time, so no later one can start until they time out).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            with self.changed:
                if any(max(t0, since) < now - STALL_S for t0 in self.inflight.values()):
                    return True
            time.sleep(0.01)
        return False


def _code(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return exc.code.value
    if isinstance(exc, NetworkError):
        return "network"
    if isinstance(exc, AttestgateError):
        return f"local {exc.code.value}"
    raise exc


@dataclass
class DeviceLoad:
    name: str
    state: st.ClientState
    tpm: LockedTpm
    load: Load
    connect_lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self) -> Channel | None:
        # One connect at a time per device: its message-1 timestamps must reach the
        # registry in increasing order (replay guard).
        with self.connect_lock:
            t0 = self.load.begin()
            try:
                ch = flows.connect(cast(Tpm, self.tpm), self.state, lambda _: None)
            except (Refused, NetworkError, AttestgateError) as exc:
                self.load.record("connect", _code(exc), time.monotonic() - t0)
                return None
            self.load.record("connect", "ok", time.monotonic() - t0)
            return ch

    def poster(self) -> None:
        ch: Channel | None = None
        n = 0
        try:
            while not self.load.stop.is_set():
                n += 1
                text = f"fault test {self.name} #{n}"
                capture = Capture()
                t0 = self.load.begin()
                try:
                    flows.post(cast(Tpm, self.tpm), self.state, cast(Channel, capture), text)
                except AttestgateError as exc:  # the TPM failed to sign: not the server's doing
                    self.load.record("sign", _code(exc), time.monotonic() - t0)
                    time.sleep(RETRY_PAUSE_S)
                    continue
                self.load.record("sign", "ok", time.monotonic() - t0)
                key = bytes(capture.fields["key"])
                with self.load.lock:
                    self.load.sent[key] = text
                # Retry the same request (same key, same signature) until acknowledged.
                while True:
                    if ch is None:
                        ch = self.connect()
                    if ch is not None:
                        t0 = self.load.begin()
                        try:
                            reply = ch.request(Command.POST, timeout=POST_TIMEOUT_S,
                                               **capture.fields)
                        except (Refused, NetworkError) as exc:
                            self.load.record("post", _code(exc), time.monotonic() - t0)
                            if isinstance(exc, NetworkError):
                                ch.close()
                                ch = None
                        else:
                            self.load.record("post", "ok", time.monotonic() - t0)
                            self.load.ack(key, str(reply["post_id"]))
                            break
                    if self.load.stop.is_set():
                        return  # this post's outcome stays unknown: it was never acked
                    time.sleep(RETRY_PAUSE_S)
                time.sleep(POST_INTERVAL_S)
        finally:
            if ch is not None:
                ch.close()

    def connector(self) -> None:
        while not self.load.stop.is_set():
            ch = self.connect()
            if ch is None:
                time.sleep(RETRY_PAUSE_S)
                continue
            with ch:
                t0 = self.load.begin()
                try:
                    ch.request(Command.STATUS, timeout=POST_TIMEOUT_S)
                    self.load.record("status", "ok", time.monotonic() - t0)
                except (Refused, NetworkError) as exc:
                    self.load.record("status", _code(exc), time.monotonic() - t0)
            time.sleep(RETRY_PAUSE_S)


# -- the test -----------------------------------------------------------------------------


def _check_devices(store: RedisStore, enrolled: dict[str, st.ClientState]) -> None:
    """Every device record complete, every index entry pointing at a record."""
    r = store.raw()
    ids = {k.decode().rsplit(":", 1)[1] for k in r.scan_iter(match="ag:{reg}:dev:*")}
    assert ids == {s.device_id for s in enrolled.values()}
    for name, state in enrolled.items():
        d = store.get_device(state.device_id)  # parses every field, or raises
        assert d is not None and d.name == name and d.noise_public.hex() == state.noise_public
        for found in (store.device_by_noise(d.noise_public), store.device_by_name(d.name),
                      store.device_by_ek(d.ek_fingerprint)):
            assert found is not None and found.device_id == d.device_id
        assert d.baselines and d.psk_sealed and d.ak_public and d.post_public
        # Infrastructure faults are not the device's doing: nothing counted against it.
        assert (d.status, d.failures) == (DeviceStatus.ACTIVE, 0), (name, d.status, d.failures)
    for index in r.scan_iter(match="ag:{reg}:idx:*"):
        for value in r.hvals(index):
            assert value.decode() in ids, f"{index!r} points at a missing device {value!r}"


@pytest.mark.timeout(240)
def test_faults_under_supervisord(tmp_path: Path, swtpm_factory: SwtpmFactory,
                                  swtpm_template: TemplateTpm,
                                  swtpm_template_other_ca: TemplateTpm) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    trust = tmp_path / "trust"
    trust.mkdir()
    templates = {"alice": swtpm_template, "bob": swtpm_template_other_ca}
    for t in templates.values():
        shutil.copyfile(t.ca_cert_path, trust / t.ca_cert_path.name)
    started = time.monotonic()
    load = Load()
    report: list[str] = []
    with supervised(tmp_path / "stack", trust) as sup:
        up_at = time.monotonic()
        tpms: list[Tpm] = []
        threads: list[threading.Thread] = []
        enrolled: dict[str, st.ClientState] = {}
        try:
            devices = []
            for name, template in templates.items():
                proc: SwtpmProcess = swtpm_factory(template)
                tpms.append(Tpm(proc.tcti))
                try:
                    enrolled[name] = flows.enroll(tpms[-1], tmp_path / f"home-{name}",
                                                  sup.server, name, None,
                                                  flows.ServerPin(None, True), False,
                                                  lambda _: None)
                except (Refused, NetworkError, AttestgateError) as exc:
                    raise AssertionError(f"enrolling {name} failed: {exc!r}\n"
                                         + sup.tail("gateway") + sup.tail("attestor-0")) from exc
                devices.append(DeviceLoad(name, enrolled[name], LockedTpm(tpms[-1]), load))
            threads = [threading.Thread(target=getattr(d, role), name=f"{d.name}-{role}")
                       for d in devices for role in ("poster", "connector")]
            for t in threads:
                t.start()
            assert load.wait_acks(ACKS_PER_RECOVERY * 2, RECOVERY_TIMEOUT_S), load.outcomes

            for victim in VICTIMS:
                old = int(sup.processes()[victim]["pid"])
                acks_before = load.acks
                # Freeze it first, so that it surely dies holding work: idle most of the
                # time, a plain SIGKILL would usually find it empty-handed.
                os.kill(old, signal.SIGSTOP)
                frozen = time.monotonic()
                held = load.wait_stalled_call(frozen, FREEZE_MAX_S)
                os.kill(old, signal.SIGKILL)
                killed = time.monotonic()
                assert held, f"no client call waited on the frozen {victim}"
                new = sup.wait_running(victim, old, RESTART_TIMEOUT_S)
                restarted = time.monotonic()
                assert load.wait_acks(load.acks + ACKS_PER_RECOVERY, RECOVERY_TIMEOUT_S), (
                    f"no acks after {victim} came back: {load.outcomes}\n{sup.tail(victim)}")
                report.append(f"{victim}: frozen {killed - frozen:.2f} s "
                              f"({'a call stalled' if held else 'no call stalled'}), "
                              f"pid {old}->{new}, RUNNING after "
                              f"{restarted - killed:.1f} s, serving after "
                              f"{time.monotonic() - killed:.1f} s "
                              f"({load.acks - acks_before} acks meanwhile)")
        finally:
            load.stop.set()
            for t in threads:
                t.join(JOIN_TIMEOUT_S)
            for tpm in tpms:
                tpm.close()
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"client threads hung: {hung}"

        store = RedisStore(sup.redis_url)
        try:
            stored = list(store.read_posts(None, 1_000_000))
            _check_devices(store, enrolled)
        finally:
            store.close()
        ran = time.monotonic() - up_at

    by_key = Counter(p.key for p in stored)
    summary = (f"faults under supervisord: {ran:.1f} s of load ({time.monotonic() - started:.1f}"
               f" s in all); {len(load.acked)} posts acknowledged, {len(stored)} stored; "
               f"max call latency {max(load.latencies):.2f} s; outcomes {dict(load.outcomes)}; "
               + "; ".join(report))
    print(summary)
    log.info(summary)

    # Clients got an answer or a code meaning "retry", within every call's deadline.
    assert load.unexpected == [], Counter(load.unexpected)
    assert max(load.latencies) < CALL_DEADLINE_S + SLACK_S
    # Every acknowledged post is stored exactly once, under the id the client was given.
    assert [k for k, n in by_key.items() if n > 1] == [], "a post was stored twice"
    stored_ids = {p.key: p.post_id for p in stored}
    assert {k: stored_ids.get(k) for k in load.acked} == load.acked
    # Nothing is stored that no client sent, and each text is the one sent with its key.
    assert {p.key: p.text for p in stored}.items() <= load.sent.items()
