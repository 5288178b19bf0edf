"""The board: post, read and follow on a Redis Stream. A pure handler.

A post is stored only after its signature by the device's TPM post key verifies
(the key was certified by the device's AK at enrollment), and only once per
idempotency key: a retried request returns the first post's id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.bus.interface import BusEvent, Reply, Request
from shared.codec import Fields
from shared.errors import AttestgateError, ErrorCode
from shared.handlers import Op, dispatch
from shared.posts import check_signature, post_digest, post_view, validate_text
from shared.records import Post
from shared.store.interface import Store
from shared.store.serialize import post_fields
from shared.wire import DEFAULT_READ_LIMIT, MAX_NAME_LEN, MAX_POST_BYTES, MAX_READ_LIMIT, Event

KEY_LEN = 16
MAX_SIGNATURE = 512


@dataclass(frozen=True)
class BoardDeps:
    store: Store


def _post(req: Request, deps: BoardDeps, now: float) -> Reply:
    f = Fields(req.body)
    device_id = f.text("device_id", 64)
    author = f.text("author", MAX_NAME_LEN)
    raw_text = f.text("text", MAX_POST_BYTES * 4)
    text = validate_text(raw_text)
    key = f.blob("key", KEY_LEN, min_len=KEY_LEN)
    signature = f.blob("signature", MAX_SIGNATURE, min_len=1)
    device = deps.store.get_device(device_id)
    if device is None:
        raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, device_id)
    check_signature(device.post_public, signature, post_digest(device_id, key, text))
    post = Post("", device_id, author, text, now, key, signature)
    post_id, created = deps.store.add_post(key + device_id.encode(), post_fields(post))
    events: tuple[BusEvent, ...] = ()
    if created:
        view = post_view(Post(post_id, device_id, author, text, now, key, signature), verified=True)
        events = (BusEvent(Event.NEW_POST.value, view),)
    return Reply(req.id, {"post_id": post_id, "created": created}, events=events)


def _read(req: Request, deps: BoardDeps, now: float) -> Reply:
    f = Fields(req.body)
    since = f.text("since", 64, optional=True) or None
    limit = f.integer("limit", 1, MAX_READ_LIMIT, default=DEFAULT_READ_LIMIT)
    if since is not None and not _is_stream_id(since):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "since is not a post id")
    posts = deps.store.read_posts(since, limit) if since else deps.store.latest_posts(limit)
    # Signatures were verified before storing; `verified` says so for each post.
    return Reply(req.id, {"posts": [post_view(p, verified=True) for p in posts]})


def _is_stream_id(text: str) -> bool:
    a, sep, b = text.partition("-")
    return a.isdigit() and (not sep or b.isdigit())


_OPS: dict[str, Op[BoardDeps]] = {"post": _post, "read": _read}
_log = logging.getLogger("attestgate.board")


def handle(request: Request, deps: BoardDeps, now: float) -> Reply:
    return dispatch(_OPS, request, deps, now, _log)
