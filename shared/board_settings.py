"""The board's settings, read strictly from the environment in one place.

    ATTESTGATE_POST_RATE        posts per second each device's bucket refills (default 5)
    ATTESTGATE_POST_BURST       posts a device may send at once, the bucket size (default 20)
    ATTESTGATE_POST_KEY_TTL     seconds an idempotency key is remembered, so that a retry
                                of the same post within it is stored once (default 86400)
    ATTESTGATE_POST_CLOCK_SKEW  seconds a post's signed client timestamp may differ from the
                                board's clock; further is refused as bad_request (default 300)

The bucket lives in Redis, so all board workers (behind all gateways) share it. A value
that does not parse, is not finite or is out of range is refused (``shared.config.ConfigError``)
naming the variable, the value and what is allowed; the board worker then exits 2.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from shared.config import integer, number
from shared.store.interface import PostQuota

DEFAULT_POST_RATE: Final = 5.0
DEFAULT_POST_BURST: Final = 20
DEFAULT_POST_KEY_TTL: Final = 24 * 3600.0
DEFAULT_POST_CLOCK_SKEW: Final = 300.0


@dataclass(frozen=True)
class BoardSettings:
    quota: PostQuota
    clock_skew: float

    @staticmethod
    def defaults() -> BoardSettings:
        return BoardSettings(
            PostQuota(DEFAULT_POST_RATE, DEFAULT_POST_BURST, DEFAULT_POST_KEY_TTL),
            DEFAULT_POST_CLOCK_SKEW)

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> BoardSettings:
        """Raises ConfigError naming the variable, its value and what is allowed."""
        e = os.environ if env is None else env
        rate = number(e, "ATTESTGATE_POST_RATE", DEFAULT_POST_RATE, 0.001, 1e6)
        burst = integer(e, "ATTESTGATE_POST_BURST", DEFAULT_POST_BURST, 1, 1_000_000)
        ttl = number(e, "ATTESTGATE_POST_KEY_TTL", DEFAULT_POST_KEY_TTL, 60, 366 * 86400.0)
        skew = number(e, "ATTESTGATE_POST_CLOCK_SKEW", DEFAULT_POST_CLOCK_SKEW, 1, 86400.0)
        return BoardSettings(PostQuota(rate, burst, ttl), skew)
