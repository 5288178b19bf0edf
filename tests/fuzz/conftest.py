"""Fuzz tests: a count per target, a summary table at the end of the run.

The table (inputs, seconds, inputs/s, slowest input, RSS growth per target) is
printed in pytest's terminal summary and written as JSON to
``<pytest basetemp>/fuzz-summary.json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/fuzz has no __init__.py: put the repository root (for tests.support) and the
# unit-test builders (tpm_builders, device_builders, tpm_kat_data) on sys.path.
_TESTS = Path(__file__).resolve().parents[1]
for _p in (_TESTS.parent, _TESTS / "unit", _TESTS / "unit" / "tpm"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from tests.support.fuzz import RESULTS, summary_table  # noqa: E402

_SUMMARY: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def fuzz_summary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    path = tmp_path_factory.getbasetemp() / "fuzz-summary.json"
    path.write_text(json.dumps({
        "targets": [r.as_dict() for r in RESULTS],
        "total_inputs": sum(r.inputs for r in RESULTS),
        "total_seconds": round(sum(r.seconds for r in RESULTS), 1),
    }, indent=2))
    _SUMMARY.append(path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("fuzz targets")
    for line in summary_table(RESULTS):
        terminalreporter.write_line(line)
    for path in _SUMMARY:
        terminalreporter.write_line(f"summary written to {path}")
