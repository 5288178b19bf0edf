"""The board: post, read and follow on a Redis Stream. A pure handler.

A post is stored only after its signature by the device's TPM post key verifies
(the key was certified by the device's AK at enrollment) over everything a reader
is shown but the author (device id, the client's timestamp, idempotency key and
text), only when that timestamp is within ``clock_skew`` of the board's clock,
only once per idempotency key (a retried request returns the first post's id), and
only while the device's post bucket has a token (``shared.board_settings``).

``read`` checks every signature again and names the author from the registry, so a
post edited in the store shows as not verified, and answers with as many posts as
fit in one message; ``next`` (the id to pass as ``since``) says there is more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from shared.board_settings import BoardSettings
from shared.bus.interface import BusEvent, Reply, Request
from shared.codec import Fields, fill
from shared.errors import AttestgateError, ErrorCode
from shared.handlers import Op, dispatch
from shared.posts import check_signature, post_digest, post_view, signature_ok, validate_text
from shared.records import Device, Post
from shared.store.interface import Store
from shared.store.serialize import post_fields
from shared.tpm.keycache import KeyCache
from shared.wire import (
    DEFAULT_READ_LIMIT,
    MAX_BUS_MESSAGE,
    MAX_MESSAGE,
    MAX_POST_BYTES,
    MAX_READ_LIMIT,
    REPLY_ENVELOPE_RESERVE,
    Event,
)

KEY_LEN = 16
MAX_SIGNATURE = 512
MAX_TS_MS: Final = 1 << 53  # a client timestamp in ms since the epoch; far beyond any clock
# The posts of one read reply, encoded, stay within this; the envelope fits in the reserve.
REPLY_BUDGET: Final = min(MAX_MESSAGE, MAX_BUS_MESSAGE) - REPLY_ENVELOPE_RESERVE
READ_BATCH: Final = 64  # posts fetched from the store at a time while filling a reply


@dataclass(frozen=True)
class BoardDeps:
    store: Store
    settings: BoardSettings = field(default_factory=BoardSettings.defaults)
    # Post keys parsed once per device (re-parsed when a device's key bytes change).
    keys: KeyCache = field(default_factory=KeyCache)


def _post(req: Request, deps: BoardDeps, now: float) -> Reply:
    f = Fields(req.body)
    device_id = f.text("device_id", 64)
    raw_text = f.text("text", MAX_POST_BYTES * 4)
    text = validate_text(raw_text)
    signed_at_ms = f.integer("ts", 0, MAX_TS_MS)
    key = f.blob("key", KEY_LEN, min_len=KEY_LEN)
    signature = f.blob("signature", MAX_SIGNATURE, min_len=1)
    skew = signed_at_ms / 1000 - now
    if abs(skew) > deps.settings.clock_skew:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"post timestamp {skew:+.0f} s off")
    device = deps.store.get_device(device_id)
    if device is None:
        raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, device_id)
    post_key = deps.keys.get(device_id, "post", device.post_public, code=ErrorCode.BAD_SIGNATURE)
    check_signature(post_key, signature, post_digest(device_id, signed_at_ms, key, text))
    post = Post("", device_id, text, signed_at_ms, key, signature, received_at=now)
    post_id, created = deps.store.add_post(key + device_id.encode(), post_fields(post),
                                           device_id=device_id, now=now,
                                           quota=deps.settings.quota)
    events: tuple[BusEvent, ...] = ()
    if created:
        stored = Post(post_id, device_id, text, signed_at_ms, key, signature, received_at=now)
        events = (BusEvent(Event.NEW_POST.value, post_view(stored, device, verified=True)),)
    return Reply(req.id, {"post_id": post_id, "created": created}, events=events)


def _read(req: Request, deps: BoardDeps, now: float) -> Reply:
    f = Fields(req.body)
    since = f.text("since", 64, optional=True) or None
    limit = f.integer("limit", 1, MAX_READ_LIMIT, default=DEFAULT_READ_LIMIT)
    if since is not None and not _is_stream_id(since):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "since is not a post id")
    devices: dict[str, Device | None] = {}

    def views() -> Iterator[dict[str, Any]]:
        for p in _posts(deps.store, since, limit):
            if p.device_id not in devices:
                devices[p.device_id] = deps.store.get_device(p.device_id)
            device = devices[p.device_id]
            # Checked again at every read: the store is not trusted to keep posts unedited.
            yield post_view(p, device, verified=signature_ok(device, p))

    fitted, more = fill(views(), REPLY_BUDGET)
    if more and not fitted:  # the limits in shared.wire make one post always fit
        raise AttestgateError(ErrorCode.INTERNAL, "one post exceeds the reply budget")
    body: dict[str, Any] = {"posts": fitted}
    if more:
        body["next"] = fitted[-1]["post_id"]
    return Reply(req.id, body)


def _posts(store: Store, since: str | None, limit: int) -> Iterator[Post]:
    """At most ``limit`` posts in order: after ``since``, or the latest ``limit`` ones."""
    if since is None:
        yield from store.latest_posts(limit)
        return
    cursor, left = since, limit
    while left > 0:
        batch = store.read_posts(cursor, min(READ_BATCH, left))
        yield from batch
        if len(batch) < min(READ_BATCH, left):
            return
        left -= len(batch)
        cursor = batch[-1].post_id


def _is_stream_id(text: str) -> bool:
    a, sep, b = text.partition("-")
    return a.isdigit() and (not sep or b.isdigit())


_OPS: dict[str, Op[BoardDeps]] = {"post": _post, "read": _read}
_log = logging.getLogger("attestgate.board")


def handle(request: Request, deps: BoardDeps, now: float) -> Reply:
    return dispatch(_OPS, request, deps, now, _log)
