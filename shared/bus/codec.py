"""The bus wire format: one ZeroMQ frame per bus command, version 1.

A frame is ``PREFIX`` (``b"AGB"`` + one version byte) followed by one msgpack
array whose first element is the command number::

    READY       [1, service]                                    worker -> gateway
    HEARTBEAT   [2]                                             both ways
    REQUEST     [3, id, service, op, body, deadline, idempotent] gateway -> worker
    REPLY       [4, id, body, error]                            worker -> gateway
    DISCONNECT  [5]                                             both ways
    EVENT       [6, topic, body]                                PUB -> gateway SUB

``body`` is a map with ``str`` keys, ``deadline`` absolute seconds since the
epoch, ``error`` an ``ErrorCode`` value or nil. ``Reply.events`` never travel in
a REPLY: the worker publishes them as EVENT frames after the reply was sent.

Decoding follows the boundary rule: size first, then the prefix, then msgpack
with strict limits, then types, and only then a frozen dataclass. Anything else
raises :class:`AttestgateError` — ``TOO_LARGE`` (size), ``VERSION`` (our magic,
another version) or ``PROTOCOL`` (everything else) — and never a library
exception. The receiver drops such a frame and logs why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import msgpack

from shared.bus.interface import Body, BusEvent, Reply, Request
from shared.codec import refuse_ext
from shared.errors import AttestgateError, ErrorCode, parse_code
from shared.wire import MAX_BUS_MESSAGE

BUS_VERSION: Final = 1
MAGIC: Final = b"AGB"
PREFIX: Final = MAGIC + bytes([BUS_VERSION])

MAX_ID_LEN: Final = 128  # request ids (the gateway's are far shorter)
MAX_NAME_LEN: Final = 64  # service, op and topic names
MAX_CONTAINER_LEN: Final = 65536  # any msgpack array or map inside a body


class Command(IntEnum):
    READY = 1
    HEARTBEAT = 2
    REQUEST = 3
    REPLY = 4
    DISCONNECT = 5
    EVENT = 6


@dataclass(frozen=True)
class Ready:
    """A worker announces the service it serves."""

    service: str


@dataclass(frozen=True)
class Heartbeat:
    """Liveness; any other command counts as one too."""


@dataclass(frozen=True)
class Disconnect:
    """The sender is going away (worker) or does not know the receiver (gateway)."""


Frame = Ready | Heartbeat | Disconnect | Request | Reply | BusEvent

HEARTBEAT: Final = Heartbeat()
DISCONNECT: Final = Disconnect()

_COMMANDS: Final = frozenset(int(c) for c in Command)
# Arity of each command's array, command number included.
_ARITY: Final = {
    Command.READY: 2,
    Command.HEARTBEAT: 1,
    Command.REQUEST: 7,
    Command.REPLY: 4,
    Command.DISCONNECT: 1,
    Command.EVENT: 3,
}


# -- encoding -------------------------------------------------------------------------


def encode(frame: Frame) -> bytes:
    """Serialise ``frame``.

    Raises ``AttestgateError(BAD_REQUEST)`` when a field is invalid or a body is
    not msgpack-able, ``AttestgateError(TOO_LARGE)`` beyond ``MAX_BUS_MESSAGE``:
    a frame this side sends is a frame the other side accepts.
    """
    items: list[Any]
    match frame:
        case Ready(service=service):
            items = [Command.READY, _name(service, "service", ErrorCode.BAD_REQUEST)]
        case Heartbeat():
            items = [Command.HEARTBEAT]
        case Disconnect():
            items = [Command.DISCONNECT]
        case Request():
            items = [
                Command.REQUEST,
                _request_id(frame.id, ErrorCode.BAD_REQUEST),
                _name(frame.service, "service", ErrorCode.BAD_REQUEST),
                _name(frame.op, "op", ErrorCode.BAD_REQUEST),
                _body(frame.body, ErrorCode.BAD_REQUEST),
                _deadline(frame.deadline, ErrorCode.BAD_REQUEST),
                _bool(frame.idempotent, "idempotent", ErrorCode.BAD_REQUEST),
            ]
        case Reply():
            error = None if frame.error is None else ErrorCode(frame.error).value
            items = [
                Command.REPLY,
                _request_id(frame.id, ErrorCode.BAD_REQUEST),
                _body(frame.body, ErrorCode.BAD_REQUEST),
                error,
            ]
        case BusEvent():
            items = [
                Command.EVENT,
                _name(frame.topic, "topic", ErrorCode.BAD_REQUEST),
                _body(frame.body, ErrorCode.BAD_REQUEST),
            ]
        case _:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"not a bus frame: {type(frame).__name__}")
    try:
        packed: bytes = msgpack.packb(items, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"body is not msgpack-able: {exc}") from None
    data = PREFIX + packed
    if len(data) > MAX_BUS_MESSAGE:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"{len(data)} > {MAX_BUS_MESSAGE} bytes")
    return data


def event_prefix(topic: str) -> bytes:
    """The bytes every EVENT frame of ``topic`` starts with (``encode``'s layout): lets a
    receiver pass over a topic it has no use for without decoding the frame."""
    items = [Command.EVENT, _name(topic, "topic", ErrorCode.BAD_REQUEST), {}]
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return PREFIX + packed[:-1]  # all but the empty map


# -- decoding -------------------------------------------------------------------------


def decode(data: bytes) -> Frame:
    """Parse one frame received from a peer; raises only ``AttestgateError``."""
    if len(data) > MAX_BUS_MESSAGE:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"{len(data)} > {MAX_BUS_MESSAGE} bytes")
    if data[: len(MAGIC)] != MAGIC or len(data) < len(PREFIX):
        raise AttestgateError(ErrorCode.PROTOCOL, "no bus magic")
    if data[len(MAGIC)] != BUS_VERSION:
        raise AttestgateError(ErrorCode.VERSION, f"bus version {data[len(MAGIC)]}")
    try:
        items = msgpack.unpackb(
            data[len(PREFIX) :],
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_BUS_MESSAGE,
            max_bin_len=MAX_BUS_MESSAGE,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,  # no ext types at all, timestamps included
            ext_hook=refuse_ext,  # ...not even zero-length ones
        )
    except (ValueError, TypeError) as exc:  # msgpack's errors, trailing data included
        raise AttestgateError(ErrorCode.PROTOCOL, f"msgpack: {type(exc).__name__}") from None
    if not isinstance(items, list) or not items:
        raise AttestgateError(ErrorCode.PROTOCOL, "frame is not a non-empty array")
    head = items[0]
    if not isinstance(head, int) or isinstance(head, bool) or head not in _COMMANDS:
        raise AttestgateError(ErrorCode.PROTOCOL, "unknown command")
    command = Command(head)
    if len(items) != _ARITY[command]:
        raise AttestgateError(ErrorCode.PROTOCOL, f"{command.name}: {len(items)} items")
    bad = ErrorCode.PROTOCOL
    match command:
        case Command.READY:
            return Ready(service=_name(items[1], "service", bad))
        case Command.HEARTBEAT:
            return HEARTBEAT
        case Command.DISCONNECT:
            return DISCONNECT
        case Command.REQUEST:
            return Request(
                id=_request_id(items[1], bad),
                service=_name(items[2], "service", bad),
                op=_name(items[3], "op", bad),
                body=_body(items[4], bad),
                deadline=_deadline(items[5], bad),
                idempotent=_bool(items[6], "idempotent", bad),
            )
        case Command.REPLY:
            error = items[3]
            return Reply(
                id=_request_id(items[1], bad),
                body=_body(items[2], bad),
                error=None if error is None else parse_code(error),
            )
        case Command.EVENT:
            return BusEvent(topic=_name(items[1], "topic", bad), body=_body(items[2], bad))
    raise AssertionError("unreachable")  # pragma: no cover  (mypy: the match is exhaustive)


# -- field checks, shared by both directions ---------------------------------------


def _request_id(value: object, code: ErrorCode) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LEN:
        raise AttestgateError(code, "bad request id")
    return value


def _name(value: object, what: str, code: ErrorCode) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LEN:
        raise AttestgateError(code, f"bad {what}")
    return value


def _body(value: object, code: ErrorCode) -> Body:
    # (A plain dict, what msgpack gives, skips the Mapping ABC check: profiled, five ABC
    # checks per request in a worker.)
    if type(value) is not dict and isinstance(value, Mapping) and not isinstance(value, dict):
        value = dict(value)  # a caller's read-only mapping; msgpack wants a dict
    # Nested maps are the application's business; the top level must be a str-keyed map.
    if not isinstance(value, dict):
        raise AttestgateError(code, "body is not a map with str keys")
    for k in value:
        if not isinstance(k, str):
            raise AttestgateError(code, "body is not a map with str keys")
    return value


def _deadline(value: object, code: ErrorCode) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AttestgateError(code, "deadline is not a number")
    try:
        deadline = float(value)
    except OverflowError:
        raise AttestgateError(code, "deadline out of range") from None
    if not math.isfinite(deadline):
        raise AttestgateError(code, "deadline is not finite")
    return deadline


def _bool(value: object, what: str, code: ErrorCode) -> bool:
    if not isinstance(value, bool):
        raise AttestgateError(code, f"{what} is not a bool")
    return value
