"""Named attacks on the audit log by someone who can write to Redis (but not the server home).

Each runs ``attestgate-admin`` as a real process against a real redis-server and a
server home whose audit key and checkpoints the attacker cannot touch: an edit with
the chain recomputed with plain SHA-256, a cut tail with the head rewound, and the
deletion of the whole log are each reported by ``audit --verify`` (exit 3, the JSON
names the problem). Also: concurrent appenders in several processes keep a valid
chain and checkpoints; an export kept off the machine catches a rewrite of the
server home too; purge leaves a record.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.audit_anchor import CHECKPOINT_FILE, CheckpointFile
from shared.store.redis_store import AUDIT_HEAD, AUDIT_LOG, RedisStore
from shared.vault import StoreUsage, audit_key, init_server_home
from shared.wire import LABEL_AUDIT
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, RedisUnavailable
from tests.support.stack import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    with server:
        yield server


@dataclass
class Env:
    home: Path
    vars: dict[str, str]
    redis: RedisServer

    def store(self) -> RedisStore:
        return RedisStore(self.redis.url, audit_key=audit_key(self.home),
                          checkpoints=CheckpointFile(self.home / CHECKPOINT_FILE))


@pytest.fixture
def env(redis_server: RedisServer, tmp_path: Path) -> Env:
    redis_server.flushall()
    home = tmp_path / "server"
    init_server_home(home, lambda: StoreUsage(0, 0))
    return Env(home, {
        **os.environ, "PYTHONPATH": str(REPO), "ATTESTGATE_REDIS_URL": redis_server.url,
        "ATTESTGATE_SERVER_HOME": str(home),
        "ATTESTGATE_EVENTS": f"tcp://127.0.0.1:{free_port()}",
    }, redis_server)


@dataclass
class Result:
    code: int
    doc: Any
    err: str


def raw(env: Env) -> Any:
    """A plain Redis client: the attacker's tool."""
    return RedisStore(env.redis.url).raw()


def admin(env: Env, *argv: str) -> Result:
    proc = subprocess.run([sys.executable, "-m", "services.registry.admin", *argv, "--json"],
                          cwd=REPO, env=env.vars, capture_output=True, text=True, timeout=60,
                          check=False)
    return Result(proc.returncode, json.loads(proc.stdout) if proc.stdout else None, proc.stderr)


def fill(env: Env, n: int = 5) -> list[str]:
    """Entries written as the services write them (key and checkpoints from the home)."""
    s = env.store()
    try:
        for i in range(n):
            s.append_audit("attest_ok" if i % 2 else "enrolled", f"dev{i % 2}", {"n": i},
                           1_700_000_000.0 + i)
        return [e.entry_id for e in s.read_audit()]
    finally:
        s.close()


def sha256_hash(prev: str, ts: str, event: str, device: str, detail: str) -> str:
    """The hash a forger without the audit key computes (the old, unkeyed chain)."""
    h = hashlib.sha256(LABEL_AUDIT)
    for part in (prev, ts, event, device, detail):
        b = part.encode()
        h.update(struct.pack(">I", len(b)) + b)
    return h.hexdigest()


def checks(doc: Any) -> set[tuple[str, str]]:
    return {(p["check"], p["entry_id"]) for p in doc["problems"]}


def test_clean_log_verifies(env: Env) -> None:
    fill(env)
    run = admin(env, "audit", "--verify")
    assert run.code == 0, run.err
    assert run.doc["ok"] is True and run.doc["problems"] == [] and run.doc["checked"] == 5


def test_attack_audit_edit_with_recomputed_sha256_chain(env: Env) -> None:
    ids = fill(env)
    r = raw(env)
    rows = r.xrange(AUDIT_LOG)
    r.delete(AUDIT_LOG)
    prev = ""
    for entry_id, f in rows:  # same ids; entry 2's detail edited; every hash and link redone
        fields = {k.decode(): v.decode() for k, v in f.items()}
        if entry_id.decode() == ids[2]:
            fields["detail"] = '{"n":99}'
        fields["prev"] = prev
        fields["hash"] = prev = sha256_hash(prev, fields["ts"], fields["event"],
                                            fields["device"], fields["detail"])
        r.xadd(AUDIT_LOG, fields, id=entry_id)
    r.set(AUDIT_HEAD, prev)
    r.close()
    run = admin(env, "audit", "--verify")
    assert run.code == 3 and run.doc["ok"] is False and "(audit_broken)" in run.err
    found = checks(run.doc)
    assert found == {("hash", i) for i in ids}  # no entry carries a valid HMAC any more
    assert {p["problem"] for p in run.doc["problems"]} == {"edited"}


def test_attack_audit_truncation_with_head_rewound(env: Env) -> None:
    ids = fill(env)
    r = raw(env)
    rows = r.xrange(AUDIT_LOG)
    r.xdel(AUDIT_LOG, ids[3], ids[4])
    r.set(AUDIT_HEAD, rows[2][1][b"hash"])  # the chain now ends cleanly at entry 3
    r.close()
    run = admin(env, "audit", "--verify")
    assert run.code == 3 and run.doc["checked"] == 3
    assert run.doc["problems"] == [{"entry_id": ids[2], "check": "truncated",
                                    "problem": "tail cut (checkpoint counts more entries)"}]


def test_attack_audit_whole_log_deleted(env: Env) -> None:
    fill(env)
    r = raw(env)
    r.delete(AUDIT_LOG, AUDIT_HEAD)
    r.close()
    run = admin(env, "audit", "--verify")
    assert run.code == 3 and run.doc["checked"] == 0
    assert run.doc["problems"] == [{"entry_id": "", "check": "deleted",
                                    "problem": "log deleted (checkpoint counts entries)"}]


def test_attack_audit_whole_log_deleted_then_new_entries(env: Env) -> None:
    """The services keep appending after the deletion: the new chain is valid by itself."""
    fill(env)
    r = raw(env)
    r.delete(AUDIT_LOG, AUDIT_HEAD)
    r.close()
    s = env.store()
    s.append_audit("attest_ok", "dev7", {"after": "deletion"}, 1_800_000_000.0)
    s.append_audit("attest_ok", "dev7", {"after": "deletion"}, 1_800_000_001.0)
    new_ids = [e.entry_id for e in s.read_audit()]
    s.close()
    run = admin(env, "audit", "--verify")
    assert run.code == 3
    assert checks(run.doc) == {("rewritten", new_ids[0]), ("rewritten", new_ids[1]),
                               ("truncated", new_ids[1])}


def test_deleting_the_checkpoint_file_is_reported(env: Env) -> None:
    fill(env)
    (env.home / CHECKPOINT_FILE).unlink()
    run = admin(env, "audit", "--verify")
    assert run.code == 3 and ("unanchored", "") in checks(run.doc)


def test_export_kept_off_the_machine_catches_what_the_home_no_longer_can(
        env: Env, tmp_path: Path) -> None:
    fill(env)
    offsite = tmp_path / "offsite.json"
    run = admin(env, "audit", "export", "--output", str(offsite))
    assert run.code == 0, run.err
    exported = json.loads(offsite.read_text())
    assert exported["count"] == 5 and exported["checkpoint"]["count"] == 5
    assert exported["checkpoint"]["head"] == exported["head"] == exported["entries"][-1]["hash"]
    assert [e["prev"] for e in exported["entries"][1:]] == [
        e["hash"] for e in exported["entries"][:-1]]
    printed = admin(env, "audit", "export")
    assert printed.code == 0 and printed.doc["entries"] == exported["entries"]
    # Someone with the server home too: cuts the log and removes the local checkpoints.
    r = raw(env)
    rows = r.xrange(AUDIT_LOG)
    r.xdel(AUDIT_LOG, rows[4][0])
    r.set(AUDIT_HEAD, rows[3][1][b"hash"])
    r.close()
    (env.home / CHECKPOINT_FILE).write_bytes(b"")
    assert admin(env, "audit", "--verify").code == 0  # nothing local left to tell
    run = admin(env, "audit", "--verify", "--checkpoint", str(offsite))
    assert run.code == 3 and ("truncated", rows[3][0].decode()) in checks(run.doc)


def test_concurrent_appenders_in_several_processes(env: Env) -> None:
    """Four processes append at once: one chain, one valid checkpoint per entry."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from shared.audit_anchor import CHECKPOINT_FILE, CheckpointFile\n"
        "from shared.store.redis_store import RedisStore\n"
        "from shared.vault import audit_key\n"
        "home = Path(sys.argv[2])\n"
        "s = RedisStore(sys.argv[1], audit_key=audit_key(home),\n"
        "               checkpoints=CheckpointFile(home / CHECKPOINT_FILE))\n"
        "for i in range(40):\n"
        "    s.append_audit('attest_ok', sys.argv[3], {'i': i}, 1.0 + i)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, env.redis.url, str(env.home),
                               f"dev{n}"], cwd=REPO, env=env.vars) for n in range(4)]
    for p in procs:
        assert p.wait(120) == 0
    cps = CheckpointFile(env.home / CHECKPOINT_FILE).read()
    assert len(cps) == 160 and all(c is not None for c in cps)
    assert sorted(c.count for c in cps if c is not None) == list(range(1, 161))
    run = admin(env, "audit", "--verify")
    assert run.code == 0 and run.doc["checked"] == 160, run.doc["problems"]


def test_purge_keeps_the_audit_log_and_records_itself(env: Env) -> None:
    fill(env)
    run = admin(env, "purge", "--yes")
    assert run.code == 0 and run.doc["audit_kept"] is True
    audit = admin(env, "audit", "--verify")
    assert audit.code == 0 and audit.doc["checked"] == 6
    assert audit.doc["entries"][-1]["event"] == "purged"


def test_purge_with_the_audit_log_starts_a_new_recorded_chain(env: Env) -> None:
    fill(env)
    run = admin(env, "purge", "--yes", "--include-audit")
    assert run.code == 0 and run.doc["audit_kept"] is False
    assert run.doc["audit_entries_dropped"] == 5
    assert Path(run.doc["checkpoints_archived"]).exists()
    audit = admin(env, "audit", "--verify")
    assert audit.code == 0 and audit.doc["checked"] == 1
    (entry,) = audit.doc["entries"]
    assert entry["event"] == "audit_purged" and entry["detail"]["entries"] == 5


def test_verify_and_writers_need_the_audit_key(env: Env) -> None:
    fill(env)
    (env.home / "audit.key").unlink()
    run = admin(env, "audit", "--verify")
    assert run.code == 3 and run.doc["error"] == "no_audit_key"
    assert "audit.key" in run.err and "restore" in run.err
    before = raw(env).dbsize()
    token = admin(env, "token", "create")
    assert token.code == 3 and token.doc["error"] == "no_audit_key"
    assert raw(env).dbsize() == before  # refused before anything was stored


def test_checkpoint_cost(env: Env) -> None:
    """Measured, not asserted: what a checkpoint per entry costs (printed with -s)."""
    s = env.store()
    plain = RedisStore(env.redis.url, audit_key=audit_key(env.home))
    try:
        n = 200
        t0 = time.perf_counter()
        for i in range(n):
            plain.append_audit("bench", "", {"i": i}, float(i))
        t1 = time.perf_counter()
        for i in range(n):
            s.append_audit("bench", "", {"i": i}, float(i))
        t2 = time.perf_counter()
        print(f"\naudit append: {1e3 * (t1 - t0) / n:.3f} ms without checkpoint, "
              f"{1e3 * (t2 - t1) / n:.3f} ms with a checkpoint (flock + write + fsync)")
    finally:
        s.close()
        plain.close()
