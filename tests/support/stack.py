"""A whole attestgate stack as real processes on ports of its own, for integration tests.

``Stack.start(dir, ca_dir)`` runs redis-server, the gateway and one worker of each
service (``extra_workers`` adds more) with ``python -m services.<name>``, exactly
as honcho or supervisord would, each with its own logs under ``dir/logs``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from tests.support.ports import free_port
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

    @classmethod
    def start(cls, directory: Path, *, ca_dir: Path | None = None,
              settings: Mapping[str, str] | None = None,
              workers: Mapping[str, int] | None = None) -> Self:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "logs").mkdir(exist_ok=True)
        redis = RedisServer.start(directory / "redis")
        gateway_port = free_port()
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
            "PYTHONPATH": str(REPO),
            **(settings or {}),
        }
        stack = cls(directory, redis, env, gateway_port)
        try:
            stack.spawn("gateway")
            for name in ("attestor", "registry", "board"):
                for _ in range((workers or {}).get(name, 1)):
                    stack.spawn(name)
            stack.wait_gateway()
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
