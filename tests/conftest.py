"""Session-wide reporting shared by every test directory.

Fuzz targets (``tests.support.fuzz.run``, and the gateway fuzz over TCP) record
inputs, seconds, inputs/s, the slowest input and RSS growth per target; the table
is printed in pytest's terminal summary and written as JSON to
``<pytest basetemp>/fuzz-summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fuzz import RESULTS, summary_table

_SUMMARY: list[Path] = []


@pytest.fixture(scope="session", autouse=True)
def fuzz_summary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if not RESULTS:
        return
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
