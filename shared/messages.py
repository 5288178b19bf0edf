"""Application messages inside the channel: requests, replies and pushes.

A client request is ``{"id": n, "cmd": <Command>, ...fields}``; the gateway answers
``{"re": n, "ok": true, ...}`` or ``{"re": n, "ok": false, "code": <ErrorCode>, ...}``
and pushes ``{"push": <Push>, ...}``. Size is checked before decoding
(``shared.codec.unpack_map``), and the command against the closed list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.codec import Fields, pack, unpack_map
from shared.errors import AttestgateError, ErrorCode, parse_code
from shared.wire import MAX_REQUEST_ID, Command, Push


@dataclass(frozen=True)
class ClientMessage:
    id: int
    cmd: Command
    body: Mapping[str, Any]

    @property
    def fields(self) -> Fields:
        return Fields(self.body)


@dataclass(frozen=True)
class ServerMessage:
    """A reply (``re`` set) or a push (``push`` set)."""

    re: int | None
    push: Push | None
    ok: bool
    code: ErrorCode | None
    body: Mapping[str, Any]

    @property
    def fields(self) -> Fields:
        return Fields(self.body)


def encode_request(req_id: int, cmd: Command, **fields: Any) -> bytes:
    return pack({"id": req_id, "cmd": cmd.value, **fields})


def decode_request(data: bytes) -> ClientMessage:
    m = unpack_map(data)
    f = Fields(m)
    req_id = f.integer("id", 0, MAX_REQUEST_ID)
    try:
        cmd = Command(f.text("cmd", 32))
    except ValueError:
        raise AttestgateError(ErrorCode.UNKNOWN_COMMAND, str(m.get("cmd"))[:32]) from None
    return ClientMessage(req_id, cmd, m)


def encode_reply(req_id: int, **fields: Any) -> bytes:
    return pack({"re": req_id, "ok": True, **fields})


def encode_error(req_id: int, code: ErrorCode, **fields: Any) -> bytes:
    return pack({"re": req_id, "ok": False, "code": code.value, **fields})


def encode_push(kind: Push, **fields: Any) -> bytes:
    return pack({"push": kind.value, **fields})


def decode_server_message(data: bytes) -> ServerMessage:
    m = unpack_map(data)
    f = Fields(m)
    if "push" in m:
        try:
            kind = Push(f.text("push", 32))
        except ValueError:
            raise AttestgateError(ErrorCode.PROTOCOL, "unknown push") from None
        code = parse_code(m["code"]) if "code" in m else None
        return ServerMessage(None, kind, code is None, code, m)
    re = f.integer("re", 0, MAX_REQUEST_ID)
    ok = f.flag("ok")
    return ServerMessage(re, None, ok, None if ok else parse_code(m.get("code")), m)
