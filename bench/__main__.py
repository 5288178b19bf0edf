"""``python -m bench [--quick] [--only NAME] [--json]``: figures vs same-run baselines.

Prints a table (or, with ``--json``, the same rows as JSON, each with a stable ``key``),
and writes ``bench/results/latest.json``, ``latest.md`` (a Markdown table with the
machine it ran on) and ``latest.png`` (a chart of every ratio).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import bus_bench, eventlog_bench, noise_bench, report, stack_bench, store_bench
from bench._common import Result, Settings

SECTIONS: dict[str, Callable[[Settings], list[Result]]] = {
    "noise": noise_bench.run,
    "store": store_bench.run,
    "bus": bus_bench.run,
    "stack": stack_bench.run,
    "eventlog": eventlog_bench.run,
}
RESULTS_DIR = Path(__file__).with_name("results")


def _fmt(value: float, unit: str) -> str:
    return report.fmt(value, unit)


def table(results: list[Result]) -> str:
    rows = [("key", "figure", "baseline", "baseline figure", "ratio", "goal")]
    rows += [
        (r.key, _fmt(r.figure, r.unit), r.baseline, _fmt(r.baseline_figure, r.unit),
         "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x", r.goal or "")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(
            cell.ljust(w) if i in (0, 2, 5) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short loops, fewer sessions")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="run only this section (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR,
                        help="where latest.json/.md/.png go (default bench/results)")
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick)
    results: list[Result] = []
    failed: dict[str, str] = {}
    started = time.perf_counter()
    for name in args.only or list(SECTIONS):
        t0 = time.perf_counter()
        try:
            results += SECTIONS[name](settings)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    elapsed = time.perf_counter() - started
    doc = {"quick": args.quick, "elapsed_s": round(elapsed, 2), "machine": machine(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "results": [r.as_dict() for r in results], "failed": failed}
    written = report.write(args.out, doc, results)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(table(results))
        for r in results:
            if r.detail:
                print(f"  {r.key}: {r.detail}")
        print(f"\nratio = figure / baseline (ops/s: higher is faster; ms, KiB: lower is "
              f"better); {elapsed:.1f} s in all; written: {', '.join(map(str, written))}")
        for name, why in failed.items():
            print(f"FAILED {name}: {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
