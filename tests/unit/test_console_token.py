"""Console tokens and ``attestgate-admin console-token``: signed, expiring, of one kind."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from services.registry.admin import EXIT_OK, EXIT_USAGE, run
from shared.console_token import (
    CONSOLE_KEY_FILE,
    LOGIN_TTL,
    ConsoleKey,
    TokenKind,
    check_token,
    load_key,
    load_or_create_key,
    make_token,
)

KEY = ConsoleKey(b"\x01" * 32)
NOW = 1_700_000_000.0


def test_round_trip_and_expiry() -> None:
    token = make_token(KEY, TokenKind.LOGIN, NOW, 300, os.urandom)
    claims = check_token(KEY, token, TokenKind.LOGIN, NOW + 299)
    assert claims is not None and claims.expires == int(NOW + 300)
    assert check_token(KEY, token, TokenKind.LOGIN, NOW + 300) is None


@pytest.mark.parametrize("kind", [TokenKind.SESSION, TokenKind.API])
def test_a_kind_never_stands_in_for_another(kind: TokenKind) -> None:
    token = make_token(KEY, TokenKind.LOGIN, NOW, 300, os.urandom)
    assert check_token(KEY, token, kind, NOW) is None


def test_every_changed_character_is_refused() -> None:
    token = make_token(KEY, TokenKind.API, NOW, 300, os.urandom)
    for i, c in enumerate(token):
        if c == ".":
            continue
        changed = token[:i] + ("A" if c != "A" else "B") + token[i + 1:]
        assert check_token(KEY, changed, TokenKind.API, NOW) is None, i
    assert check_token(ConsoleKey(b"\x02" * 32), token, TokenKind.API, NOW) is None
    assert check_token(KEY, token + "x" * 200, TokenKind.API, NOW) is None


def test_ttl_bounds() -> None:
    with pytest.raises(ValueError, match="ttl"):
        make_token(KEY, TokenKind.API, NOW, 0, os.urandom)
    with pytest.raises(ValueError, match="ttl"):
        make_token(KEY, TokenKind.API, NOW, 400 * 86400, os.urandom)


def test_key_file_is_created_once_0600(tmp_path: Path) -> None:
    home = tmp_path / "server"
    first = load_or_create_key(home)
    assert load_or_create_key(home) == first == load_key(home)
    mode = stat.S_IMODE((home / CONSOLE_KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert [p.name for p in home.iterdir()] == [CONSOLE_KEY_FILE]  # no temporary file left
    (home / CONSOLE_KEY_FILE).write_bytes(b"short")
    with pytest.raises(ValueError):
        load_key(home)


def _admin(home: Path, *argv: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    out, err = io.StringIO(), io.StringIO()
    rc = run([*argv, "--json"], env={"ATTESTGATE_SERVER_HOME": str(home), **(env or {})},
             stdout=out, stderr=err, clock=lambda: NOW, rng=os.urandom)
    return rc, json.loads(out.getvalue())


def test_admin_prints_a_login_link_signed_with_the_console_key(tmp_path: Path) -> None:
    rc, doc = _admin(tmp_path, "console-token")
    assert rc == EXIT_OK
    prefix = "http://127.0.0.1:8470/login?token="
    assert doc["link"].startswith(prefix)
    key = load_key(tmp_path)
    token = doc["link"][len(prefix):]
    claims = check_token(key, token, TokenKind.LOGIN, NOW)
    assert claims is not None and claims.expires == int(NOW + LOGIN_TTL)


def test_admin_bearer_token_and_public_url(tmp_path: Path) -> None:
    rc, doc = _admin(tmp_path, "console-token", "--bearer", "--ttl", "60",
                     env={"ATTESTGATE_CONSOLE_URL": "https://console.example.org/"})
    assert rc == EXIT_OK and doc["url"] == "https://console.example.org"
    assert check_token(load_key(tmp_path), doc["token"], TokenKind.API, NOW + 59)
    assert not check_token(load_key(tmp_path), doc["token"], TokenKind.API, NOW + 60)


def test_admin_refuses_a_ttl_beyond_a_year(tmp_path: Path) -> None:
    rc, doc = _admin(tmp_path, "console-token", "--ttl", str(400 * 86400))
    assert rc == EXIT_USAGE and doc["error"] == "bad_request"
