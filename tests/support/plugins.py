"""Registering entry points for tests through the real ``importlib.metadata`` mechanism.

``pip install -e examples/plugins`` would write into the shared venv; instead a test
writes what an installer writes — a ``NAME-VERSION.dist-info`` directory with
``METADATA`` and ``entry_points.txt`` — into a directory of its own and puts that
directory (and the plugin's source) on ``sys.path`` / ``PYTHONPATH``.
``importlib.metadata.entry_points()`` then finds the distribution exactly as it finds
an installed one; nothing in attestgate knows the difference.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "plugins"


def register(directory: Path, dist: str, groups: Mapping[str, Mapping[str, str]],
             version: str = "0.0.0") -> Path:
    """Write a dist-info for ``dist`` with ``groups`` ({group: {name: "module:attr"}})."""
    info = directory / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    return directory


def register_example(directory: Path) -> list[Path]:
    """Register examples/plugins with the entry points its pyproject.toml declares; returns
    the paths to put on sys.path (the dist-info's directory and the package's source)."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    register(directory, project["name"], project["entry-points"], project["version"])
    return [directory, EXAMPLE]
