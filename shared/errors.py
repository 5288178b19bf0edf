"""The one closed list of error codes that cross the bus and the channel.

Replies carry an :class:`ErrorCode`, never exception text. Detail belongs in the
log, next to the request id. ``tests/unit/test_errors.py`` pins this list: adding
or renaming a code is a protocol change.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    # -- framing and protocol --------------------------------------------------
    BAD_REQUEST = "bad_request"  # malformed message: wrong type, missing field
    TOO_LARGE = "too_large"  # a size limit was exceeded before parsing
    UNKNOWN_COMMAND = "unknown_command"
    PROTOCOL = "protocol"  # out-of-order message, bad preamble, handshake failure
    VERSION = "version"  # unsupported protocol version
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"  # too many requests in flight on this session
    # -- infrastructure --------------------------------------------------------
    SERVICE_UNAVAILABLE = "service_unavailable"  # no worker answered by the deadline
    STORE_UNAVAILABLE = "store_unavailable"  # Redis unreachable: nothing was stored
    INTERNAL = "internal"
    # -- board -----------------------------------------------------------------
    INVALID_TEXT = "invalid_text"  # not UTF-8, too long, or forbidden characters
    NOT_FOUND = "not_found"
    BAD_SIGNATURE = "bad_signature"  # post signature does not verify under the post key
    # -- registry / enrollment -------------------------------------------------
    BAD_TOKEN = "bad_token"  # noqa: S105 - unknown, expired or used enrollment token
    INVALID_NAME = "invalid_name"
    NAME_TAKEN = "name_taken"
    ALREADY_ENROLLED = "already_enrolled"  # this EK or Noise key is already enrolled
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED = "revoked"
    LOCKED = "locked"
    REENROLL_REQUIRED = "reenroll_required"
    OUTSIDE_WINDOW = "outside_window"  # connection outside the device's allowed time window
    # -- TPM evidence ----------------------------------------------------------
    EK_UNTRUSTED = "ek_untrusted"  # EK certificate does not chain to a trusted CA / not allowlisted
    EK_MISMATCH = "ek_mismatch"  # EK public key differs from its certificate
    AK_INVALID = "ak_invalid"  # AK attributes wrong (restricted, fixedTPM, ...)
    CERTIFY_INVALID = "certify_invalid"  # AK certification of SRK or post key does not verify
    QUOTE_INVALID = "quote_invalid"  # bad signature, magic, type or structure
    QUOTE_BINDING = "quote_binding"  # qualifying data is not bound to this session
    PCR_DIGEST = "pcr_digest"  # PCR values sent do not match the quoted digest
    PCR_MISMATCH = "pcr_mismatch"  # PCRs differ from the enrolled baseline
    LOG_INCONSISTENT = "log_inconsistent"  # event log malformed or not replaying to the quote
    CLOCK_ROLLBACK = "clock_rollback"  # TPM resetCount/clock went backwards
    POLICY_REFUSED = "policy_refused"  # a custom policy plugin refused (or failed: fail closed)
    CREDENTIAL_FAILED = "credential_failed"  # credential activation answer is wrong
    TPM_ERROR = "tpm_error"  # the local TPM failed (client side)
    TPM_UNAVAILABLE = "tpm_unavailable"  # no TPM reachable at the configured TCTI (client side)


class AttestgateError(Exception):
    """An error with a machine-readable code.

    ``detail`` is for the local log only; it never crosses the wire.
    """

    def __init__(self, code: ErrorCode, detail: str = "") -> None:
        super().__init__(code.value if not detail else f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


ALL_CODES: frozenset[str] = frozenset(c.value for c in ErrorCode)


def parse_code(value: object) -> ErrorCode:
    """Map a code received from a peer to an ErrorCode; anything unknown is PROTOCOL."""
    if isinstance(value, str) and value in ALL_CODES:
        return ErrorCode(value)
    return ErrorCode.PROTOCOL
