"""``python -m bench [--quick] [--only NAME] [--json]``: figures vs same-run baselines."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable

from bench import bus_bench, eventlog_bench, noise_bench, stack_bench, store_bench
from bench._common import Result, Settings

SECTIONS: dict[str, Callable[[Settings], list[Result]]] = {
    "noise": noise_bench.run,
    "store": store_bench.run,
    "bus": bus_bench.run,
    "stack": stack_bench.run,
    "eventlog": eventlog_bench.run,
}


def _fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.2f} ms" if unit == "ms" else f"{value:,.0f} /s"


def table(results: list[Result]) -> str:
    rows = [("name", "figure", "baseline", "baseline figure", "ratio")]
    rows += [
        (r.name, _fmt(r.figure, r.unit), r.baseline, _fmt(r.baseline_figure, r.unit),
         f"{r.ratio:.2f}x")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(
            cell.ljust(w) if i in (0, 2) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short loops (< 30 s in all)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append",
                        help="run only this section (repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
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
        if not args.json:
            print(f"[{name}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps({"quick": args.quick, "elapsed_s": round(elapsed, 2),
                          "results": [r.as_dict() for r in results], "failed": failed},
                         indent=2))
    else:
        print(table(results))
        print(f"\nratio = figure / baseline (ops/s: higher is faster; ms: lower is faster); "
              f"{elapsed:.1f} s in all")
        for name, why in failed.items():
            print(f"FAILED {name}: {why}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
