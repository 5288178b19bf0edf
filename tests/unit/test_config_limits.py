"""The admission and abuse settings in ServerConfig: defaults, and strict parsing."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, ServerConfig


def test_defaults() -> None:
    cfg = ServerConfig.from_env({})
    assert (cfg.max_sessions_per_device, cfg.handshake_rate, cfg.handshake_burst,
            cfg.token_max_failures) == (8, 20.0, 5.0, 10)


def test_values() -> None:
    cfg = ServerConfig.from_env({"ATTESTGATE_MAX_SESSIONS_PER_DEVICE": "2",
                                 "ATTESTGATE_HANDSHAKE_RATE": "0.5",
                                 "ATTESTGATE_HANDSHAKE_BURST": "1",
                                 "ATTESTGATE_TOKEN_MAX_FAILURES": "3"})
    assert (cfg.max_sessions_per_device, cfg.handshake_rate, cfg.handshake_burst,
            cfg.token_max_failures) == (2, 0.5, 1.0, 3)


@pytest.mark.parametrize(("name", "value"), [
    ("ATTESTGATE_MAX_SESSIONS_PER_DEVICE", "0"), ("ATTESTGATE_MAX_SESSIONS_PER_DEVICE", "x"),
    ("ATTESTGATE_MAX_SESSIONS_PER_DEVICE", "1.5"), ("ATTESTGATE_HANDSHAKE_RATE", "0"),
    ("ATTESTGATE_HANDSHAKE_RATE", "nan"), ("ATTESTGATE_HANDSHAKE_RATE", "inf"),
    ("ATTESTGATE_HANDSHAKE_BURST", "0.5"), ("ATTESTGATE_TOKEN_MAX_FAILURES", "-1"),
])
def test_invalid_values_stop(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        ServerConfig.from_env({name: value})
    assert (exc.value.name, exc.value.value) == (name, value)
