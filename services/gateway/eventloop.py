"""The gateway's event loop: uvloop by default, asyncio's own loop on request.

``ATTESTGATE_EVENT_LOOP`` = ``uvloop`` (default) or ``asyncio``. uvloop (libuv, in C) does
the per-connection work of the loop — transports, stream buffers, timers, the selector —
for less CPU than asyncio's pure-Python loop (measured in bench/README.md, "Round 4:
gateway"). ``asyncio`` is there for a platform without a uvloop wheel, or to rule the loop
out when chasing a problem; where uvloop is asked for and cannot be imported the gateway
says so and runs on asyncio's loop rather than not at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from enum import StrEnum

from shared.config import choice

log = logging.getLogger("attestgate.gateway")

SETTING = "ATTESTGATE_EVENT_LOOP"


class LoopKind(StrEnum):
    UVLOOP = "uvloop"
    ASYNCIO = "asyncio"


def loop_kind(env: Mapping[str, str]) -> LoopKind:
    """The configured loop; raises ConfigError for anything but the two names."""
    return choice(env, SETTING, LoopKind, LoopKind.UVLOOP)


def loop_factory(kind: LoopKind) -> tuple[Callable[[], asyncio.AbstractEventLoop], LoopKind]:
    """A factory for ``asyncio.Runner`` and the kind it really makes (asyncio when uvloop
    was asked for but is not installed)."""
    if kind is LoopKind.UVLOOP:
        try:
            import uvloop  # noqa: PLC0415 (optional: imported only where asked for)
        except ImportError:
            log.warning("%s=uvloop but uvloop is not installed: running on asyncio's loop",
                        SETTING)
        else:
            return uvloop.new_event_loop, LoopKind.UVLOOP
    return asyncio.new_event_loop, LoopKind.ASYNCIO
