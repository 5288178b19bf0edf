"""ATTESTGATE_EVENT_LOOP: uvloop by default, asyncio on request, nothing else."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from services.gateway.eventloop import SETTING, LoopKind, loop_factory, loop_kind
from shared.config import ConfigError


def test_uvloop_is_the_default() -> None:
    assert loop_kind({}) is LoopKind.UVLOOP
    assert loop_kind({SETTING: " "}) is LoopKind.UVLOOP
    factory, kind = loop_factory(LoopKind.UVLOOP)
    assert kind is LoopKind.UVLOOP
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_on_request() -> None:
    assert loop_kind({SETTING: "asyncio"}) is LoopKind.ASYNCIO
    factory, kind = loop_factory(LoopKind.ASYNCIO)
    assert kind is LoopKind.ASYNCIO
    loop = factory()
    try:
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.parametrize("value", ["trio", "UVLOOP", "uvloop,asyncio", "0"])
def test_anything_else_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        loop_kind({SETTING: value})
    assert info.value.name == SETTING
    assert "uvloop" in info.value.allowed and "asyncio" in info.value.allowed
