"""A fleet of client devices against one stack: N swtpm instances, each provisioned on
its own (its own seeds, hence its own EK, and its own CA, all trusted by the stack),
each enrolled as its own device, driven from client processes of their own so that
the clients are not the bottleneck.

Client processes run :func:`client_main` in one of three modes:

* ``connect`` - attested connects (and closes) back to back until the stop time;
* ``post``    - one attested session, posts back to back until the stop time;
* ``hold``    - open idle attested sessions up to each of ``targets`` in turn, report
  after each, and keep them open until told to close.

All start together on ``go`` (a multiprocessing Event) so that the service CPU read
before and after covers only their work.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import shutil
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from bench.cpu import cpu_seconds
from client import flows
from client import state as st
from client.tpm import Tpm
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm, provision_template

CTX = multiprocessing.get_context("spawn")
JOIN_TIMEOUT_S = 300.0


def _quiet(_: str) -> None:
    pass


@dataclass
class Fleet:
    stack: Stack
    tpms: list[SwtpmProcess]
    homes: list[Path]
    enroll_ms: list[float] = field(default_factory=list)

    def service_pids(self, *names: str) -> list[int]:
        return [p.pid for n in names for p in self.stack.procs.get(n, [])]

    def cpu(self, *names: str) -> float:
        return sum(cpu_seconds(pid) for pid in self.service_pids(*names))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.stack.stop()
        for t in self.tpms:
            with contextlib.suppress(Exception):
                t.stop()


def start_fleet(root: Path, devices: int, settings: dict[str, str]) -> Fleet:
    """Provision ``devices`` TPMs (about 0.7 s each), start the stack, enroll each device."""
    templates: list[TemplateTpm] = []
    trust = root / "trust"
    trust.mkdir(parents=True)
    for n in range(devices):
        t = provision_template(root / f"template{n}", ca_name=f"attestgate-bench-ca-{n}")
        templates.append(t)
        for pem in t.trust_dir.iterdir():
            shutil.copy(pem, trust / f"{n}-{pem.name}")
    tpms: list[SwtpmProcess] = []
    stack: Stack | None = None
    try:
        for n, t in enumerate(templates):
            tpms.append(SwtpmProcess.start(root / f"tpm{n}", t))
        stack = Stack.start(root / "stack", ca_dir=trust, settings={
            "ATTESTGATE_ENROLL_POLICY": "require-ek-cert",
            "ATTESTGATE_LOG_LEVEL": "WARNING",
            **settings,
        })
        fleet = Fleet(stack, tpms, [root / f"home{n}" for n in range(devices)])
        for n, (proc, home) in enumerate(zip(tpms, fleet.homes, strict=True)):
            with Tpm(proc.tcti) as tpm:
                t0 = time.perf_counter()
                flows.enroll(tpm, home, stack.server, f"bench{n}", None,
                             flows.ServerPin(None, True), False, _quiet)
                fleet.enroll_ms.append((time.perf_counter() - t0) * 1000)
        return fleet
    except BaseException:
        if stack is not None:
            stack.stop()
        for p in tpms:
            p.stop()
        raise


# -- client processes --------------------------------------------------------------------------


def client_main(mode: str, tcti: str, home: str, go: Event, stop_at: Any, results: Any,
                params: dict[str, Any], steps: list[Event]) -> None:
    """One device's client process (see the module docstring); puts ("done", n) or an error."""
    try:
        state = st.load(Path(home))
        with Tpm(tcti) as tpm:
            flows.connect(tpm, state, _quiet).close()  # warm: objects loaded, key unsealed
            if mode == "hold":
                _hold(tpm, state, results, steps, params)
                return
            if mode == "post":
                ch = flows.connect(tpm, state, _quiet)
                flows.post(tpm, state, ch, "warm-up")
            results.put(("ready", 0))
            go.wait()
            end = stop_at.value
            n = 0
            while time.time() < end:
                if mode == "connect":
                    flows.connect(tpm, state, _quiet).close()
                else:
                    flows.post(tpm, state, ch, f"bench post {n}")
                n += 1
            if mode == "post":
                ch.close()
            results.put(("done", n))
    except BaseException as exc:  # reported by the parent
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def _hold(tpm: Tpm, state: st.ClientState, results: Any, steps: list[Event],
          params: dict[str, Any]) -> None:
    """Open sessions up to each target; after each, report and wait for its step event."""
    chans = []
    try:
        for target, step in zip(params["targets"], steps, strict=True):
            while len(chans) < target:
                chans.append(flows.connect(tpm, state, _quiet))
            release = getattr(tpm, "release", None)  # older adapters keep nothing loaded
            if release is not None:
                release()  # idle from here: leave the TPM's slots
            results.put(("ready", len(chans)))
            step.wait()
        results.put(("done", len(chans)))
    finally:
        for ch in chans:
            ch.close()


@dataclass
class Clients:
    procs: list[multiprocessing.process.BaseProcess]
    results: Any
    go: Event
    stop_at: Any
    steps: list[Event]

    def expect(self, kind: str, timeout: float = JOIN_TIMEOUT_S) -> list[int]:
        got = []
        for _ in self.procs:
            what, value = self.results.get(timeout=timeout)
            if what == "error":
                raise RuntimeError(f"bench client failed: {value}")
            if what != kind:
                raise RuntimeError(f"bench client said {what}, expected {kind}")
            got.append(int(value))
        return got

    def join(self) -> None:
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)


def start_clients(fleet: Fleet, mode: str, params: dict[str, Any] | None = None) -> Clients:
    params = params or {}
    results = CTX.Queue()
    go = CTX.Event()
    stop_at = CTX.Value("d", 0.0)
    steps = [CTX.Event() for _ in params.get("targets", ())]
    procs = [CTX.Process(target=client_main, args=(mode, t.tcti, str(h), go, stop_at, results,
                                                   params, steps), daemon=True)
             for t, h in zip(fleet.tpms, fleet.homes, strict=True)]
    for p in procs:
        p.start()
    return Clients(procs, results, go, stop_at, steps)


def run_phase(fleet: Fleet, mode: str, seconds: float, services: tuple[str, ...]
              ) -> tuple[int, dict[str, float], float]:
    """(operations, CPU seconds by service, wall seconds) of ``mode`` from every device."""
    clients = start_clients(fleet, mode)
    try:
        clients.expect("ready")
        cpu0 = {name: fleet.cpu(name) for name in services}
        t0 = time.time()
        clients.stop_at.value = t0 + seconds
        clients.go.set()
        counts = clients.expect("done")
        wall = time.time() - t0
        cpu = {name: fleet.cpu(name) - cpu0[name] for name in services}
        return sum(counts), cpu, wall
    finally:
        clients.join()
