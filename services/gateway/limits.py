"""The gateway's limits, as named constants (sizes in bytes, times in shared.timing).

Admission (see ``admission.py``): the numbers bound what an unauthenticated flood
can take. Openings (connections still sending preamble + message 1) hold a socket
and a few hundred bytes each, never a slot; slots bound the CPU spent on DH and the
bus lookups for peers not yet authenticated; anonymous work (enrollment, garbage) gets
only part of the slots and a token bucket per source address, so the rest stays free
for enrolled devices; lookups of keys the gateway has not seen yet are bounded too.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import timing

MAX_CONCURRENT_HANDSHAKES = 512  # whole gateway; bounds CPU spent on DH for unauthenticated peers
MAX_ANONYMOUS_HANDSHAKES = 384  # of those, at most this many for anonymous connections
MAX_ANONYMOUS_HANDSHAKES_PER_ADDRESS = 16  # anonymous, concurrent, per source address
MAX_WAITING_HANDSHAKES = 256  # per lane; a connection beyond this is told "busy" at once
MAX_OPENINGS = 4096  # connections still sending preamble + message 1 (then: evict the oldest)
MAX_OPENINGS_PER_ADDRESS = 128  # same, per source address (then: evict its oldest)
ANONYMOUS_HANDSHAKE_RATE = 20.0  # per source address per second (WireGuard's figure)
ANONYMOUS_HANDSHAKE_BURST = 5.0
MAX_RATE_BUCKETS = 65_536  # token buckets kept (least recently used forgotten)
MAX_COLD_LOOKUPS = 64  # concurrent registry lookups of keys not (yet) known to the gateway
MAX_PRIORITY_PER_KEY = 4  # handshakes of one static key in the PRIORITY lane at once; more are
#                          ANONYMOUS: a stolen Noise key (no TPM) cannot fill the lane
MAX_KNOWN_KEYS = 65_536  # static keys remembered as accepted (LRU), for the PRIORITY lane
MAX_SESSIONS_PER_DEVICE = 8  # live sessions of one device (ATTESTGATE_MAX_SESSIONS_PER_DEVICE)
MAX_INFLIGHT_PER_SESSION = 16  # requests of one session waiting for a service
MAX_SESSIONS = 10_000
MAX_FOLLOW_BACKLOG = 1024 * 1024  # bytes of pushes/replies waiting in a slow follower's socket
#                                  buffer before it is disconnected
READER_LIMIT = 8192  # asyncio StreamReader buffer limit: it stops reading a socket at 2x this
PREAUTH_RCVBUF = 8192  # SO_RCVBUF until the session is established. With READER_LIMIT, a
#                        peer not yet authenticated makes us buffer ~32 KiB at most (measured:
#                        2,000 connections pushing 250 MB: RSS +67 MiB; without it +131 MiB)
SESSION_RCVBUF = 256 * 1024  # SO_RCVBUF of an established session (frames up to 64 KiB)
LISTEN_BACKLOG = 4096  # accept queue; a full one drops SYNs and costs a real client 1 s+ per retry


@dataclass(frozen=True)
class GatewayLimits:
    handshake_timeout: float = timing.HANDSHAKE_TIMEOUT
    message1_timeout: float = timing.MESSAGE1_TIMEOUT
    slot_wait_max: float = timing.SLOT_WAIT_MAX
    handshake_request_timeout: float = timing.HANDSHAKE_REQUEST_TIMEOUT
    idle_timeout: float = timing.IDLE_TIMEOUT
    request_timeout: float = timing.REQUEST_TIMEOUT
    reattest_interval: float = timing.REATTEST_INTERVAL
    reattest_grace: float = timing.REATTEST_GRACE
    max_sessions_per_device: int = MAX_SESSIONS_PER_DEVICE
    max_priority_per_key: int = MAX_PRIORITY_PER_KEY
    max_inflight_per_session: int = MAX_INFLIGHT_PER_SESSION
    max_sessions: int = MAX_SESSIONS
    max_follow_backlog: int = MAX_FOLLOW_BACKLOG
