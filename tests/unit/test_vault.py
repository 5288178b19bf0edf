"""Server keys: created together on a first start, never re-created while the store needs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.vault import (
    AUDIT_KEY_FILE,
    KEY_FILES,
    NOISE_KEY_FILE,
    STORAGE_KEY_FILE,
    ServerKeyError,
    StoreUsage,
    Vault,
    audit_key,
    init_server_home,
    server_static,
)

EMPTY = StoreUsage(0, 0)


def test_first_start_creates_every_key_0600(tmp_path: Path) -> None:
    home = tmp_path / "server"
    assert sorted(init_server_home(home, lambda: EMPTY)) == sorted(KEY_FILES)
    assert all((home / f).stat().st_mode & 0o777 == 0o600 for f in KEY_FILES)
    assert home.stat().st_mode & 0o077 == 0
    assert init_server_home(home, lambda: pytest.fail("not asked when nothing is missing")) == ()
    server_static(home)
    audit_key(home)
    Vault.open(home)


def test_loading_never_creates(tmp_path: Path) -> None:
    for load in (server_static, audit_key, Vault.open):
        with pytest.raises(ServerKeyError) as info:
            load(tmp_path / "typo")
        assert "attestgate-admin init" in info.value.message
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(("lost", "usage"), [
    (STORAGE_KEY_FILE, StoreUsage(1, 0)), (NOISE_KEY_FILE, StoreUsage(1, 0)),
    (AUDIT_KEY_FILE, StoreUsage(0, 1)),
])
def test_a_lost_key_is_not_recreated_while_the_store_needs_it(
        tmp_path: Path, lost: str, usage: StoreUsage) -> None:
    init_server_home(tmp_path, lambda: EMPTY)
    (tmp_path / lost).unlink()
    with pytest.raises(ServerKeyError) as info:
        init_server_home(tmp_path, lambda: usage)
    assert lost in info.value.message and "restore" in info.value.message
    assert not (tmp_path / lost).exists()


def test_a_lost_key_nothing_depends_on_is_recreated(tmp_path: Path) -> None:
    init_server_home(tmp_path, lambda: EMPTY)
    before = (tmp_path / STORAGE_KEY_FILE).read_bytes()
    (tmp_path / AUDIT_KEY_FILE).unlink()
    assert init_server_home(tmp_path, lambda: StoreUsage(3, 0)) == (AUDIT_KEY_FILE,)
    assert (tmp_path / STORAGE_KEY_FILE).read_bytes() == before


def test_without_a_store_only_an_empty_home_is_initialised(tmp_path: Path) -> None:
    assert len(init_server_home(tmp_path / "a", None)) == len(KEY_FILES)
    init_server_home(tmp_path / "b", lambda: EMPTY)
    (tmp_path / "b" / NOISE_KEY_FILE).unlink()
    with pytest.raises(ServerKeyError):
        init_server_home(tmp_path / "b", None)


def test_a_key_of_the_wrong_size(tmp_path: Path) -> None:
    init_server_home(tmp_path, lambda: EMPTY)
    (tmp_path / STORAGE_KEY_FILE).write_bytes(b"short")
    with pytest.raises(ServerKeyError):
        Vault.open(tmp_path)
