"""The two CLIs run in-process with ``--json``, as the integration tests drive them."""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Any

from client.cli import main as client_main
from services.registry import admin
from tests.support.stack import Stack


def quiet(_: str) -> None:
    """A progress callback that prints nothing."""


def cli(*argv: str) -> tuple[int, dict[str, Any]]:
    """Run the ``attestgate`` CLI in-process with --json; (exit code, its JSON document)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = client_main([*argv, "--json"])
    text = out.getvalue().strip()
    return rc, (json.loads(text.splitlines()[-1]) if text else {})


def admin_cli(stack: Stack, *argv: str) -> tuple[int, dict[str, Any]]:
    """Run ``attestgate-admin`` in-process against the stack, with --json."""
    out = io.StringIO()
    rc = admin.run([*argv, "--json"], env=stack.env, stdout=out, stderr=io.StringIO(),
                   clock=time.time, rng=os.urandom)
    return rc, (json.loads(out.getvalue()) if out.getvalue().strip() else {})
