"""The client TPM adapter's own byte handling, no TPM: the saved-contexts file
(client/tpm/saved.py), PCR_Read answers sliced from one marshal, the pinned templates."""

from __future__ import annotations

import os
import stat
import struct
from collections import OrderedDict
from pathlib import Path

import pytest
from tpm2_pytss.types import TPML_DIGEST, TPML_PCR_SELECTION

from client.tpm import saved
from client.tpm.common import (
    AK_TEMPLATE,
    SRK_TEMPLATE,
    digest_list,
    parsed_templates,
    sha256_indices,
)

CTX = bytes(range(200)) * 3


def test_templates_are_the_parsed_strings() -> None:
    assert parsed_templates() == (SRK_TEMPLATE, AK_TEMPLATE)


# -- PCR_Read answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("selection", ["sha256:0", "sha256:0,1,2,3,4,5,6,7", "sha256:7,16,23",
                                       "sha1:3+sha256:1,9"])
def test_selection_indices_match_tpm2_pytss(selection: str) -> None:
    marshalled = bytes(TPML_PCR_SELECTION.parse(selection).marshal())
    expected = sorted(int(i) for part in selection.split("+") if part.startswith("sha256:")
                      for i in part.split(":")[1].split(","))
    assert sha256_indices(marshalled) == expected


def test_digest_list_matches_tpm2_pytss() -> None:
    digests = [os.urandom(32) for _ in range(8)]
    marshalled = bytes(TPML_DIGEST(digests).marshal())
    assert digest_list(marshalled) == digests
    assert digest_list(struct.pack(">I", 0)) == []


@pytest.mark.parametrize("data", [
    b"", b"\0\0\0", struct.pack(">I", 1), struct.pack(">IH", 1, 32) + bytes(31),
    struct.pack(">IH", 1, 32) + bytes(33), struct.pack(">I", 2) + struct.pack(">H", 1) + b"x",
])
def test_malformed_digest_lists_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"truncated|trailing"):
        digest_list(data)


@pytest.mark.parametrize("data", [
    b"", struct.pack(">I", 1), struct.pack(">IHB", 1, 0xB, 3) + b"\xff",
    struct.pack(">IHB", 1, 0xB, 3) + b"\xff\0\0\0",
])
def test_malformed_selections_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"truncated|trailing"):
        sha256_indices(data)


# -- the saved-contexts file --------------------------------------------------------------------


def entries(*items: tuple[int, bytes, bytes]) -> OrderedDict[tuple[int, bytes], bytes]:
    return OrderedDict(((kind, ident), data) for kind, ident, data in items)


def test_file_round_trip() -> None:
    e = entries((saved.KIND_CONTEXT, saved.primary_id("ak", AK_TEMPLATE), CTX),
                (saved.KIND_CONTEXT, saved.blob_id(b"priv", b"pub"), CTX[:100]),
                (saved.KIND_PCRS, saved.pcrs_id((0, 1)), bytes(64)))
    assert saved.decode(saved.encode(e)) == e


def test_ids_differ_by_what_they_name() -> None:
    ids = {saved.primary_id("ak", AK_TEMPLATE), saved.primary_id("srk", SRK_TEMPLATE),
           saved.primary_id("ak", SRK_TEMPLATE), saved.blob_id(b"ab", b"c"),
           saved.blob_id(b"a", b"bc"), saved.pcrs_id((0, 1)), saved.pcrs_id((0, 2))}
    assert len(ids) == 7


def _valid() -> bytes:
    return saved.encode(entries((saved.KIND_CONTEXT, bytes(32), CTX)))


@pytest.mark.parametrize("data", [
    b"", b"AGC1", b"AGC0\0", _valid()[:-1], _valid() + b"\0", b"x" + _valid()[1:],
    b"AGC1" + bytes([saved.MAX_ENTRIES + 1]),
    b"AGC1\1" + struct.pack(">B32sH", 9, bytes(32), 1) + b"x",  # unknown kind
    b"AGC1\1" + struct.pack(">B32sH", 1, bytes(32), 0),  # empty data
    b"AGC1\2" + (struct.pack(">B32sH", 1, bytes(32), 1) + b"x") * 2,  # the same entry twice
    b"AGC1\1" + struct.pack(">B32sH", 1, bytes(32), saved.MAX_DATA + 1)
    + bytes(saved.MAX_DATA + 1),
    bytes(saved.MAX_FILE + 1),
])
def test_anything_else_does_not_decode(data: bytes) -> None:
    with pytest.raises(ValueError):
        saved.decode(data)


def test_store_reads_writes_0600_and_keeps_the_last_entries(tmp_path: Path) -> None:
    path = tmp_path / "tpm-contexts.bin"
    store = saved.SavedContexts(path)
    assert not store.dirty and store.get(saved.KIND_CONTEXT, bytes(32)) is None
    for n in range(saved.MAX_ENTRIES + 3):
        store.put(saved.KIND_CONTEXT, bytes([n]) * 32, CTX)
    store.write()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    again = saved.SavedContexts(path)
    assert again.get(saved.KIND_CONTEXT, bytes([0]) * 32) is None  # the oldest went
    assert again.get(saved.KIND_CONTEXT, bytes([saved.MAX_ENTRIES + 2]) * 32) == CTX
    mtime = path.stat().st_mtime_ns
    again.put(saved.KIND_CONTEXT, bytes([saved.MAX_ENTRIES + 2]) * 32, CTX)  # unchanged
    again.write()
    assert path.stat().st_mtime_ns == mtime


def test_a_damaged_file_reads_empty_and_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "tpm-contexts.bin"
    path.write_bytes(_valid()[:-3])
    store = saved.SavedContexts(path)
    assert store.get(saved.KIND_CONTEXT, bytes(32)) is None
    store.write()
    assert saved.decode(path.read_bytes()) == OrderedDict()


def test_drop_contexts_keeps_pcr_values(tmp_path: Path) -> None:
    store = saved.SavedContexts(tmp_path / "f")
    store.put(saved.KIND_CONTEXT, bytes(32), CTX)
    store.put(saved.KIND_PCRS, bytes(32), bytes(32))
    store.drop_contexts()
    assert store.get(saved.KIND_CONTEXT, bytes(32)) is None
    assert store.get(saved.KIND_PCRS, bytes(32)) == bytes(32)


def test_the_write_never_follows_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    path = tmp_path / "tpm-contexts.bin"
    path.with_name(f"{path.name}.{os.getpid()}.tmp").symlink_to(victim)
    store = saved.SavedContexts(path)
    store.put(saved.KIND_CONTEXT, bytes(32), CTX)
    store.write()
    assert victim.read_bytes() == b"keep me"
    assert saved.decode(path.read_bytes())


def test_an_unwritable_place_is_not_an_error(tmp_path: Path) -> None:
    store = saved.SavedContexts(tmp_path / "missing-dir" / "tpm-contexts.bin")
    store.put(saved.KIND_CONTEXT, bytes(32), CTX)
    store.write()
    assert store.dirty
