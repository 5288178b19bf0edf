"""``attestgate secret get``: fetch a secret inside an attested session and open it.

The server answers each request with one :class:`~shared.secrets.Part`: a fresh AES
key wrapped to this TPM's SRK and the part's ciphertext under it. The TPM imports and
unseals the key; the plaintext exists only in this process and where ``--out`` says.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from client import state as st
from client.channel import Channel
from client.tpm import Tpm
from shared.errors import AttestgateError, ErrorCode
from shared.secrets import MAX_SECRET, Part, check_name
from shared.wire import Command

# A rotate between two parts of one fetch starts the fetch over, this many times at most.
_ATTEMPTS = 3


def get(tpm: Tpm, state: st.ClientState, ch: Channel, name: str) -> tuple[bytes, int]:
    """(value, version) of secret ``name``; Refused (NOT_FOUND, REVOKED, ...) from the
    server, CREDENTIAL_FAILED if a part does not open, PROTOCOL if parts disagree."""
    check_name(name)
    for _ in range(_ATTEMPTS):
        value, offset, first = bytearray(), 0, None
        while True:
            part = Part.from_body(ch.request(Command.SECRET_GET, name=name, offset=offset))
            if part.offset != offset:
                raise AttestgateError(ErrorCode.PROTOCOL, "secret part offset")
            if first is not None and (part.version, part.total) != (first.version, first.total):
                break  # rotated meanwhile: start over
            first = first or part
            key = tpm.unwrap_secret_key(part.public, part.duplicate, part.seed)
            value += part.decrypt(key, state.device_id, name)
            offset = len(value)
            if offset >= part.total:
                if offset != part.total or offset > MAX_SECRET:
                    raise AttestgateError(ErrorCode.PROTOCOL, "secret length")
                return bytes(value), part.version
    raise AttestgateError(ErrorCode.PROTOCOL, "the secret kept changing while fetched")


def write_out(value: bytes, out: str | None) -> None:
    """To ``out`` (0600, written to a temporary file beside it then renamed), or stdout."""
    if out is None or out == "-":
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
        return
    path = Path(out)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(value)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
