"""Server-side secrets on disk: the Noise static key, the storage key and the audit key.

All three live in ``ATTESTGATE_SERVER_HOME`` with mode 0600. They are created
together, once: by :func:`init_server_home` (the gateway's or a worker's first start,
or ``attestgate-admin init``), and only while nothing depends on them yet. A key
that is missing while the store holds what it protects (devices for the storage and
Noise keys, audit entries for the audit key) is never re-created: a new storage key
would silently orphan every device, a new Noise key would make every client refuse
the server, a new audit key would make the whole log unverifiable. Loading
(:func:`server_static`, :meth:`Vault.open`, :func:`audit_key`) never creates anything.

Device PSKs are stored in Redis only encrypted (AES-256-GCM) under the storage
key, with the device id as associated data, so a stolen Redis dump or a record
copied onto another device id yields nothing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.audit import AUDIT_KEY_LEN, AuditKey
from shared.errors import AttestgateError, ErrorCode
from shared.keys import Random, StaticKey

NOISE_KEY_FILE = "noise-static.key"
STORAGE_KEY_FILE = "storage.key"
AUDIT_KEY_FILE = "audit.key"
KEY_FILES = (NOISE_KEY_FILE, STORAGE_KEY_FILE, AUDIT_KEY_FILE)
_LOCK_FILE = ".keys.lock"
_KEY_LEN = 32
_NONCE = 12


class ServerKeyError(Exception):
    """A server key is missing or unusable; ``message`` is one line for the operator."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class StoreUsage:
    """What the store holds that server keys protect (see :func:`init_server_home`)."""

    devices: int
    audit_entries: int


def _read_key(path: Path, size: int = _KEY_LEN) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ServerKeyError(
            f"no {path.name} in server home {path.parent} (ATTESTGATE_SERVER_HOME): keys are "
            "created by the gateway's first start or `attestgate-admin init`; if this server "
            f"ran before, restore {path.name} from backup into that directory") from None
    except OSError as exc:
        raise ServerKeyError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) != size:
        raise ServerKeyError(f"{path} is not a {size}-byte key: restore it from backup")
    return data


def server_static(home: Path) -> StaticKey:
    """The gateway's Noise static key; raises ServerKeyError when absent."""
    return StaticKey.from_private(_read_key(home / NOISE_KEY_FILE))


def audit_key(home: Path) -> AuditKey:
    """The audit chain's key; raises ServerKeyError when absent."""
    return AuditKey(_read_key(home / AUDIT_KEY_FILE, AUDIT_KEY_LEN))


def _restore_message(home: Path, missing: list[str], usage: StoreUsage) -> str:
    held = []
    if usage.devices:
        held.append(f"{usage.devices} device(s)")
    if usage.audit_entries:
        held.append(f"{usage.audit_entries} audit entr{'y' if usage.audit_entries == 1 else 'ies'}")
    files = " and ".join(missing)
    lost_audit_only = (" (if audit.key is lost for good: `attestgate-admin init "
                       "--new-audit-key` keeps the old log aside and starts a new one)"
                       if missing == [AUDIT_KEY_FILE] else "")
    return (f"server home {home} (ATTESTGATE_SERVER_HOME) has no {files}, but the store holds "
            f"{' and '.join(held)} made with the old key(s): refusing to create new ones (that "
            f"would orphan them); check ATTESTGATE_SERVER_HOME, or restore {files} from backup "
            f"into {home} (mode 0600) and start again{lost_audit_only}")


def init_server_home(home: Path, usage: Callable[[], StoreUsage] | None,
                     rng: Random = os.urandom) -> tuple[str, ...]:
    """Create the server keys that are missing, if nothing depends on them yet.

    ``usage`` reports what the store holds; it is asked only when a key is missing,
    and None means "the store cannot be asked" (then only a home without any key is
    initialised). Creation is serialised across processes by a lock file, so several
    services starting at once agree on one set of keys. Returns the files created;
    raises ServerKeyError (restore from backup) or OSError (permissions, disk).
    """
    if all((home / f).exists() for f in KEY_FILES):
        return ()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(home / _LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        missing = [f for f in KEY_FILES if not (home / f).exists()]
        if not missing:
            return ()
        if usage is None:
            if len(missing) < len(KEY_FILES):
                raise ServerKeyError(
                    f"server home {home} has no {' and '.join(missing)}: restore from backup")
        else:
            held = usage()
            needed = [f for f in missing if (held.audit_entries if f == AUDIT_KEY_FILE
                                             else held.devices)]
            if needed:
                raise ServerKeyError(_restore_message(home, needed, held))
        for name in missing:
            _write_new(home / name, rng(_KEY_LEN))
        return tuple(missing)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class Vault:
    """Encrypts small secrets at rest under the server's storage key."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @staticmethod
    def open(home: Path) -> Vault:
        """The vault of the storage key in ``home``; raises ServerKeyError when absent."""
        return Vault(_read_key(home / STORAGE_KEY_FILE))

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
