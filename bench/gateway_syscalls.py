"""``python -m bench.gateway_syscalls [connect|post] [--strace]``: the gateway's CPU per
operation split by thread into user and system time (no profiler), and, with
``--strace``, its system calls per operation (``strace -c -f`` attached for a second
phase; strace slows the process, so read the counts, not the times). ``--service NAME``
does the same for another service (``attestor``, ``registry``, ``board``); ``--tt FILE``
also writes ``strace -f -tt -T`` of a short phase to FILE (each call of a few requests);
``--perf FILE`` a ``perf record -e cpu-clock -g`` of another phase (``perf report -i FILE``)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from bench.fleet import run_phase, start_fleet
from bench.server_profile import _threads
from bench.stack_bench import DEVICES, SETTINGS


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_syscalls")
    parser.add_argument("phases", nargs="*", default=["connect", "post"])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--service", default="gateway")
    parser.add_argument("--tt", type=Path, default=None)
    parser.add_argument("--perf", type=Path, default=None)
    args = parser.parse_args()
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(prefix="attestgate-gateway-syscalls-") as tmp:
        fleet = start_fleet(Path(tmp), DEVICES, SETTINGS)
        try:
            svc = args.service
            pid = fleet.service_pids(svc)[0]
            for phase in args.phases:
                before = _threads(pid)
                ops, cpu, _ = run_phase(fleet, phase, args.seconds, (svc,))
                after = _threads(pid)
                split = []
                for thread, (user, system) in after.items():
                    u0, s0 = before.get(thread, (0, 0))
                    if user - u0 or system - s0:
                        split.append(f"{thread} user {(user - u0) * tick_ms / ops:.3f} "
                                     f"sys {(system - s0) * tick_ms / ops:.3f}")
                print(f"== {phase}: {ops} ops, {svc} {cpu[svc] / ops * 1000:.3f} ms/op: "
                      + "; ".join(split), flush=True)
                if args.strace:
                    out = Path(tmp) / f"strace-{phase}.txt"
                    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p",
                                               str(pid)])
                    time.sleep(1.0)
                    ops, _, _ = run_phase(fleet, phase, args.seconds, (svc,))
                    tracer.send_signal(signal.SIGINT)
                    tracer.wait(30)
                    print(f"== {phase} under strace: {ops} ops; calls per op:")
                    for line in out.read_text().splitlines():
                        parts = line.split()
                        if len(parts) >= 5 and parts[3].isdigit():
                            print(f"  {parts[-1]:20} {int(parts[3]) / ops:8.2f}  "
                                  f"({parts[1]} s in all)")
                if args.tt is not None:
                    tracer = subprocess.Popen(["strace", "-f", "-tt", "-T", "-o", str(args.tt),
                                               "-p", str(pid)])
                    time.sleep(1.0)
                    ops, _, _ = run_phase(fleet, phase, 1.0, (svc,))
                    tracer.send_signal(signal.SIGINT)
                    tracer.wait(30)
                    print(f"== {phase}: strace -f -tt of {ops} ops in {args.tt}")
                if args.perf is not None:
                    tracer = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4000",
                                               "-g", "-o", str(args.perf), "-p", str(pid)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                    ops, _, _ = run_phase(fleet, phase, args.seconds, (svc,))
                    tracer.send_signal(signal.SIGINT)
                    tracer.wait(60)
                    print(f"== {phase}: perf record of {ops} ops in {args.perf}")
        finally:
            fleet.stop()


if __name__ == "__main__":
    main()
