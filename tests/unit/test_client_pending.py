"""The client's pending post: kept 0600 in the home until acknowledged, reused for the same text."""

from __future__ import annotations

import stat
from pathlib import Path

from client import pending
from client.pending import PENDING_FILE, PendingPost

NOW = 1_700_000_000.0
P = PendingPost("hello\nworld", b"k" * 16, int(NOW * 1000))


def test_round_trip_mode_0600_no_temp_left(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pending.save(home, P)
    assert pending.load(home, NOW) == P
    assert stat.S_IMODE((home / PENDING_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in home.iterdir()) == [PENDING_FILE]


def test_replaced_then_cleared(tmp_path: Path) -> None:
    other = PendingPost("other", b"o" * 16, int(NOW * 1000) + 5)
    pending.save(tmp_path, P)
    pending.save(tmp_path, other)
    assert pending.load(tmp_path, NOW) == other
    pending.clear(tmp_path)
    assert pending.load(tmp_path, NOW) is None
    pending.clear(tmp_path)  # clearing nothing is fine


def test_matches_only_the_same_text() -> None:
    assert P.matches("hello\nworld")
    assert not P.matches("hello\nworld ")
    assert not P.matches("Hello\nworld")


def test_older_than_the_board_remembers_keys_is_dropped(tmp_path: Path) -> None:
    pending.save(tmp_path, P)
    assert pending.load(tmp_path, NOW + pending.MAX_AGE - 1) == P
    assert pending.load(tmp_path, NOW + pending.MAX_AGE + 1) is None


def test_damaged_file_is_no_pending_post(tmp_path: Path) -> None:
    for content in ["", "{", "[]", '{"text": "x", "key": "zz", "ts": 1}',
                    '{"text": "x", "key": "6b6b", "ts": 1}', '{"text": "x"}']:
        (tmp_path / PENDING_FILE).write_text(content)
        assert pending.load(tmp_path, NOW) is None, content
