"""What a fresh ``attestgate`` process imports before it does anything (issue 10).

A user's ``attestgate post`` is a new process: every module imported at start-up costs it
more than its attested connect (bench/README.md "Round 6: client start-up"). These tests
run a fresh interpreter and look at ``sys.modules``, so that a later top-level import
cannot silently bring the heavy modules back (client/cli.py ``_LAZY``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.stack import REPO

# Needed by no command that only talks to the server (post, read, follow, status) unless a
# log is shown or sent, or a secret asked for.
_NOT_FOR_A_POST = (
    "shared.eventlog",  # the event-log parser, verifier and differ
    "client.eventlog_view",
    "client.explain",  # the refusal texts
    "client.secrets",
    "shared.secrets",
    "shared.vault",
    "shared.tpm.ekcert",  # the EK certificate reader (enrollment, tpm-info)
    "shared.records",  # the board's and registry's records, the store
    "shared.store",
    "importlib.metadata",  # --version
)
# --help needs no TPM client either, nor the channel's cryptography beyond the basics.
_NOT_FOR_HELP = (*_NOT_FOR_A_POST, "tpm2_pytss", "client.tpm", "client.flows",
                 "cryptography.x509", "cryptography.hazmat.primitives.serialization")

_PROBE = """
import json, sys
{body}
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(body: str, *args: str) -> set[str]:
    run = subprocess.run([sys.executable, "-c", _PROBE.format(body=body), *args], cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.splitlines()[-1]))


def _loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_help_imports_neither_the_tpm_client_nor_the_event_log() -> None:
    body = ("import contextlib, io\nfrom client.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    rc = main(['--help'])\n"
            "assert rc == 0 and 'post' in out.getvalue(), (rc, out.getvalue())")
    modules = _modules_after(body)
    assert "client.cli" in modules  # the probe ran
    assert _loaded(modules, _NOT_FOR_HELP) == []


@pytest.mark.parametrize("command", ["post", "read", "follow", "status", "check"])
def test_command_help_imports_no_tpm_client(command: str) -> None:
    body = ("import contextlib, io\nfrom client.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main([{command!r}, '--help']) == 0\n")
    assert _loaded(_modules_after(body), _NOT_FOR_HELP) == []


def test_a_post_imports_what_it_needs_only() -> None:
    """The modules a post's run reaches (the CLI, the flows, the TPM client) at top level."""
    body = ("import argparse, os\nimport client.cli, client.flows, client.tpm, client.channel\n"
            "os.environ.pop('ATTESTGATE_EVENT_LOG', None)\n"
            "args = argparse.Namespace(event_log=None, tpm='swtpm:host=127.0.0.1,port=1')\n"
            "assert client.cli._event_log(args) is None  # a software TPM: no log to send\n")
    modules = _modules_after(body)
    assert {"client.flows", "client.tpm", "tpm2_pytss"} <= modules  # the probe ran
    assert _loaded(modules, _NOT_FOR_A_POST) == []


def test_the_probe_sees_an_eager_import() -> None:
    """The premise: a module the CLI imports at start-up shows in sys.modules."""
    modules = _modules_after("import client.cli, client.eventlog_view")
    assert _loaded(modules, _NOT_FOR_A_POST) == ["client.eventlog_view", "shared.eventlog",
                                                 *sorted(m for m in modules
                                                         if m.startswith("shared.eventlog."))]
