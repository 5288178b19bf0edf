"""The hot records (Event, CheckedEvent, Component) write their own __init__ for speed: they
must stay what a frozen dataclass is (same fields and order, keyword construction, equality,
repr, immutability), so a field added later without updating __init__ fails here."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from shared.eventlog.parse import Event
from shared.eventlog.state import CheckedEvent, Component


@pytest.mark.parametrize("cls", [Event, CheckedEvent, Component])
def test_init_takes_exactly_the_fields_in_order(cls: type) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    params = list(inspect.signature(cls.__init__).parameters)[1:]
    assert params == names


def _samples() -> list[object]:
    ev = Event(3, 7, 0x80000001, {"sha256": b"\x01" * 32}, b"data")
    return [ev, CheckedEvent(ev, {"variable": "SecureBoot"}, True, False),
            Component(7, "secureboot_state", "SecureBoot", "enabled", "ab", True, False, 3)]


@pytest.mark.parametrize("record", _samples(), ids=lambda r: type(r).__name__)
def test_behaves_as_a_frozen_dataclass(record: object) -> None:
    values = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}  # type: ignore[arg-type]
    again = type(record)(**values)
    assert again == record and repr(again) == repr(record)
    assert dataclasses.replace(record, **values) == record  # type: ignore[type-var]
    assert repr(record).startswith(f"{type(record).__name__}(")
    name = next(iter(values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(record, name, values[name])
