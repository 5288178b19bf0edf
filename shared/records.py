"""Domain records: frozen dataclasses, never dicts, past the boundary."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from shared.errors import ErrorCode
from shared.tpm.pcrs import PcrChange


class DeviceStatus(StrEnum):
    ACTIVE = "active"
    LOCKED = "locked"  # too many failed attestations; an operator may unlock
    REVOKED = "revoked"  # permanent
    REENROLL = "reenroll"  # must enroll again before connecting


@dataclass(frozen=True)
class Baseline:
    """An approved PCR state: selection text and the values, index -> 32 bytes.

    ``log`` is the SHA-256 (hex) of the measured-boot event log that replays to these
    values, "" without one; the log itself is in the store (``Store.get_event_log``).
    ``expires_at`` (epoch seconds, 0 = never) is set when a newer approval superseded
    this baseline under ``ATTESTGATE_BASELINE_GRACE``: from then on it is not accepted."""

    selection: str
    values: tuple[tuple[int, bytes], ...]
    log: str = ""
    approved_at: float = 0.0  # 0: the enrolled baseline (or one stored before this field)
    expires_at: float = 0.0

    def as_dict(self) -> dict[int, bytes]:
        return dict(self.values)

    @property
    def baseline_id(self) -> str:
        """Stable id: a digest of selection and values (the same state has the same id)."""
        h = hashlib.sha256(self.selection.encode())
        for i, v in self.values:
            h.update(i.to_bytes(1, "big") + v)
        return h.hexdigest()[:12]

    def live(self, now: float) -> bool:
        """Still accepted at ``now`` (not a superseded baseline past its grace)."""
        return not self.expires_at or now < self.expires_at

    @staticmethod
    def of(selection: str, values: dict[int, bytes], log: str = "") -> Baseline:
        return Baseline(selection, tuple(sorted(values.items())), log)


@dataclass(frozen=True)
class Device:
    device_id: str
    name: str
    noise_public: bytes
    status: DeviceStatus
    enrolled_at: float
    ek_public: bytes  # TPM2B_PUBLIC
    ek_cert: bytes  # DER, b"" when the TPM has none (allowlist / tofu)
    ek_fingerprint: str
    ak_public: bytes  # TPM2B_PUBLIC
    srk_public: bytes
    post_public: bytes
    baselines: tuple[Baseline, ...]  # the enrolled one first, then approved ones
    psk_sealed: bytes = field(repr=False)  # device PSK, AES-GCM under the server's storage key
    failures: int = 0
    last_attest_at: float = 0.0
    last_reset_count: int = -1
    last_clock: int = -1
    last_diff: tuple[PcrChange, ...] = ()
    last_refused: Baseline | None = None  # the state last refused, for `approve`
    last_eventlog: str = ""  # JSON of the last refusal's event-log diff (StateDiff.as_dict())


@dataclass(frozen=True)
class Token:
    token_id: str  # hex
    psk: bytes = field(repr=False)  # HMAC(secret, label); the secret itself is not stored
    created_at: float = 0.0
    expires_at: float = 0.0


@dataclass(frozen=True)
class Post:
    """A stored board post. There is no author field: the author shown is the registry's
    name of ``device_id``, looked up when the post is displayed or verified."""

    post_id: str  # Redis stream id "ms-seq"
    device_id: str
    text: str
    signed_at_ms: int  # the client's timestamp (ms since the epoch), signed: the time shown
    key: bytes  # client idempotency key
    signature: bytes  # TPMT_SIGNATURE by the device's post key
    received_at: float = 0.0  # the board's clock when it stored the post (not signed)
    stored_author: str | None = None  # an ``author`` field found in the store: never shown;
    # protocol 1 stored one, and ``verify-post`` reports it when it differs from the registry


@dataclass(frozen=True)
class AuditEntry:
    entry_id: str
    ts: float
    event: str
    device_id: str
    detail: str  # canonical JSON
    prev: str  # hex hash of the previous entry ("" for the first)
    hash: str


def status_view(d: Device) -> dict[str, object]:
    return {
        "device_id": d.device_id,
        "name": d.name,
        "status": d.status.value,
        "enrolled_at": d.enrolled_at,
        "failures": d.failures,
        "last_attest_at": d.last_attest_at,
        "selection": d.baselines[0].selection if d.baselines else "",
        "approved_baselines": len(d.baselines),
    }


def refusal_for(status: DeviceStatus) -> ErrorCode | None:
    """The code a device in ``status`` is refused with, or None if it may connect."""
    return {
        DeviceStatus.ACTIVE: None,
        DeviceStatus.LOCKED: ErrorCode.LOCKED,
        DeviceStatus.REVOKED: ErrorCode.REVOKED,
        DeviceStatus.REENROLL: ErrorCode.REENROLL_REQUIRED,
    }[status]
