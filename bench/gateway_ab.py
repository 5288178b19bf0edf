"""``python -m bench.gateway_ab VARIANT VARIANT ... [--rounds N] [--phases connect post]``:
the gateway's CPU per connect and per post for several gateway variants, interleaved on one
fleet (bench.fleet, 6 swtpm devices) so that the machine's load hits every variant alike.

A variant is ``LABEL=SPEC``: SPEC is ``.`` (this checkout) or a directory holding another
checkout (say ``git archive`` of a commit), optionally followed by ``+NAME=VALUE`` settings
for the gateway's environment (``base=/tmp/base``, ``uv=.+ATTESTGATE_EVENT_LOOP=uvloop``).
Phases: ``connect``, ``post`` (CPU per operation) and ``memory`` (RSS per idle session,
300 -> 1,500 sessions).
Only the gateway is restarted between variants (same ports, same keys); the workers
re-register by themselves. Per round and variant it prints the gateway's CPU per operation
(utime + stime from /proc) and the ratio to the first variant of the same round.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.fleet import Fleet, run_phase, start_fleet
from bench.stack_bench import DEVICES, SETTINGS, _memory_row
from tests.support.stack import REPO


def _parse(spec: str) -> tuple[str, Path, dict[str, str]]:
    label, _, rest = spec.partition("=")
    where, *pairs = rest.split("+")
    env = dict(p.split("=", 1) for p in pairs)
    return label, (REPO if where in (".", "") else Path(where).resolve()), env


def _restart_gateway(fleet: Fleet, code: Path, extra: dict[str, str]) -> None:
    stack = fleet.stack
    old = stack.procs["gateway"][0]
    old.send_signal(signal.SIGTERM)
    old.wait(10)
    env = {**stack.env, **extra, "PYTHONPATH": str(code) + (
        ":" + extra["PYTHONPATH"] if "PYTHONPATH" in extra else "")}
    log = open(stack.directory / "logs" / "gateway-ab.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "services.gateway"], cwd=code, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    stack.procs["gateway"][0] = proc
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", stack.gateway_port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(2.5)  # workers notice the restart (heartbeat) and register again


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_ab")
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--phases", nargs="+", default=["connect", "post"])
    args = parser.parse_args()
    variants = [_parse(v) for v in args.variants]
    figures: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="attestgate-gateway-ab-") as tmp:
        fleet = start_fleet(Path(tmp), DEVICES, SETTINGS)
        try:
            for r in range(args.rounds):
                for phase in args.phases:
                    first = 0.0
                    for label, code, extra in variants:
                        _restart_gateway(fleet, code, extra)
                        if phase == "memory":  # KiB per idle session, 300 -> 1,500 sessions
                            kib = _memory_row(fleet, 300, 1500).figure
                            first = first or kib
                            figures.setdefault((phase, label), []).append(kib)
                            ratios.setdefault((phase, label), []).append(kib / first)
                            print(f"round {r} memory  {label:12} {kib:.2f} KiB per session",
                                  flush=True)
                            continue
                        ops, cpu, wall = run_phase(fleet, phase, args.seconds, ("gateway",))
                        ms = cpu["gateway"] / max(ops, 1) * 1000
                        first = first or ms
                        figures.setdefault((phase, label), []).append(ms)
                        ratios.setdefault((phase, label), []).append(ms / first)
                        print(f"round {r} {phase:7} {label:12} gateway {ms:.3f} ms/op "
                              f"({ops / wall:.0f} ops/s, x{ms / first:.2f}) load "
                              f"{os.getloadavg()[0]:.1f}", flush=True)
        finally:
            fleet.stop()
    print("\nmedians:")
    for (phase, label), values in figures.items():
        unit = "KiB/session" if phase == "memory" else "ms/op"
        print(f"{phase:7} {label:12} {statistics.median(values):.3f} {unit}  ratio to first "
              f"{statistics.median(ratios[(phase, label)]):.2f}  runs "
              + " ".join(f"{v:.3f}" for v in values))


if __name__ == "__main__":
    main()
