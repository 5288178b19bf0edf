"""Every timing constant of attestgate, in one commented block (seconds).

Tests never sleep to wait for these: time is a parameter of every handler and
of the sans-IO session; only the thin adapters read the clock.
"""

from __future__ import annotations

from typing import Final

# -- bus (Majordomo-style, the gateway is the broker) ------------------------------
HEARTBEAT_INTERVAL: Final = 0.5  # worker <-> gateway heartbeat; any message counts as one
HEARTBEAT_LIVENESS: Final = 3  # missed beats before a worker is declared dead (~1.5 s)
REQUEST_TIMEOUT: Final = 5.0  # default deadline of a bus request from the gateway
RECONNECT_INITIAL: Final = 0.25  # worker's first reconnect delay after losing the gateway
RECONNECT_MAX: Final = 8.0  # worker's reconnect backoff cap
BUS_CLOSE_LINGER: Final = 0.2  # how long a closing bus socket may keep flushing DISCONNECT/replies
BUS_POLL_MAX: Final = 0.1  # a worker re-checks its stop event at least this often
PUBLISH_CONNECT_TIMEOUT: Final = 1.0  # ZmqPublisher waits this long for subscribers (slow joiner)
PUBLISH_LINGER: Final = 1.0  # ZmqPublisher.close() waits this long for queued events to leave

# -- gateway ---------------------------------------------------------------------
# One deadline per connection, from accept to established session (queue wait included):
HANDSHAKE_TIMEOUT: Final = 12.0  # preamble + Noise handshake + attestation must finish in this
MESSAGE1_TIMEOUT: Final = 3.0  # preamble + message 1 fully read (total, not per byte), before
#                                 the connection may take or wait for a handshake slot
SLOT_WAIT_MAX: Final = 2.0  # longest wait for a handshake slot; then a "busy" hint and close
HANDSHAKE_REQUEST_TIMEOUT: Final = 2.5  # bus requests during the handshake (registry lookup,
#                                 attestor); SLOT_WAIT_MAX + this < CLIENT_CONNECT_TIMEOUT, so
#                                 the client hears "unavailable" instead of timing out
REFUSAL_MARGIN: Final = 0.5  # kept back from the deadline to tell the device why it is refused
TOKEN_FAILURE_RESERVE: Final = 1.0  # enrollment message 3 must arrive this long before the
#                                 deadline, so that a wrong token secret is always counted
BUSY_RETRY_AFTER: Final = 0.5  # what the gateway's "busy" / "unavailable" hint suggests
IDLE_TIMEOUT: Final = 300.0  # no frame from the client for this long closes the session
EVENT_FANOUT_INTERVAL: Final = 0.2  # how often the gateway re-checks sessions to close
SESSION_MAX_AGE: Final = 3600.0  # after this the client must reconnect (fresh DH)
REATTEST_INTERVAL: Final = 600.0  # long sessions are re-attested this often (configurable)
REATTEST_GRACE: Final = 10.0  # time the client has to answer a re-attestation request

# -- client ------------------------------------------------------------------------
CLIENT_CONNECT_TIMEOUT: Final = 8.0  # TCP connect, and the wait for handshake message 2
CLIENT_CONNECT_ATTEMPTS: Final = 4  # tries when the server hints "busy" / "unavailable"
CLIENT_RETRY_MIN: Final = 0.2  # a hint's retry-after is clamped to [MIN, MAX] (it is
CLIENT_RETRY_MAX: Final = 4.0  #   unauthenticated: a forged one must not stall the client)
CLIENT_REQUEST_TIMEOUT: Final = 15.0  # above REQUEST_TIMEOUT: the gateway answers first

# -- registry ----------------------------------------------------------------------
TOKEN_DEFAULT_TTL: Final = 24 * 3600.0
# The reconnect replay guard advances only after key confirmation (the device's TPM
# computed the session PSK), and never further than this past the server's clock, so that
# a device whose clock once ran far ahead is not locked out once it is corrected.
CONNECT_TS_AHEAD: Final = 2.0
