"""Shared helpers: the result row and simple timing loops."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    quick: bool

    @property
    def seconds(self) -> float:
        """How long each throughput loop runs."""
        return 0.3 if self.quick else 1.5


@dataclass(frozen=True)
class Result:
    """One row: ``figure`` against ``baseline_figure`` measured in the same run.

    ``key`` is stable (scripts and the README's table find rows by it); ``goal`` is the
    issue's target for ``ratio`` (e.g. "<= 1.5"), empty when there is none.
    """

    key: str
    section: str
    name: str
    figure: float
    unit: str  # "ops/s" (higher is better); "ms", "us", "KiB" (lower is better)
    baseline: str
    baseline_figure: float
    goal: str = ""
    detail: str = ""  # e.g. the figure split by process

    @property
    def ratio(self) -> float:
        """figure / baseline figure, in the row's unit."""
        return self.figure / self.baseline_figure if self.baseline_figure else float("nan")

    def as_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "ratio": self.ratio}
        return {k: (None if isinstance(v, float) and v != v else v) for k, v in d.items()}


def rate(fn: Callable[[], object], seconds: float, warmup: int = 3) -> float:
    """Calls of ``fn`` per second, running it back to back for about ``seconds``."""
    for _ in range(warmup):
        fn()
    n = 0
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        fn()
        n += 1
        now = time.perf_counter()
    return n / (now - start)


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    """Median wall time of ``runs`` calls of ``fn``, in milliseconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


ROUNDS = 5


def paired(
    baseline: Callable[[float], float], subject: Callable[[float], float], seconds: float,
    rounds: int = ROUNDS,
) -> tuple[float, float]:
    """(baseline, subject) rates, alternating short rounds and keeping each side's best.

    ``baseline`` and ``subject`` take a duration and return a rate. Alternating
    spreads background noise (other processes on a shared machine) over both sides;
    the best round is the least disturbed one.
    """
    base = ours = 0.0
    for _ in range(rounds):
        base = max(base, baseline(seconds / rounds))
        ours = max(ours, subject(seconds / rounds))
    return base, ours
