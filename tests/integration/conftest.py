"""Fixtures shared by the integration tests: see tests/support/swtpm_fixtures.py."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/integration has no __init__.py, so pytest puts only this directory on
# sys.path. The repository root is needed to import tests.support; drop this
# once pyproject's [tool.pytest.ini_options] sets pythonpath = ["."].
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.support.swtpm_fixtures import (  # noqa: E402
    swtpm,
    swtpm_factory,
    swtpm_template,
    swtpm_template_other_ca,
)

__all__ = ["swtpm", "swtpm_factory", "swtpm_template", "swtpm_template_other_ca"]
