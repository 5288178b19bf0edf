"""The closed list of error codes: a change to it is a protocol change and must be deliberate."""

from __future__ import annotations

import pytest

from shared.errors import ALL_CODES, AttestgateError, ErrorCode, parse_code

# Every code on the wire, by value. Adding, renaming or removing one must edit this set.
PINNED = {
    "bad_request", "too_large", "unknown_command", "protocol", "version", "rate_limited", "busy",
    "service_unavailable", "store_unavailable", "internal",
    "invalid_text", "not_found", "bad_signature",
    "bad_token", "invalid_name", "name_taken", "already_enrolled", "unknown_device", "revoked",
    "locked", "reenroll_required", "outside_window",
    "ek_untrusted", "ek_mismatch", "ak_invalid", "certify_invalid", "quote_invalid",
    "quote_binding", "pcr_digest", "pcr_mismatch", "log_inconsistent", "clock_rollback",
    "policy_refused",
    "credential_failed",
    "tpm_error", "tpm_unavailable",
}


def test_code_list_is_pinned() -> None:
    assert {c.value for c in ErrorCode} == PINNED
    assert ALL_CODES == PINNED
    assert len(ErrorCode) == len(PINNED)  # no aliases hiding a second name for one value


def test_names_match_values() -> None:
    # A code's Python name and its wire value are the same word, so a typo cannot be frozen.
    for code in ErrorCode:
        assert code.name.lower() == code.value


@pytest.mark.parametrize("code", list(ErrorCode))
def test_parse_code_round_trips(code: ErrorCode) -> None:
    assert parse_code(code.value) is code


@pytest.mark.parametrize(
    "value", ["", "nope", "PROTOCOL", " protocol", "locked\n", None, 3, b"locked", ["locked"], True]
)
def test_parse_code_unknown_is_protocol(value: object) -> None:
    assert parse_code(value) is ErrorCode.PROTOCOL


def test_error_carries_code_and_detail() -> None:
    exc = AttestgateError(ErrorCode.LOCKED, "device abc")
    assert exc.code is ErrorCode.LOCKED
    assert exc.detail == "device abc"
    assert AttestgateError(ErrorCode.BUSY).detail == ""
