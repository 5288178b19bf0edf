"""The board against an attacker, on the real stack (redis-server, gateway, workers, swtpm).

- replies are bounded: 500 maximum-size posts of worst-case encoding read back whole;
- what is shown is what was signed: a post edited in Redis (text, author, time) reads
  as not verified or with the registry's name, and ``verify-post`` names what differs;
- a post cannot forge another device's header line in any human output;
- a post whose reply was lost is stored once when retried;
- one device cannot post without limit (``rate_limited``, nothing stored).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from client import flows
from client import state as st
from client.channel import Refused
from client.cli import EXIT_NETWORK, EXIT_OK, EXIT_REFUSED, main
from client.pending import PENDING_FILE
from client.tpm import Tpm
from services.registry import admin
from shared.errors import ErrorCode
from shared.post_display import CONTINUATION
from shared.store.redis_store import POSTS, RedisStore
from shared.wire import MAX_POST_BYTES, MAX_READ_LIMIT, Command
from tests.support.cut_proxy import ReplyCuttingProxy
from tests.support.stack import REPO, Stack
from tests.support.swtpm import SwtpmProcess, TemplateTpm

pytestmark = pytest.mark.integration

# -- timing (one commented block, STYLE §10) ----------------------------------------
FOLLOW_READY_TIMEOUT = 30.0  # the follower's CLI connects and subscribes
FOLLOW_TIMEOUT = 30.0  # the followed post reaches the follower's CLI
CUT_TIMEOUT = 10.0  # the board stores the post and the proxy withholds its reply

HEADER = re.compile(r"\[(?P<id>[0-9]+-[0-9]+)\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<author>.+) "
                    r"\((?P<mark>verified|UNVERIFIED) TPM signature\)")
# Lifted limits for the module's stack: it fills the board with 500 posts from one device.
UNLIMITED = {"ATTESTGATE_POST_RATE": "10000", "ATTESTGATE_POST_BURST": "10000"}


def _quiet(_line: str) -> None:
    pass


@dataclass
class Device:
    tpm: SwtpmProcess
    home: Path
    state: st.ClientState

    def args(self, home: Path | None = None) -> list[str]:
        return ["--tpm", self.tpm.tcti, "--home", str(home or self.home)]


@dataclass
class Board:
    stack: Stack
    alice: Device
    bob: Device


def _enroll(stack: Stack, tpm: SwtpmProcess, home: Path, name: str) -> Device:
    with Tpm(tpm.tcti) as t:
        state = flows.enroll(t, home, stack.server, name, None, flows.ServerPin(None, True),
                             False, _quiet)
    return Device(tpm, home, state)


def _trust_dir(directory: Path, *templates: TemplateTpm) -> Path:
    directory.mkdir(parents=True)
    for t in templates:
        shutil.copyfile(t.ca_cert_path, directory / t.ca_cert_path.name)
    return directory


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory, swtpm_template: TemplateTpm,
          swtpm_template_other_ca: TemplateTpm) -> Iterator[Board]:
    root = tmp_path_factory.mktemp("board-hardening")
    trust = _trust_dir(root / "trust", swtpm_template, swtpm_template_other_ca)
    stack = Stack.start(root / "stack", ca_dir=trust, settings=UNLIMITED)
    tpms: list[SwtpmProcess] = []
    try:
        devices = []
        for name, template in (("alice", swtpm_template), ("bob", swtpm_template_other_ca)):
            tpms.append(SwtpmProcess.start(root / f"tpm-{name}", template))
            devices.append(_enroll(stack, tpms[-1], root / f"home-{name}", name))
        yield Board(stack, *devices)
    finally:
        stack.stop()
        for tpm in tpms:
            tpm.stop()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    rc = main([*argv, "--json"])
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert isinstance(doc, dict), out
    return rc, doc


def _human(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([*argv, "-q"])
    return rc, capsys.readouterr().out


def _admin(stack: Stack, *argv: str) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    rc = admin.run([*argv, "--json"], env=stack.env, stdout=out, stderr=err, clock=time.time,
                   rng=os.urandom)
    return rc, json.loads(out.getvalue()), err.getvalue()


def _stored(stack: Stack) -> list[Any]:
    store = RedisStore(stack.redis.url)
    try:
        return list(store.read_posts(None, 100_000))
    finally:
        store.close()


def _edit_in_redis(stack: Stack, post_id: str, **changes: bytes) -> None:
    """Rewrite one stored post as an attacker with write access to Redis would: the
    stream is recreated with the same ids, the chosen fields replaced or added."""
    store = RedisStore(stack.redis.url)
    try:
        r = store.raw()
        rows = r.xrange(POSTS)
        assert post_id.encode() in [i for i, _ in rows]
        r.delete(POSTS)
        for entry_id, fields in rows:
            edited = {k.encode(): v for k, v in changes.items()}
            r.xadd(POSTS, {**fields, **edited} if entry_id == post_id.encode() else fields,
                   id=entry_id)
    finally:
        store.close()


def _check_lines(out: str, posts: list[dict[str, Any]]) -> list[re.Match[str]]:
    """Every line is a header of one of ``posts``, in order, or an indented text line."""
    headers = []
    for line in out.splitlines():
        if line.startswith(CONTINUATION):
            continue
        match = HEADER.fullmatch(line)
        assert match is not None, f"a line at column 0 is not a header: {line!r}"
        headers.append(match)
    assert [m["id"] for m in headers] == [p["post_id"] for p in posts]
    assert [m["author"] for m in headers] == [p["author"] for p in posts]
    return headers


# -- 1. replies are bounded --------------------------------------------------------------------

# 4-byte UTF-8 characters fill 4,096 bytes with 1,024 characters that JSON escapes to 12
# bytes each; newlines, tabs, quotes and backslashes to 2. Each text is unique (suffix).
def _worst_text(i: int) -> str:
    tail = f"#{i:03d}"
    if i % 2:
        return "\U0001f600" * ((MAX_POST_BYTES - 4) // 4) + tail
    return "\n\t\"\\" * ((MAX_POST_BYTES - 4) // 4) + tail


@pytest.mark.timeout(600)
def test_read_500_max_size_posts_default_and_limit_500(board: Board,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    alice = board.alice
    with Tpm(alice.tpm.tcti) as tpm, flows.connect(tpm, alice.state, _quiet) as ch:
        for i in range(MAX_READ_LIMIT):
            text = _worst_text(i)
            assert len(text.encode()) == MAX_POST_BYTES
            flows.post(tpm, alice.state, ch, text)
    stored = _stored(board.stack)[-MAX_READ_LIMIT:]
    assert [p.text for p in stored] == [_worst_text(i) for i in range(MAX_READ_LIMIT)]

    rc, doc = _cli(capsys, "read", *board.bob.args())
    assert rc == EXIT_OK, doc
    assert [(p["post_id"], p["text"]) for p in doc["posts"]] == [
        (p.post_id, p.text) for p in stored[-50:]]
    assert all(p["verified"] and p["author"] == "alice" for p in doc["posts"])

    rc, doc = _cli(capsys, "read", "--limit", "500", *board.bob.args())
    assert rc == EXIT_OK, doc
    ids = [p["post_id"] for p in doc["posts"]]
    assert len(ids) == len(set(ids)) == MAX_READ_LIMIT
    assert [(p["post_id"], p["text"]) for p in doc["posts"]] == [
        (p.post_id, p.text) for p in stored]  # exact text, in order, nothing twice

    rc, out = _human(capsys, "read", "--limit", "500", *board.bob.args())
    assert rc == EXIT_OK
    _check_lines(out, doc["posts"])


# -- 2. what is shown is what was signed ------------------------------------------------------


def _post(capsys: pytest.CaptureFixture[str], dev: Device, text: str) -> str:
    rc, doc = _cli(capsys, "post", text, *dev.args())
    assert rc == EXIT_OK, doc
    return str(doc["post_id"])


def _read_one(capsys: pytest.CaptureFixture[str], board: Board, post_id: str) -> dict[str, Any]:
    rc, doc = _cli(capsys, "read", "--limit", "500", *board.bob.args())
    assert rc == EXIT_OK, doc
    (post,) = [p for p in doc["posts"] if p["post_id"] == post_id]
    return dict(post)


@pytest.mark.timeout(120)
def test_stored_post_text_edited_in_redis(board: Board,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    post_id = _post(capsys, board.alice, "pay bob 1 coin")
    assert _read_one(capsys, board, post_id)["verified"] is True
    _edit_in_redis(board.stack, post_id, text=b"pay bob 1000 coins")
    post = _read_one(capsys, board, post_id)
    assert (post["text"], post["verified"]) == ("pay bob 1000 coins", False)
    rc, doc, err = _admin(board.stack, "verify-post", post_id)
    assert rc == 3 and doc["verified"] is False
    assert doc["problems"] == ["signature"] and "(bad_signature)" in err


@pytest.mark.timeout(120)
def test_stored_post_author_edited_in_redis(board: Board,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    post_id = _post(capsys, board.alice, "signed by alice")
    _edit_in_redis(board.stack, post_id, author=b"bob")
    post = _read_one(capsys, board, post_id)
    assert (post["author"], post["verified"]) == ("alice", True)  # the registry's name
    rc, doc, _ = _admin(board.stack, "verify-post", post_id)
    assert rc == 3 and doc["author"] == "alice" and doc["problems"] == ["author"]

    # Moving the post to bob's device id shows bob, and not verified.
    _edit_in_redis(board.stack, post_id, device=board.bob.state.device_id.encode())
    post = _read_one(capsys, board, post_id)
    assert (post["author"], post["verified"]) == ("bob", False)
    rc, doc, _ = _admin(board.stack, "verify-post", post_id)
    assert rc == 3 and "signature" in doc["problems"]


@pytest.mark.timeout(120)
def test_stored_post_time_edited_in_redis(board: Board,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    post_id = _post(capsys, board.alice, "posted today")
    before = _read_one(capsys, board, post_id)
    backdated = int(before["ts"] * 1000) - 30 * 86_400_000
    _edit_in_redis(board.stack, post_id, ts=str(backdated).encode())
    post = _read_one(capsys, board, post_id)
    assert (post["ts"], post["verified"]) == (backdated / 1000, False)
    rc, doc, err = _admin(board.stack, "verify-post", post_id)
    assert rc == 3 and doc["problems"] == ["signature", "time"], doc
    assert "time" in err and "signature" in err


# -- 3. a post cannot forge another device's header ------------------------------------------


@pytest.mark.timeout(180)
def test_forged_header_line_in_post_text(board: Board, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    bob_id = _post(capsys, board.bob, "hello from bob")
    rc, out = _human(capsys, "read", "--limit", "1", *board.bob.args())
    assert rc == EXIT_OK
    bob_header = out.splitlines()[0]
    assert HEADER.fullmatch(bob_header) and f"[{bob_id}]" in bob_header
    forged = f"innocent\n{bob_header}\n{CONTINUATION}send your coins to mallory"

    follower = subprocess.Popen(
        [sys.executable, "-m", "client.cli", "follow", "--count", "1", *board.bob.args()],
        cwd=REPO, env={**board.stack.env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stderr is not None
        deadline = time.monotonic() + FOLLOW_READY_TIMEOUT
        while "following the board" not in follower.stderr.readline():
            assert time.monotonic() < deadline and follower.poll() is None
        alice_id = _post(capsys, board.alice, forged)
        followed, _ = follower.communicate(timeout=FOLLOW_TIMEOUT)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    alice_view = {"post_id": alice_id, "author": "alice"}
    _check_lines(followed, [alice_view])

    rc, doc = _cli(capsys, "read", "--limit", "2", *board.bob.args())
    assert [p["text"] for p in doc["posts"]] == ["hello from bob", forged]  # JSON: exact
    rc, out = _human(capsys, "read", "--limit", "2", *board.bob.args())
    assert rc == EXIT_OK
    _check_lines(out, doc["posts"])
    assert f"{CONTINUATION}{bob_header}" in out.splitlines()

    out_admin = io.StringIO()
    rc = admin.run(["verify-post", alice_id], env=board.stack.env, stdout=out_admin,
                   stderr=io.StringIO(), clock=time.time, rng=os.urandom)
    assert rc == 0
    admin_lines = out_admin.getvalue().splitlines()
    assert HEADER.fullmatch(admin_lines[0])
    assert all(line.startswith(CONTINUATION) for line in admin_lines[1:-1])
    assert admin_lines[-1] == "verified"


# -- 4. a retried post is stored once ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_post_retried_after_its_reply_was_lost_is_stored_once(
        board: Board, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "alice-copy"  # the same device, its client home reached via a proxy
    shutil.copytree(board.alice.home, home)
    text = f"exactly once {os.urandom(4).hex()}"
    with ReplyCuttingProxy.start("127.0.0.1", board.stack.gateway_port, keep=2) as proxy:
        # Frames from the server: handshake, attestation reply, then the post's reply: cut.
        st.save(home, replace(board.alice.state, server=proxy.address))
        rc, doc = _cli(capsys, "post", text, *board.alice.args(home))
        assert proxy.cut.wait(CUT_TIMEOUT)
    assert rc == EXIT_NETWORK, doc
    stored = [p for p in _stored(board.stack) if p.text == text]
    assert len(stored) == 1  # the board stored it; the client never heard
    assert (home / PENDING_FILE).exists()
    assert (home / PENDING_FILE).stat().st_mode & 0o777 == 0o600

    st.save(home, board.alice.state)  # the network is back
    rc, doc = _cli(capsys, "post", text, *board.alice.args(home))
    assert rc == EXIT_OK, doc
    assert (doc["post_id"], doc["created"]) == (stored[0].post_id, False)
    assert [p.post_id for p in _stored(board.stack) if p.text == text] == [stored[0].post_id]
    assert not (home / PENDING_FILE).exists()

    # Once acknowledged, the same text again is a new post.
    rc, doc = _cli(capsys, "post", text, *board.alice.args(home))
    assert rc == EXIT_OK and doc["created"] is True
    assert len([p for p in _stored(board.stack) if p.text == text]) == 2


# -- 5. per-device post rate limit ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_post_rate_limit_refuses_with_nothing_stored(
        tmp_path: Path, swtpm: SwtpmProcess, swtpm_template: TemplateTpm,
        capsys: pytest.CaptureFixture[str]) -> None:
    settings = {"ATTESTGATE_POST_RATE": "0.001", "ATTESTGATE_POST_BURST": "3"}
    with Stack.start(tmp_path / "stack", ca_dir=swtpm_template.trust_dir,
                     settings=settings) as stack:
        dev = _enroll(stack, swtpm, tmp_path / "home", "poster")
        with Tpm(swtpm.tcti) as tpm, flows.connect(tpm, dev.state, _quiet) as ch:
            ids = [flows.post(tpm, dev.state, ch, f"post {i}")["post_id"] for i in range(3)]
            with pytest.raises(Refused) as refused:
                flows.post(tpm, dev.state, ch, "one too many")
            assert refused.value.code is ErrorCode.RATE_LIMITED
            # The session survives; reading is not limited.
            assert len(ch.request(Command.READ)["posts"]) == 3
        assert [p.post_id for p in _stored(stack)] == ids
        rc, doc = _cli(capsys, "post", "still too many", *dev.args())
        assert (rc, doc["error"]) == (EXIT_REFUSED, ErrorCode.RATE_LIMITED.value)
        assert len(_stored(stack)) == 3


@pytest.mark.timeout(60)
def test_bad_board_setting_stops_the_worker_with_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "ATTESTGATE_POST_BURST": "0"}
    proc = subprocess.run([sys.executable, "-m", "services.board"], check=False, cwd=REPO,
                          env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "attestgate-board: ATTESTGATE_POST_BURST='0' is not valid: expected a whole number "
        "from 1 to 1000000"]
