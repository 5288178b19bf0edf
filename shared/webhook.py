"""Operator notifications: the webhook event document, its signature and retry schedule.

Pure: no sockets, no clock. The gateway's sender (services/gateway/webhook.py) POSTs
``event.body()`` to ATTESTGATE_WEBHOOK_URL with::

    Content-Type: application/json
    X-Attestgate-Event: refused | locked | reenroll | revoked
    X-Attestgate-Delivery: <event id>
    X-Attestgate-Signature: sha256=<hex HMAC-SHA256(ATTESTGATE_WEBHOOK_SECRET, body)>

The body (keys sorted, UTF-8)::

    {"id": "...", "event": "refused", "device_id": "...", "name": "pi-kitchen",
     "code": "pcr_mismatch", "status": "active", "failures": 1,
     "time": "2026-12-01T21:17:29Z", "ts": 1764623849.2,
     "changed": [{"pcr": 7, "enrolled": "<hex>", "current": "<hex>"}]}

``changed`` is the PCR difference the refusal (or, for a lock or revocation, the last
refusal) found; empty when the refusal was not about PCRs. ``id`` is unique per refusal;
for a lock or revocation it is derived from device and event, so several gateways that
each hear the same bus event send the same ``id`` (receivers de-duplicate on it).
A receiver checks the signature with ``hmac.compare_digest`` over the raw body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

SIGNATURE_HEADER: Final = "X-Attestgate-Signature"
EVENT_HEADER: Final = "X-Attestgate-Event"
DELIVERY_HEADER: Final = "X-Attestgate-Delivery"

# -- delivery limits (one block, see services/gateway/webhook.py) -------------------------
WEBHOOK_QUEUE: Final = 1000  # events waiting; beyond, new events are dropped (and logged)
WEBHOOK_ATTEMPTS: Final = 6  # tries per event, then it is given up (and logged)
WEBHOOK_BACKOFF: Final = 0.5  # seconds before the 2nd try; doubles each time ...
WEBHOOK_BACKOFF_MAX: Final = 30.0  # ... up to this
WEBHOOK_TIMEOUT: Final = 5.0  # seconds for one POST (connect + answer)
MAX_CHANGED: Final = 24  # PCR entries in one event


class Kind(StrEnum):
    REFUSED = "refused"
    LOCKED = "locked"
    REENROLL = "reenroll"
    REVOKED = "revoked"


@dataclass(frozen=True)
class WebhookEvent:
    event_id: str
    kind: Kind
    device_id: str
    name: str
    code: str
    ts: float
    status: str = ""
    failures: int | None = None
    changed: tuple[Mapping[str, Any], ...] = field(default=())

    def document(self) -> dict[str, Any]:
        return {
            "id": self.event_id, "event": self.kind.value, "device_id": self.device_id,
            "name": self.name, "code": self.code, "status": self.status,
            "failures": self.failures, "ts": self.ts,
            "time": datetime.fromtimestamp(self.ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "changed": [dict(c) for c in self.changed],
        }

    def body(self) -> bytes:
        return json.dumps(self.document(), sort_keys=True, separators=(",", ":")).encode()


def status_event_id(kind: Kind, device_id: str) -> str:
    """The same id on every gateway for one lock or revocation of one device."""
    return hashlib.sha256(f"{kind.value}\0{device_id}".encode()).hexdigest()[:32]


def changed_of(value: object) -> tuple[Mapping[str, Any], ...]:
    """The PCR difference from a reply or device view (a list of {pcr, enrolled, current});
    anything else is no difference."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return ()
    out = []
    for item in value[:MAX_CHANGED]:
        if isinstance(item, Mapping) and isinstance(item.get("pcr"), int):
            out.append({"pcr": item["pcr"], "enrolled": str(item.get("enrolled", "")),
                        "current": str(item.get("current", ""))})
    return tuple(out)


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Attestgate-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str) -> bool:
    """What a receiver does (and the tests): constant-time compare."""
    return hmac.compare_digest(signature(secret, body).encode(), header.encode())


def headers(event: WebhookEvent, body: bytes, secret: bytes) -> dict[str, str]:
    out = {"Content-Type": "application/json", EVENT_HEADER: event.kind.value,
           DELIVERY_HEADER: event.event_id, "User-Agent": "attestgate-webhook"}
    if secret:
        out[SIGNATURE_HEADER] = signature(secret, body)
    return out


def backoff(attempt: int, base: float = WEBHOOK_BACKOFF, cap: float = WEBHOOK_BACKOFF_MAX
            ) -> float:
    """Seconds to wait after failed try number ``attempt`` (1, 2, ...)."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))
