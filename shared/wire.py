"""Wire constants of attestgate protocol version 3, in one place.

Everything a peer must agree on lives here: pattern names, preamble, labels for
every hash and HMAC, size limits and command names. Changing any of it is a
protocol change and needs a new ``PROTOCOL_VERSION``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

PROTOCOL_VERSION: Final = 3  # 2: post signatures cover the client timestamp (LABEL_POST)
# 3: measured-boot event logs travel in LOG chunks (enroll, and attest when asked)

# -- preamble ---------------------------------------------------------------------
# Every TCP connection starts with MAGIC (4 B) + version (1 B) + mode (1 B), in clear.
# The same bytes are part of the Noise prologue, so tampering breaks the handshake.
MAGIC: Final = b"AGT\x00"
PREAMBLE_LEN: Final = 6
MODE_ENROLL: Final = b"E"
MODE_CONNECT: Final = b"C"
PROLOGUE_PREFIX: Final = b"attestgate/1|tcp|"

# -- Noise ------------------------------------------------------------------------
PATTERN_ENROLL: Final = b"Noise_XXpsk3_25519_ChaChaPoly_BLAKE2s"
PATTERN_CONNECT: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
DH_LEN: Final = 32
PSK_LEN: Final = 32
HASH_LEN: Final = 32
AEAD_TAG_LEN: Final = 16
MAX_NOISE_MESSAGE: Final = 65535  # Noise rev 34 §3: the longest message, handshake or transport
MAX_PLAINTEXT: Final = MAX_NOISE_MESSAGE - AEAD_TAG_LEN  # 65 519 B
FRAME_HEADER_LEN: Final = 2  # big-endian length of the Noise message that follows
MAX_HANDSHAKE_PAYLOAD: Final = 1024  # enroll msg1 carries a token id, nothing else is large
TOKEN_ID_LEN: Final = 8  # bytes; hex-encoded in the token text

# -- opening and cleartext hint (before the Noise handshake completes) --------------------
# Message 1 is tiny (IKpsk2: 104 B; XXpsk3: 32 B + token id); the gateway reads the
# preamble and message 1 before it gives a connection any handshake slot, and never
# buffers more than this for a connection that is not admitted yet.
MAX_MESSAGE1: Final = 256
# A hint is one frame of exactly HINT_LEN bytes: HINT_MAGIC, reason (1 B), the server's
# protocol version (1 B), retry-after in ms (4 B, big-endian, at most HINT_MAX_RETRY_MS).
# No handshake message 2 is that short (IKpsk2: 48 B, XXpsk3: >= 96 B). It is NOT
# authenticated: a client may only retry (or, for VERSION, say "upgrade") because of it.
HINT_MAGIC: Final = b"AGT?"
HINT_LEN: Final = 10
HINT_MAX_RETRY_MS: Final = 60_000
HINT_BUSY: Final = 1  # too many handshakes now (admission control); retry after N ms
HINT_UNAVAILABLE: Final = 2  # a service or the store did not answer; retry after N ms
HINT_VERSION: Final = 3  # unsupported preamble version; the byte after says which one to speak

# -- labels (domain separation for every hash / HMAC) -------------------------------
LABEL_ENROLL_PSK: Final = b"attestgate/1 enroll psk"  # PSK = HMAC(token secret, label)
LABEL_SESSION_PSK: Final = b"attestgate/1 session psk"  # HMAC(device psk, label||e_i||e_r)
LABEL_QUOTE: Final = b"attestgate/1 quote"  # qualifying data = SHA-256(label || h)
LABEL_REATTEST: Final = b"attestgate/1 reattest"  # SHA-256(label || h || server nonce)
LABEL_ACTIVATE: Final = b"attestgate/1 activate"  # TPM HMAC(device psk, label || h)
LABEL_POST: Final = b"attestgate/2 post"  # post signature: SHA-256(label, device, ts, key, text)
LABEL_FINGERPRINT: Final = b"attestgate/1 server key"
LABEL_KEY_SEAL: Final = b"attestgate/1 client static key"
LABEL_AUDIT: Final = b"attestgate/1 audit"

# -- application message limits ------------------------------------------------------
MAX_MESSAGE: Final = MAX_PLAINTEXT  # one msgpack application message
MAX_POST_BYTES: Final = 4096
MAX_NAME_LEN: Final = 64
# A device name: what the attestor accepts and the client checks before any TPM work.
NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
MAX_READ_LIMIT: Final = 500
DEFAULT_READ_LIMIT: Final = 50
# A board reply holds as many posts as fit in one message (the smaller of MAX_MESSAGE
# and MAX_BUS_MESSAGE) less this much for the envelope: re/ok/posts/next keys, the
# request id and the cursor (measured: under 80 B); the rest continues from `next`.
REPLY_ENVELOPE_RESERVE: Final = 256
MAX_REQUEST_ID: Final = 2**63 - 1
MAX_EVIDENCE_FIELD: Final = 4096  # any single TPM blob (cert, public, attest, signature)
MAX_PCRS: Final = 24
# -- measured-boot event log (protocol 3) ----------------------------------------------
# A log travels as LOG messages {offset, data} right after ENROLL (which says
# ``log_size``), or after an ATTEST (with ``log_size``) the server answered ``need_log``.
# Each chunk is at most LOG_CHUNK bytes (one message with its envelope stays under
# MAX_MESSAGE); the whole log at most MAX_LOG_TRANSFER (= the parser's cap). Between the
# gateway and the attestor the log is zlib-compressed (``log_z``), at most MAX_LOG_BUS.
LOG_CHUNK: Final = 60 * 1024
MAX_LOG_TRANSFER: Final = 1024 * 1024
MAX_LOG_BUS: Final = 192 * 1024

# -- ZeroMQ bus limits --------------------------------------------------------------
MAX_BUS_MESSAGE: Final = 256 * 1024


class Command(StrEnum):
    """Application commands a client sends inside the channel."""

    POST = "post"
    READ = "read"
    FOLLOW = "follow"
    UNFOLLOW = "unfollow"
    STATUS = "status"
    PING = "ping"
    SECRET_GET = "secret_get"  # noqa: S105 - a command: one part of a secret, wrapped to the TPM
    # enrollment (inside the XXpsk3 channel)
    ENROLL = "enroll"
    ACTIVATE = "activate"
    # reconnect (inside the IKpsk2 channel)
    ATTEST = "attest"
    REATTEST = "reattest"
    LOG = "log"  # one chunk of the measured-boot event log (protocol 3)


class Push(StrEnum):
    """Messages the gateway sends without a request."""

    POST = "post"  # a new board post for a follower
    CLOSING = "closing"  # the session is about to close, with a code
    REATTEST = "reattest"  # the server asks for a fresh quote, with a nonce
    REFUSED = "refused"  # attestation refused, with the PCR diff


class Service(StrEnum):
    """Services reachable over the bus."""

    ATTESTOR = "attestor"
    REGISTRY = "registry"
    BOARD = "board"


class Event(StrEnum):
    """Events published on the bus's PUB/SUB channel."""

    NEW_POST = "post"
    DEVICE_REVOKED = "revoked"
    DEVICE_LOCKED = "locked"
