"""Saved TPM object contexts, carried across processes in one file of the client's home.

A new ``attestgate post`` process used to pay CreatePrimary for the SRK and the AK and a
Load for every key blob (~4 ms on swtpm, tens of ms on hardware TPMs) before its first
message. After a process has created or loaded an object, :class:`~client.tpm.objects.
TpmObjects` ``TPM2_ContextSave`` s it; the next process ``TPM2_ContextLoad`` s it (~0.15 ms)
instead. This module is the file and nothing else: no TPM, no tpm2_pytss.

What the file holds, and why it is safe in a home an attacker may write:

* each context is what ESAPI's ContextSave returns: the TPM's context blob (the object's
  sensitive part encrypted, the whole MACed, with keys only this TPM holds, bound to its
  hierarchy proof and to its reset count: it loads into no other TPM, and into this one
  only until the next TPM Reset or Clear) wrapped with ESAPI's metadata (the public
  area, not protected). The loader therefore asks the TPM what it loaded (ReadPublic;
  for the AK, the qualifiedSigner of what it signs) and uses it only if it is exactly the
  expected object; anything else is flushed and the object is made the usual way. A
  substituted or stale context can thus only cost the time it takes to notice; the TPM's
  policies (PolicyPCR on the sealed key) apply to a context-loaded object exactly as to
  a loaded blob;
* the AK's name (its quotes' qualifiedSigner is checked against it: see
  TpmObjects.confirm_signer);
* the last PCR values read for a selection. They are used only when they hash to the
  pcrDigest of a quote the TPM just signed (then they are the quoted values), so
  nothing written here can make the client send wrong values.

Format (``AGC1``): magic, u8 entry count, then per entry u8 kind, 32-byte id, u16
length, data. Anything that does not parse whole (truncated, oversized, foreign) is
an empty store: the caller falls back silently and rewrites the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Final

MAGIC: Final = b"AGC1"
KIND_CONTEXT: Final = 1
KIND_PCRS: Final = 2
KIND_NAME: Final = 3  # the name of a saved object, where the client checks it itself
ID_LEN: Final = 32
# An ECC or keyedhash object's ESAPI context is ~520-610 B on swtpm; RSA ones ~1.3 KiB.
MAX_DATA: Final = 4096
MAX_ENTRIES: Final = 16  # SRK, AK (+ name), HMAC key, sealed key, post key, PCRs, older ones
MAX_FILE: Final = len(MAGIC) + 1 + MAX_ENTRIES * (1 + ID_LEN + 2 + MAX_DATA)
PCR_LEN: Final = 32
_ENTRY: Final = struct.Struct(">B32sH")


def primary_id(which: str, template: bytes) -> bytes:
    """The id of a primary (``"srk"``, ``"ak"``) made from the marshalled ``template``."""
    return hashlib.sha256(b"primary\0" + which.encode() + b"\0" + template).digest()


def blob_id(private: bytes, public: bytes) -> bytes:
    """The id of a key blob (its marshalled TPM2B_PRIVATE and TPM2B_PUBLIC)."""
    return hashlib.sha256(b"blob\0" + struct.pack(">H", len(private)) + private + public).digest()


def pcrs_id(indices: Sequence[int]) -> bytes:
    """The id of the sha256 PCR values of ``indices`` (ascending)."""
    return hashlib.sha256(b"pcrs\0" + bytes(indices)).digest()


def decode(data: bytes) -> OrderedDict[tuple[int, bytes], bytes]:
    """Parse a whole file; ValueError for anything else (size checked first)."""
    if len(data) > MAX_FILE or len(data) < len(MAGIC) + 1 or not data.startswith(MAGIC):
        raise ValueError("not a saved-contexts file")
    count = data[len(MAGIC)]
    if count > MAX_ENTRIES:
        raise ValueError("too many entries")
    pos = len(MAGIC) + 1
    out: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
    for _ in range(count):
        if pos + _ENTRY.size > len(data):
            raise ValueError("truncated entry")
        kind, ident, n = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        if kind not in (KIND_CONTEXT, KIND_PCRS, KIND_NAME) or not 0 < n <= MAX_DATA \
                or pos + n > len(data) or (kind, ident) in out:
            raise ValueError("bad entry")
        out[(kind, ident)] = data[pos:pos + n]
        pos += n
    if pos != len(data):
        raise ValueError("trailing bytes")
    return out


def encode(entries: OrderedDict[tuple[int, bytes], bytes]) -> bytes:
    """The file for ``entries`` (the last MAX_ENTRIES of them)."""
    kept = list(entries.items())[-MAX_ENTRIES:]
    parts = [MAGIC, bytes([len(kept)])]
    for (kind, ident), data in kept:
        parts += [_ENTRY.pack(kind, ident, len(data)), data]
    return b"".join(parts)


class SavedContexts:
    """The entries of one file, in memory; read once, written back when changed.

    Least recently used first; at most MAX_ENTRIES are written. Not thread-safe.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: OrderedDict[tuple[int, bytes], bytes] = OrderedDict()
        self.dirty = False
        try:
            self._entries = decode(path.read_bytes())
        except FileNotFoundError:
            pass
        except (OSError, ValueError):
            self.dirty = True  # unreadable or damaged: rewritten at the next write

    def get(self, kind: int, ident: bytes) -> bytes | None:
        data = self._entries.get((kind, ident))
        if data is not None:
            self._entries.move_to_end((kind, ident))
        return data

    def put(self, kind: int, ident: bytes, data: bytes) -> None:
        if not 0 < len(data) <= MAX_DATA or self._entries.get((kind, ident)) == data:
            return
        self._entries[(kind, ident)] = data
        self._entries.move_to_end((kind, ident))
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        self.dirty = True

    def drop_contexts(self) -> None:
        """Forget every context (one did not load or was not what it claimed)."""
        for key in [k for k in self._entries if k[0] != KIND_PCRS]:
            del self._entries[key]
        self.dirty = True

    def write(self) -> None:
        """Write the file if anything changed: a temp file renamed over it, mode 0600.

        Best effort: a home that cannot be written only costs the next process the
        time the contexts would have saved.
        """
        if not self.dirty:
            return
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()  # a leftover of a crashed process with our pid
            # O_EXCL: never write through a link someone put in our place.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(encode(self._entries))
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
