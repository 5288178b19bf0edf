"""The gateway's limits, as named constants (sizes in bytes, times in shared.timing)."""

from __future__ import annotations

from dataclasses import dataclass

from shared import timing

MAX_CONCURRENT_HANDSHAKES = 512  # whole gateway; bounds CPU spent on DH for unauthenticated peers
MAX_HANDSHAKES_PER_ADDRESS = 16  # concurrent, per source IP
MAX_INFLIGHT_PER_SESSION = 16  # requests of one session waiting for a service
MAX_SESSIONS = 10_000
MAX_FOLLOW_QUEUE = 1024  # pushes buffered for a slow follower before it is disconnected


@dataclass(frozen=True)
class GatewayLimits:
    handshake_timeout: float = timing.HANDSHAKE_TIMEOUT
    idle_timeout: float = timing.IDLE_TIMEOUT
    request_timeout: float = timing.REQUEST_TIMEOUT
    reattest_interval: float = timing.REATTEST_INTERVAL
    reattest_grace: float = timing.REATTEST_GRACE
    max_concurrent_handshakes: int = MAX_CONCURRENT_HANDSHAKES
    max_handshakes_per_address: int = MAX_HANDSHAKES_PER_ADDRESS
    max_inflight_per_session: int = MAX_INFLIGHT_PER_SESSION
    max_sessions: int = MAX_SESSIONS
    max_follow_queue: int = MAX_FOLLOW_QUEUE
