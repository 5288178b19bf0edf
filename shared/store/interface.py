"""The Store interface; ``redis_store`` and ``memory`` implement it.

Writes either complete or raise: a method that returns has been acknowledged by
the store (with ``deploy/redis.conf``: written and fsynced to the AOF). A
``STORE_UNAVAILABLE`` error means the write may not have happened; every write
that a caller may retry is idempotent (post keys, WATCH'd updates).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import AttestgateError, ErrorCode
from shared.records import AuditEntry, Device, Post, Token
from shared.wire import MAX_LOG_BUS

# Pending enrollment verified by the attestor, consumed by the registry's ``register``.
PENDING_ENROLLED = "enrolled:"


def check_event_log(device_id: str, digest: str, blob: bytes) -> None:
    """What every store checks before keeping an event log: a bounded blob, a hex digest."""
    if len(blob) > MAX_LOG_BUS:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"event log {len(blob)} B")
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest) or (
            not device_id or ":" in device_id or len(device_id) > 64):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "event log key")


@dataclass(frozen=True)
class PostQuota:
    """Per-device limits on new posts (``shared.board_settings`` reads them)."""

    rate: float  # posts per second a device's bucket refills
    burst: int  # the bucket's size: posts a device may send at once
    key_ttl: float  # seconds an idempotency key is remembered (a retry within it is safe)


class Store(Protocol):
    # -- devices -------------------------------------------------------------------
    def get_device(self, device_id: str) -> Device | None: ...

    def device_by_noise(self, noise_public: bytes) -> Device | None: ...

    def device_by_name(self, name: str) -> Device | None:
        """Names are unique case-insensitively: ``DEV1`` finds ``dev1``."""
        ...

    def device_by_ek(self, ek_fingerprint: str) -> Device | None: ...

    def create_device(self, device: Device, token_id: str | None,
                      replaces: str | None = None) -> None:
        """Store a new device atomically, consuming ``token_id`` if given.

        Raises NAME_TAKEN (also for a name differing only in case), ALREADY_ENROLLED
        (same EK or Noise key) or BAD_TOKEN (token gone or expired), and then nothing is
        stored. With ``replaces``, the device of that id, if it still exists, must be in
        status REENROLL (else ALREADY_ENROLLED); its record and indexes are deleted in the
        same step, so its name and EK may be the new device's.
        """
        ...

    def delete_device(self, device_id: str) -> Device | None:
        """Delete a device's record, its indexes and replay guard; the deleted record, or
        None if there was none. Posts and audit entries stay."""
        ...

    def update_device(self, device_id: str, change: Callable[[Device], Device]) -> Device:
        """Apply ``change`` atomically (optimistic retry); raises UNKNOWN_DEVICE."""
        ...

    def list_devices(self) -> Sequence[Device]: ...

    def last_connect_ts(self, device_id: str) -> int:
        """The newest recorded reconnect timestamp of the device; -1 if none."""
        ...

    def advance_connect_ts(self, device_id: str, ts: int) -> bool:
        """Record a reconnect timestamp; False (nothing changed) if not newer than the last."""
        ...

    def connect_lookup(self, noise_public: bytes) -> tuple[Device, int] | None:
        """``device_by_noise`` and that device's ``last_connect_ts``, in one round trip."""
        ...

    def confirm_connect(self, device_id: str, ts: int) -> Device | None:
        """``get_device``, and when the device exists and ``ts >= 0``,
        ``advance_connect_ts(device_id, ts)``: one round trip. None (nothing recorded) for
        an unknown device."""
        ...

    # -- enrollment ------------------------------------------------------------------
    def put_token(self, token: Token) -> None: ...

    def get_token(self, token_id: str, now: float) -> Token | None:
        """The token if it exists and has not expired."""
        ...

    def count_token_failure(self, token_id: str, expires_at: float) -> int:
        """Count one failed handshake under this token (wrong secret); returns the count.
        The counter lives as long as the token (``expires_at``, epoch seconds)."""
        ...

    def burn_token(self, token_id: str) -> bool:
        """Delete a token so that it can never be used; False if it was already gone."""
        ...

    def put_pending(self, key: str, data: bytes, ttl: float) -> None: ...

    def take_pending(self, key: str) -> bytes | None:
        """Get and delete (one use only)."""
        ...

    def put_event_log(self, device_id: str, digest: str, blob: bytes) -> None:
        """Keep a device's event log (``shared.eventlog.transport.compress`` form) under its
        SHA-256 ``digest`` (what ``Baseline.log`` refers to); TOO_LARGE beyond MAX_LOG_BUS."""
        ...

    def get_event_log(self, device_id: str, digest: str) -> bytes | None: ...

    def delete_event_log(self, device_id: str, digest: str) -> None:
        """Forget a log no record refers to any more; nothing happens if it is gone."""
        ...

    # -- secrets (values sealed by shared.secrets; the store sees only records) ----------
    def put_secret(self, device_id: str, name: str, record: bytes) -> None: ...

    def get_secret(self, device_id: str, name: str) -> bytes | None: ...

    def list_secrets(self, device_id: str) -> Mapping[str, bytes]:
        """Every secret record of one device, by name."""
        ...

    def delete_secret(self, device_id: str, name: str) -> bool:
        """False if there was none."""
        ...

    # -- rule policies (shared.eventlog.rules documents) ---------------------------------
    def get_rule_policy(self, scope: str) -> bytes | None:
        """A device's rule policy (``scope`` = its id) or the default for all (``scope`` = "")."""
        ...

    def put_rule_policy(self, scope: str, doc: bytes) -> None: ...

    def delete_rule_policy(self, scope: str) -> bool:
        """False if there was none. A device's policy also goes when the device does."""
        ...

    def list_rule_policies(self) -> Mapping[str, bytes]:
        """Every rule policy by scope ("" = the default)."""
        ...

    # -- board -------------------------------------------------------------------------
    def add_post(self, key: bytes, fields: Mapping[str, bytes | str], *, device_id: str,
                 now: float, quota: PostQuota) -> tuple[str, bool]:
        """Append a post unless one with this idempotency key exists, in one atomic step.

        Returns (post id, created). A retry within ``quota.key_ttl`` returns the first id
        and False, and takes no token. A new post takes one token from ``device_id``'s
        bucket (``shared.ratelimit``); with none left it raises RATE_LIMITED and nothing
        is stored.
        """
        ...

    def read_posts(self, since: str | None, limit: int) -> Sequence[Post]:
        """Posts with id strictly after ``since`` (oldest first), at most ``limit``."""
        ...

    def latest_posts(self, limit: int) -> Sequence[Post]: ...

    def get_post(self, post_id: str) -> Post | None: ...

    def count_posts(self) -> int: ...

    # -- audit -------------------------------------------------------------------------
    def append_audit(self, event: str, device_id: str, detail: Mapping[str, Any], now: float
                     ) -> AuditEntry:
        """Append to the HMAC chain (the store holds the audit key) and record a checkpoint."""
        ...

    def read_audit(self, device_id: str | None = None, limit: int = 10_000) -> Sequence[AuditEntry]:
        ...

    def audit_head(self) -> str:
        """Hash of the newest audit entry ("" when the log is empty)."""
        ...

    # -- operator ------------------------------------------------------------------------
    def purge(self, keep_audit: bool = False) -> int:
        """Delete every attestgate key (but the audit log's if ``keep_audit``); returns how many."""
        ...


def referenced_logs(device: Device) -> set[str]:
    """The stored event logs a device record refers to: its baselines' and its last
    refused state's."""
    refused = device.last_refused.log if device.last_refused else ""
    return {b.log for b in device.baselines if b.log} | ({refused} if refused else set())


def forget_unreferenced_logs(store: Store, before: Device, after: Device) -> None:
    """Delete the event logs ``before`` referred to that ``after`` (the same device, changed)
    no longer does: a replaced baseline, a newer refused state. Logs are kept only while a
    record refers to them, so a device's logs stay bounded by its baselines + one."""
    for digest in sorted(referenced_logs(before) - referenced_logs(after)):
        store.delete_event_log(after.device_id, digest)
