"""``python -m bench.server_profile [connect|post ...]``: where the services spend their CPU
while the fleet of bench.fleet (6 swtpm devices) connects or posts at once.

Each phase runs twice: once plain (the CPU per operation of every service, as the stack
bench reads it), once with every service under cProfile with a CPU clock
(``time.thread_time``): a ``sitecustomize`` on the services' ``PYTHONPATH`` starts the
profiler on SIGUSR1 and writes it on SIGUSR2. It prints each service's CPU per operation
split by thread (user/system, the ZeroMQ I/O thread apart) and its top functions, and leaves
the ``.prof`` files in ``bench/results/profile-<service>-<phase>.prof``. cProfile's own
cost roughly triples the CPU of a profiled phase: read the shares, not the totals.
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import tempfile
import time
from pathlib import Path

from bench.fleet import run_phase, start_fleet
from bench.stack_bench import DEVICES, SETTINGS
from tests.support.stack import REPO

RESULTS = Path(__file__).with_name("results")
SERVICES = {"connect": ("gateway", "registry", "attestor"), "post": ("gateway", "board")}

_SITECUSTOMIZE = '''
import os
if os.environ.get("BENCH_PROFILE_DIR"):
    import cProfile, signal, sys, time
    _state = {}
    def _start(*_):
        _state["p"] = cProfile.Profile(time.thread_time)
        _state["p"].enable()
    def _stop(*_):
        p = _state.pop("p", None)
        if p is not None:
            p.disable()
            p.dump_stats(os.path.join(os.environ["BENCH_PROFILE_DIR"], f"{os.getpid()}.prof"))
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
'''


def _threads(pid: int) -> dict[str, tuple[int, int]]:
    """(utime, stime) in clock ticks of each thread of ``pid``, by "name:tid"."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{name}:{tid}"] = (int(fields[11]), int(fields[12]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server_profile")
    parser.add_argument("phases", nargs="*", default=["connect", "post"],
                        choices=sorted(SERVICES))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    tick_ms = 1000 / os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(prefix="attestgate-server-profile-") as tmp_name:
        tmp = Path(tmp_name)
        site, dumps = tmp / "site", tmp / "dumps"
        site.mkdir()
        dumps.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        fleet = start_fleet(tmp / "fleet", DEVICES, {
            **SETTINGS, "BENCH_PROFILE_DIR": str(dumps), "PYTHONPATH": f"{site}:{REPO}"})
        try:
            for phase in args.phases:
                names = SERVICES[phase]
                ops, cpu, _ = run_phase(fleet, phase, args.seconds, names)
                print(f"== {phase}: {ops} operations; CPU per operation: " + ", ".join(
                    f"{n} {cpu[n] / ops * 1000:.3f} ms" for n in names))
                pids = {n: fleet.service_pids(n)[0] for n in names}
                before = {n: _threads(p) for n, p in pids.items()}
                for pid in pids.values():
                    os.kill(pid, signal.SIGUSR1)
                ops, _, _ = run_phase(fleet, phase, args.seconds, names)
                for pid in pids.values():
                    os.kill(pid, signal.SIGUSR2)
                after = {n: _threads(p) for n, p in pids.items()}
                time.sleep(1.0)  # the dumps are written
                for name, pid in pids.items():
                    split = []
                    for thread, (user, system) in after[name].items():
                        u0, s0 = before[name].get(thread, (0, 0))
                        if user - u0 or system - s0:
                            split.append(f"{thread} user {(user - u0) * tick_ms / ops:.3f} "
                                         f"sys {(system - s0) * tick_ms / ops:.3f}")
                    print(f"\n== {name} (profiled, ms per operation): " + "; ".join(split))
                    dump = dumps / f"{pid}.prof"
                    kept = RESULTS / f"profile-{name}-{phase}.prof"
                    dump.replace(kept)
                    stats = pstats.Stats(str(kept))
                    stats.sort_stats("cumulative").print_stats(args.top)
        finally:
            fleet.stop()


if __name__ == "__main__":
    main()
