"""Dispatch of a service's operations: one place that turns errors into reply codes.

An ``AttestgateError`` becomes a reply with its code (plus, for attestation
refusals, the body the error carries); its detail goes to the log with the
request id, never to the peer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from shared.bus.interface import Reply, Request
from shared.errors import AttestgateError, ErrorCode

D = TypeVar("D")
Op = Callable[[Request, D, float], Reply]


_OUTAGES = frozenset({ErrorCode.STORE_UNAVAILABLE, ErrorCode.INTERNAL})


class Refusal(AttestgateError):
    """An error whose reply carries a body for the authenticated device (e.g. a PCR diff),
    and side effects that already happened (audit, failure counter)."""

    def __init__(self, code: ErrorCode, detail: str, body: Mapping[str, Any],
                 events: tuple[Any, ...] = ()) -> None:
        super().__init__(code, detail)
        self.body = body
        self.events = events


def dispatch(ops: Mapping[str, Op[D]], request: Request, deps: D, now: float,
             log: logging.Logger) -> Reply:
    op = ops.get(request.op)
    if op is None:
        log.warning("unknown op op=%s req=%s", request.op, request.id)
        return Reply.failure(request.id, ErrorCode.UNKNOWN_COMMAND)
    try:
        return op(request, deps, now)
    except Refusal as exc:
        log.warning("refused op=%s req=%s code=%s detail=%s", request.op, request.id, exc.code,
                    exc.detail)
        return Reply(request.id, exc.body, exc.code, exc.events)
    except AttestgateError as exc:
        # An outage (the store, a bug) at ERROR; a request refused for cause at INFO.
        log.log(logging.ERROR if exc.code in _OUTAGES else logging.INFO,
                "error op=%s req=%s code=%s detail=%s", request.op, request.id, exc.code,
                exc.detail)
        return Reply.failure(request.id, exc.code)
