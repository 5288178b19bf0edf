"""The server side runs without tpm2-pytss (the TPM client is the ``client`` extra).

Every process runs with a ``sitecustomize`` on its PYTHONPATH that makes ``import
tpm2_pytss`` fail, as on a server installed with ``pip install attestgate`` (no extra,
no libtss2): the four services and the web console start and answer (the console's
/healthz is 200 only when every service has a worker on its bus), ``attestgate-admin``
works, and ``attestgate`` says in one line which extra to install (exit 5).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import REPO, Stack

pytestmark = pytest.mark.integration

_BLOCKER = '''\
import sys
# As if tpm2-pytss were not installed: `import tpm2_pytss` raises ModuleNotFoundError.
sys.modules["tpm2_pytss"] = None
'''


@pytest.fixture
def no_tpm2_pytss(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "no-tpm2-pytss"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCKER)
    return {"PYTHONPATH": f"{site}{os.pathsep}{REPO}"}


def _python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_blocker_blocks(no_tpm2_pytss: dict[str, str]) -> None:
    """The premise: with the blocker the import fails, without it it works (here)."""
    blocked = _python(["-c", "import tpm2_pytss"], no_tpm2_pytss)
    assert blocked.returncode == 1 and "ModuleNotFoundError" in blocked.stderr
    assert _python(["-c", "import tpm2_pytss"], {"PYTHONPATH": str(REPO)}).returncode == 0


@pytest.mark.timeout(120)
def test_services_and_admin_run_without_tpm2_pytss(tmp_path: Path,
                                                   no_tpm2_pytss: dict[str, str]) -> None:
    with Stack.start(tmp_path / "stack", settings=no_tpm2_pytss, console=True) as stack:
        env = {**stack.env, **no_tpm2_pytss}
        for name, procs in stack.procs.items():
            assert all(p.poll() is None for p in procs), (name, stack.log(name))
        server_key = _python(["-m", "services.registry.admin", "server-key", "--json"], env)
        assert server_key.returncode == 0, server_key.stderr
        assert len(json.loads(server_key.stdout)["fingerprint"]) > 0
        devices = _python(["-m", "services.registry.admin", "devices", "--json"], env)
        assert devices.returncode == 0, devices.stderr
        assert json.loads(devices.stdout)["devices"] == []
        token = _python(["-m", "services.registry.admin", "--json", "token", "create"], env)
        assert token.returncode == 0, token.stderr
        verify = _python(["-m", "services.registry.admin", "audit", "--verify"], env)
        assert verify.returncode == 0, verify.stderr


@pytest.mark.parametrize("argv", [["status"], ["post", "hello"], ["tpm-info", "-T", "tabrmd"],
                                  ["enroll", "--server", "127.0.0.1", "--name", "n", "--tofu"]])
def test_client_without_tpm2_pytss_names_the_extra(argv: list[str], tmp_path: Path,
                                                   no_tpm2_pytss: dict[str, str]) -> None:
    env = {**no_tpm2_pytss, "ATTESTGATE_HOME": str(tmp_path / "home")}
    run = _python(["-m", "client.cli", *argv], env)
    assert run.returncode == 5, run.stderr
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "pip install 'attestgate[client]'" in run.stderr


def test_client_help_and_version_work_without_tpm2_pytss(no_tpm2_pytss: dict[str, str]) -> None:
    assert _python(["-m", "client.cli", "--version"], no_tpm2_pytss).returncode == 0
    assert _python(["-m", "client.cli", "post", "--help"], no_tpm2_pytss).returncode == 0
    json_run = _python(["-m", "client.cli", "status", "--json"], no_tpm2_pytss)
    assert json_run.returncode == 5
    assert "attestgate[client]" in json.loads(json_run.stdout)["message"]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_server_code_never_imports_the_client_or_tpm2_pytss() -> None:
    offenders = []
    for top in ("shared", "services"):
        for path in sorted((REPO / top).rglob("*.py")):
            for module in _imports(path):
                if module.split(".")[0] in {"client", "tpm2_pytss"}:
                    offenders.append(f"{path.relative_to(REPO)}: {module}")
    assert offenders == []
