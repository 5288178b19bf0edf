"""A worker's pipeline timed in this process, for bench.attest_inprocess and
bench.post_inprocess: what ``shared.worker`` does per request minus the bus sockets."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from shared.bus import codec
from shared.bus.interface import Request
from shared.bus.memory import call_handler


def cpu_per_request_us(handler: Any, deps: Any, frames: Sequence[bytes], rounds: int
                       ) -> list[float]:
    """Thread CPU (us) per request for each of ``rounds`` equal slices of ``frames``:
    decode, ``call_handler`` (which encodes the reply), encode the reply's events."""
    n = len(frames) // rounds
    figures = []
    for r in range(rounds):
        start = time.thread_time()
        for frame in frames[r * n:(r + 1) * n]:
            request = codec.decode(frame)
            assert isinstance(request, Request)
            reply, _ = call_handler(handler, request, deps, time.time())
            assert reply.ok, reply
            for event in reply.events:
                codec.encode(event)
        figures.append((time.thread_time() - start) / n * 1e6)
    return figures
