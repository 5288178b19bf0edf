"""Bus records and the two interfaces every bus implementation provides.

A *request* goes from the gateway to one worker of a service and gets exactly one
*reply*: the worker's, or an error reply with ``service_unavailable`` made by the
bus itself when no worker answered before the deadline. A request is never
silently dropped.

Handlers are pure: ``handle(request, deps, now) -> Reply``. A handler that wants
an event published returns it in ``Reply.events``; the worker loop publishes it
after the reply was sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from shared.errors import ErrorCode

# msgpack-able map: str keys; values bytes/str/int/float/bool/None/list/map
Body = Mapping[str, Any]


@dataclass(frozen=True)
class Request:
    """A request to a service.

    ``id`` is unique per logical request and doubles as the idempotency key: a
    retry of the same request carries the same id.  ``deadline`` is absolute
    (seconds since the epoch).  ``idempotent`` allows the bus to retry it on
    another worker when the first one died.
    """

    id: str
    service: str
    op: str
    body: Body
    deadline: float
    idempotent: bool = True


@dataclass(frozen=True)
class BusEvent:
    """An event on PUB/SUB: ``topic`` is a ``shared.wire.Event`` value."""

    topic: str
    body: Body


@dataclass(frozen=True)
class Reply:
    """The answer to a request: ``error`` is None on success."""

    id: str
    body: Body = field(default_factory=dict)
    error: ErrorCode | None = None
    events: tuple[BusEvent, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    @staticmethod
    def failure(request_id: str, code: ErrorCode, body: Body | None = None) -> Reply:
        return Reply(id=request_id, body=body or {}, error=code)


D = TypeVar("D")
D_contra = TypeVar("D_contra", contravariant=True)


class Handler(Protocol[D_contra]):
    """A service: pure function of request, injected dependencies and time."""

    def __call__(self, request: Request, deps: D_contra, now: float) -> Reply: ...


class BusClient(Protocol):
    """What the gateway (and tests) use to talk to services."""

    async def request(
        self,
        service: str,
        op: str,
        body: Body,
        *,
        request_id: str,
        timeout: float,
        idempotent: bool = True,
    ) -> Reply:
        """Send a request and wait for its reply.

        Always returns a Reply by ``timeout``: the worker's, or one with
        ``ErrorCode.SERVICE_UNAVAILABLE``. Never raises for service failures.
        """
        ...

    def events(self) -> AsyncIterator[BusEvent]:
        """Events published by services, in order of arrival."""
        ...

    async def close(self) -> None: ...


class EventPublisher(Protocol):
    """Publishes events from outside a worker (the operator CLI)."""

    def publish(self, event: BusEvent) -> None: ...

    def close(self) -> None: ...


Clock = Callable[[], float]
