"""A whole attestgate stack as real processes on ports of its own, for integration tests.

``Stack.start(dir, ca_dir)`` runs redis-server, the gateway and one worker of each
service (``extra_workers`` adds more) with ``python -m services.<name>``, exactly
as honcho or supervisord would, each with its own logs under ``dir/logs``. With
``console=True`` the web console runs too, on its own bus endpoints, which the workers
connect to as to a second gateway (``console_url`` is its address).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from shared.ops_settings import METRICS_OFFSETS
from tests.support.ports import free_port, free_port_block
from tests.support.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 20.0


@dataclass
class Stack:
    directory: Path
    redis: RedisServer
    env: dict[str, str]
    gateway_port: int
    procs: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    console_port: int = 0

    @classmethod
    def start(cls, directory: Path, *, ca_dir: Path | None = None,
              settings: Mapping[str, str] | None = None,
              workers: Mapping[str, int] | None = None, console: bool = False,
              redis_config: Path | None = None, gateway_port: int = 0) -> Self:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "logs").mkdir(exist_ok=True)
        redis = RedisServer.start(directory / "redis", redis_config)
        gateway_port = gateway_port or free_port()  # the same port again: a restart
        env = {
            **os.environ,
            "ATTESTGATE_LISTEN": f"127.0.0.1:{gateway_port}",
            "ATTESTGATE_REDIS_URL": redis.url,
            "ATTESTGATE_BUS": f"tcp://127.0.0.1:{free_port()}",
            "ATTESTGATE_EVENTS": f"tcp://127.0.0.1:{free_port()}",
            "ATTESTGATE_SERVER_HOME": str(directory / "server"),
            "ATTESTGATE_ENROLL_POLICY": "require-ek-cert" if ca_dir else "tofu",
            "ATTESTGATE_EK_CA_DIR": str(ca_dir or ""),
            "ATTESTGATE_LOG_LEVEL": "INFO",
            # Each process's /metrics and /healthz: base port + its offset (shared/ops_settings).
            "ATTESTGATE_METRICS_LISTEN": f"127.0.0.1:{free_port_block(len(METRICS_OFFSETS))}",
            "PYTHONPATH": str(REPO),
            **(settings or {}),
        }
        console_port = 0
        if console:
            console_port = free_port()
            bus, events = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            env.update({
                "ATTESTGATE_BUS": f"{env['ATTESTGATE_BUS']},{bus}",
                "ATTESTGATE_EVENTS": f"{env['ATTESTGATE_EVENTS']},{events}",
                "ATTESTGATE_CONSOLE_BUS": bus,
                "ATTESTGATE_CONSOLE_EVENTS": events,
                "ATTESTGATE_CONSOLE_LISTEN": f"127.0.0.1:{console_port}",
            })
        stack = cls(directory, redis, env, gateway_port, console_port=console_port)
        try:
            stack.spawn("gateway")
            if console:
                stack.spawn("console")
            for name in ("attestor", "registry", "board"):
                for _ in range((workers or {}).get(name, 1)):
                    stack.spawn(name)
            stack.wait_gateway()
            if console:
                stack.wait_console()
        except BaseException:
            stack.stop()
            raise
        return stack

    def spawn(self, service: str) -> subprocess.Popen[bytes]:
        n = len(self.procs.get(service, []))
        log = open(self.directory / "logs" / f"{service}-{n}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{service}"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.setdefault(service, []).append(proc)
        return proc

    def wait_gateway(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, procs in self.procs.items():
                for p in procs:
                    if p.poll() is not None:
                        raise RuntimeError(f"{name} exited: {self.log(name)}")
            try:
                socket.create_connection(("127.0.0.1", self.gateway_port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"gateway not listening: {self.log('gateway')}")

    def wait_console(self) -> None:
        """Until the console answers /healthz 200: every service has a worker on its bus."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.procs["console"][0].poll() is not None:
                raise RuntimeError(f"console exited: {self.log('console')}")
            try:
                with urllib.request.urlopen(self.console_url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"console not ready: {self.log('console')}")

    @property
    def console_url(self) -> str:
        return f"http://127.0.0.1:{self.console_port}"

    def metrics_url(self, process: str) -> str:
        """``http://HOST:PORT`` of ``process``'s /metrics and /healthz."""
        host, _, base = self.env["ATTESTGATE_METRICS_LISTEN"].rpartition(":")
        return f"http://{host}:{int(base) + METRICS_OFFSETS[process]}"

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    def log(self, service: str, n: int = 0) -> str:
        path = self.directory / "logs" / f"{service}-{n}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def kill(self, service: str, n: int = 0, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[service][n]
        proc.send_signal(sig)
        proc.wait(10)

    def stop(self) -> None:
        for procs in self.procs.values():
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        for procs in self.procs.values():
            for p in procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        self.redis.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
