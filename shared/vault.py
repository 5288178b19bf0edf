"""Server-side secrets on disk: the Noise static key and the storage key.

Both live in ``ATTESTGATE_SERVER_HOME`` with mode 0600, created on first use.
Device PSKs are stored in Redis only encrypted (AES-256-GCM) under the storage
key, with the device id as associated data, so a stolen Redis dump or a record
copied onto another device id yields nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import AttestgateError, ErrorCode
from shared.keys import Random, StaticKey

NOISE_KEY_FILE = "noise-static.key"
STORAGE_KEY_FILE = "storage.key"
_NONCE = 12


def _load_or_create(path: Path, size: int, rng: Random) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = rng(size)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return data
    if len(data) != size:
        raise AttestgateError(ErrorCode.INTERNAL, f"{path} is not {size} bytes")
    return data


def server_static(home: Path, rng: Random = os.urandom) -> StaticKey:
    return StaticKey.from_private(_load_or_create(home / NOISE_KEY_FILE, 32, rng))


class Vault:
    """Encrypts small secrets at rest under the server's storage key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @staticmethod
    def open(home: Path, rng: Random = os.urandom) -> Vault:
        return Vault(_load_or_create(home / STORAGE_KEY_FILE, 32, rng))

    def seal(self, secret: bytes, context: str, rng: Random = os.urandom) -> bytes:
        nonce = rng(_NONCE)
        return nonce + self._aead.encrypt(nonce, secret, context.encode())

    def unseal(self, sealed: bytes, context: str) -> bytes:
        try:
            return self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], context.encode())
        except (InvalidTag, ValueError):
            raise AttestgateError(ErrorCode.INTERNAL, "stored secret does not decrypt") from None

    def __repr__(self) -> str:
        return "Vault(<key>)"
