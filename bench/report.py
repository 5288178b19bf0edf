"""The bench's files: results as JSON, a Markdown table, a PNG chart of the ratios."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from bench._common import Result


def fmt(value: float, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "ops/s":
        return f"{value:,.0f} /s"
    if unit == "ms":
        return f"{value:,.3f} ms" if value < 1 else f"{value:,.2f} ms"
    return f"{value:,.1f} {unit}"


def markdown(doc: dict[str, Any], results: list[Result]) -> str:
    m = doc["machine"]
    lines = [
        f"Measured {doc['when']} on {m['cpu']}, {m['cores']} cores, Python {m['python']}, "
        f"{m['system']} (1-min load average {m['load_avg_1m']} at the end); "
        f"`python -m bench{' --quick' if doc['quick'] else ''}`, {doc['elapsed_s']:.0f} s.",
        "",
        "| key | figure | baseline (same run) | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        detail = f" ({r.detail})" if r.detail else ""
        lines.append(f"| `{r.key}` | {r.name}: **{fmt(r.figure, r.unit)}**{detail} | "
                     f"{r.baseline}: {fmt(r.baseline_figure, r.unit)} | {ratio} | "
                     f"{r.goal or ''} |")
    for name, why in doc["failed"].items():
        lines.append(f"\nFAILED {name}: {why}")
    return "\n".join(lines) + "\n"


def chart(path: Path, results: list[Result]) -> bool:
    try:
        import matplotlib  # noqa: PLC0415 (optional: the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("[bench] matplotlib missing: no chart (pip install matplotlib)", file=sys.stderr)
        return False
    rows = [r for r in results if not math.isnan(r.ratio)]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(rows) + 1.5))
    names = [r.key for r in rows][::-1]
    ratios = [r.ratio for r in rows][::-1]
    colors = ["tab:blue" if r.unit == "ops/s" else "tab:orange" for r in rows][::-1]
    ax.barh(names, ratios, color=colors)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ratio = figure / same-run baseline (log)   "
                  "blue: rate, higher is better; orange: cost, lower is better")
    for y, r in enumerate(rows[::-1]):
        ax.text(r.ratio, y, f" {r.ratio:.2f}x", va="center", fontsize=8)
    ax.set_title("attestgate bench: each figure against its baseline")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(out: Path, doc: dict[str, Any], results: list[Result]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "latest.json", out / "latest.md"]
    written[0].write_text(json.dumps(doc, indent=2) + "\n")
    written[1].write_text(markdown(doc, results))
    if chart(out / "latest.png", results):
        written.append(out / "latest.png")
    return written
