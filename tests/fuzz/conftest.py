"""Fuzz tests: import paths for the unit-test builders.

The summary table of every fuzz target is printed by ``tests/conftest.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# tests/fuzz has no __init__.py: put the unit-test builders (tpm_builders,
# device_builders, tpm_kat_data, tpm_unit_helpers) on sys.path.
_TESTS = Path(__file__).resolve().parents[1]
for _p in (_TESTS / "unit", _TESTS / "unit" / "tpm"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
