"""Backup, wipe, restore (docs/backup.md), literally: a real stack on deploy/redis.conf (AOF,
appendfsync always), a device on swtpm, deploy/backup.sh while the stack runs, then the
Redis data directory and the server home are deleted and restored from the backup.

After the restore the same device, unchanged, connects and posts again, what was written
before the backup is there (and what came after it is not), the server key is the same,
and ``attestgate-admin audit --verify`` passes. Restoring Redis without the server home is
refused at the gateway's start (the keys that protect the store are missing). An old
client speaking protocol version 1 is answered with a version hint naming version 2.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from client.cli import EXIT_OK, main
from services.registry import admin
from shared.framing import FrameDecoder, Mode, Preamble, encode_frame
from shared.hint import Hint, HintReason, parse_hint
from shared.wire import PROTOCOL_VERSION
from tests.support.stack import REPO, Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm

pytestmark = pytest.mark.integration

REDIS_CONF = REPO / "deploy" / "redis.conf"
IO_TIMEOUT_S = 10.0


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    rc = main([*argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def _admin(stack: Stack, *argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    rc = admin.run([*argv, "--json"], env=stack.env, stdout=out, stderr=io.StringIO(),
                   clock=time.time, rng=os.urandom)
    return rc, json.loads(out.getvalue())


def _restore(backup: Path, root: Path, *, server_home: bool = True) -> None:
    """docs/backup.md, "Restore": services stopped, both directories back in place."""
    redis_dir = root / "redis"
    redis_dir.mkdir(mode=0o700)
    shutil.copytree(backup / "appendonlydir", redis_dir / "appendonlydir")
    if server_home:
        shutil.copytree(backup / "server-home", root / "server")


def _wipe(root: Path) -> None:
    for part in ("redis", "server"):
        shutil.rmtree(root / part, ignore_errors=True)


def _old_client_hint(port: int) -> Hint | None:
    """What a protocol-1 client gets from this gateway: one frame, then the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S) as s:
        s.sendall(Preamble(1, Mode.CONNECT).encode() + encode_frame(bytes(96)))
        decoder = FrameDecoder()
        while (frame := decoder.next_frame()) is None:
            data = s.recv(65536)
            if not data:
                return None
            decoder.feed(data)
    return parse_hint(frame)


@pytest.mark.timeout(180)
def test_backup_wipe_restore_and_the_device_posts_again(
        tmp_path: Path, swtpm: SwtpmProcess, swtpm_template: TemplateTpm,
        capsys: pytest.CaptureFixture[str]) -> None:
    root, backup = tmp_path / "server", tmp_path / "backup"
    device = ["-T", swtpm.tcti, "--home", str(tmp_path / "device")]
    start: dict[str, Any] = {"ca_dir": swtpm_template.trust_dir, "redis_config": REDIS_CONF}

    with Stack.start(root, **start) as stack:
        rc, enrolled = _cli(capsys, "enroll", "--server", stack.server, "--name", "dev1",
                            "--tofu", *device)
        assert rc == EXIT_OK, enrolled
        assert _cli(capsys, "post", "before the backup", *device)[0] == EXIT_OK
        assert _admin(stack, "token", "create")[0] == 0  # one more audit entry
        rc, key = _admin(stack, "server-key")
        assert rc == 0
        assert (root / "redis" / "appendonlydir").is_dir()  # deploy/redis.conf's AOF is on

        env = {**stack.env, "ATTESTGATE_REDIS_DIR": str(root / "redis")}
        run = subprocess.run(["bash", str(REPO / "deploy" / "backup.sh"), str(backup)],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
                             check=False)
        assert run.returncode == 0, run.stderr
        # The automatic AOF rewrite is back on after the copy.
        client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
        try:
            assert client.config_get("auto-aof-rewrite-percentage") == {
                "auto-aof-rewrite-percentage": "100"}  # deploy/redis.conf's value
        finally:
            client.close()

        assert _cli(capsys, "post", "after the backup", *device)[0] == EXIT_OK
        gateway_port = stack.gateway_port

    saved = {p.name for p in (backup / "server-home").iterdir()}
    assert {"noise-static.key", "storage.key", "audit.key", "audit-checkpoints.jsonl"} <= saved
    assert stat.S_IMODE((backup / "server-home" / "storage.key").stat().st_mode) == 0o600
    sums = (backup / "SHA256SUMS").read_text()
    assert "storage.key" in sums and "appendonlydir/" in sums

    # Everything is lost ...
    _wipe(root)
    # ... and the store alone is not enough: the gateway will not start without its keys.
    _restore(backup, root, server_home=False)
    with pytest.raises(RuntimeError, match="exited"):
        Stack.start(root, **start, gateway_port=gateway_port).stop()
    _wipe(root)

    _restore(backup, root)
    with Stack.start(root, **start,
                     gateway_port=gateway_port) as stack:
        rc, posted = _cli(capsys, "post", "after the restore", *device)
        assert rc == EXIT_OK, posted
        rc, read = _cli(capsys, "read", *device)
        assert rc == EXIT_OK, read
        assert [p["text"] for p in read["posts"]] == ["before the backup", "after the restore"]
        assert all(p["verified"] for p in read["posts"])
        rc, status = _cli(capsys, "status", *device)
        assert rc == EXIT_OK and status["device_id"] == enrolled["device_id"], status
        assert status["status"] == "active"

        rc, verify = _admin(stack, "audit", "--verify")
        assert rc == 0, verify
        assert _admin(stack, "server-key")[1]["fingerprint"] == key["fingerprint"]

        # An upgrade across protocol versions: an old client is told which version to speak.
        assert _old_client_hint(stack.gateway_port) == Hint(HintReason.VERSION, 0,
                                                            PROTOCOL_VERSION)
