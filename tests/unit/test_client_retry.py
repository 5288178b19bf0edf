"""The client's reading of cleartext hints: only ever a bounded retry, never a refusal."""

from __future__ import annotations

import pytest

from client.channel import NetworkError, Refused, ServerBusy, retrying
from shared.errors import ErrorCode
from shared.hint import Hint, HintReason, busy
from shared.timing import CLIENT_CONNECT_ATTEMPTS, CLIENT_RETRY_MAX, CLIENT_RETRY_MIN
from shared.wire import HINT_MAX_RETRY_MS


class Attempts:
    """A connect attempt that is told "busy" ``busy_times`` times, then succeeds."""

    def __init__(self, busy_times: int, hint: Hint) -> None:
        self.busy_times = busy_times
        self.hint = hint
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.busy_times:
            raise ServerBusy(self.hint)
        return "channel"


def test_retries_until_the_server_answers() -> None:
    attempt, slept, said = Attempts(2, busy(0.3)), [], []
    assert retrying(attempt, said.append, sleep=slept.append) == "channel"
    assert attempt.calls == 3 and len(slept) == 2 and len(said) == 2
    # The hint's 0.3 s, or the growing backoff when that is longer, plus at most 25 % jitter.
    assert 0.3 <= slept[0] <= 0.3 * 1.25
    assert 2 * CLIENT_RETRY_MIN <= slept[1] <= 2 * CLIENT_RETRY_MIN * 1.25
    assert "retrying" in said[0] and "busy" in said[0]


def test_gives_up_after_bounded_attempts_as_a_network_error() -> None:
    attempt, slept = Attempts(100, busy(0.1)), []
    with pytest.raises(NetworkError) as exc:
        retrying(attempt, lambda _: None, sleep=slept.append)
    assert not isinstance(exc.value, ServerBusy)  # the final error is not retryable again
    assert attempt.calls == CLIENT_CONNECT_ATTEMPTS
    assert "try again later" in str(exc.value)


def test_a_forged_hint_cannot_stall_the_client() -> None:
    attempt, slept = Attempts(100, Hint(HintReason.UNAVAILABLE, HINT_MAX_RETRY_MS)), []
    with pytest.raises(NetworkError):
        retrying(attempt, lambda _: None, sleep=slept.append)
    assert max(slept) <= CLIENT_RETRY_MAX * 1.25
    assert sum(slept) <= (CLIENT_CONNECT_ATTEMPTS - 1) * CLIENT_RETRY_MAX * 1.25


def test_backoff_grows_even_when_the_hint_says_zero() -> None:
    attempt, slept = Attempts(100, busy(0)), []
    with pytest.raises(NetworkError):
        retrying(attempt, lambda _: None, sleep=slept.append)
    assert slept[0] >= CLIENT_RETRY_MIN and slept[-1] > slept[0]


def test_other_errors_are_not_retried() -> None:
    calls = []

    def refused() -> str:
        calls.append(1)
        raise Refused(ErrorCode.UNKNOWN_DEVICE, {})

    with pytest.raises(Refused):
        retrying(refused, lambda _: None, sleep=lambda _: None)
    assert len(calls) == 1
