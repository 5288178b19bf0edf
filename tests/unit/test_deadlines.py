"""The order of the deadlines: each side gives up only after the other has had its say.

If these drift, "attestor down" or "registry down" turns back into a bare network
timeout on the client (issue 7, item 4).
"""

from __future__ import annotations

from shared import timing as t


def test_the_client_waits_for_message_2_longer_than_a_slot_wait_plus_a_lookup() -> None:
    assert t.SLOT_WAIT_MAX + t.HANDSHAKE_REQUEST_TIMEOUT + 1.0 <= t.CLIENT_CONNECT_TIMEOUT


def test_the_client_waits_for_the_attest_reply_longer_than_the_gateway_asks_the_attestor() -> None:
    assert t.HANDSHAKE_REQUEST_TIMEOUT + t.REFUSAL_MARGIN + 1.0 <= t.CLIENT_REQUEST_TIMEOUT
    assert t.REQUEST_TIMEOUT + 1.0 <= t.CLIENT_REQUEST_TIMEOUT


def test_the_handshake_deadline_fits_every_step() -> None:
    tpm_quote = 1.0  # the client's TPM work between message 2 and its quote
    steps = (t.MESSAGE1_TIMEOUT + t.SLOT_WAIT_MAX + 2 * t.HANDSHAKE_REQUEST_TIMEOUT
             + t.REFUSAL_MARGIN + tpm_quote)
    assert steps <= t.HANDSHAKE_TIMEOUT
    assert t.TOKEN_FAILURE_RESERVE > t.REFUSAL_MARGIN


def test_a_hint_never_makes_the_client_wait_long() -> None:
    assert t.CLIENT_RETRY_MIN < t.CLIENT_RETRY_MAX <= t.CLIENT_CONNECT_TIMEOUT
    assert t.BUSY_RETRY_AFTER <= t.CLIENT_RETRY_MAX
