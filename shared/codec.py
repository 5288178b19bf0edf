"""msgpack for application messages: size first, then type, then fields.

``unpack_map`` is the only way bytes from a peer become a Python value here; it
refuses anything but a map with string keys, within the size limits of
``shared.wire``. ``Fields`` then reads typed, bounded fields out of that map, so
parsers of individual messages stay one line per field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgpack

from shared.errors import AttestgateError, ErrorCode
from shared.wire import MAX_MESSAGE


def pack(value: Mapping[str, Any]) -> bytes:
    out = msgpack.packb(value, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def fill(items: Iterable[Mapping[str, Any]], budget: int) -> tuple[list[Mapping[str, Any]], bool]:
    """As many of ``items`` (in order) as fit in ``budget`` bytes of msgpack, and whether
    some were left out: what keeps a reply of many records within one message. ``items``
    is consumed lazily, so work per item (a signature check) stops at the budget."""
    out: list[Mapping[str, Any]] = []
    used = 0
    for item in items:
        size = len(pack(item))
        if used + size > budget:
            return out, True
        out.append(item)
        used += size
    return out, False


def refuse_ext(code: int, data: bytes) -> Any:
    # max_ext_len=0 alone still lets a zero-length ext (c7 00 <type>) through as ExtType.
    raise ValueError(f"ext type {code}")


def unpack_map(data: bytes, *, max_size: int = MAX_MESSAGE) -> dict[str, Any]:
    """Decode one msgpack map; raises TOO_LARGE or BAD_REQUEST, nothing else."""
    if len(data) > max_size:
        raise AttestgateError(ErrorCode.TOO_LARGE, f"{len(data)} bytes")
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=1024,
            max_map_len=256,
            max_ext_len=0,
            ext_hook=refuse_ext,
        )
    except (ValueError, TypeError, msgpack.UnpackException, msgpack.ExtraData) as exc:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"msgpack: {type(exc).__name__}") from None
    except RecursionError:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "msgpack: too deep") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "not a map with string keys")
    return value


class Fields:
    """Typed, bounded access to a decoded map. Every miss is BAD_REQUEST."""

    def __init__(self, m: Mapping[str, Any]) -> None:
        self._m = m

    def _get(self, key: str, optional: bool) -> Any:
        if key not in self._m or self._m[key] is None:
            if optional:
                return None
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"missing field {key}")
        return self._m[key]

    def text(self, key: str, max_len: int, *, optional: bool = False) -> str:
        v = self._get(key, optional)
        if v is None:
            return ""
        if not isinstance(v, str) or len(v.encode()) > max_len:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"field {key}: str of <= {max_len}")
        return v

    def blob(self, key: str, max_len: int, *, min_len: int = 0, optional: bool = False) -> bytes:
        v = self._get(key, optional)
        if v is None:
            return b""
        if not isinstance(v, bytes) or not min_len <= len(v) <= max_len:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"field {key}: {min_len}..{max_len} B")
        return v

    def integer(self, key: str, lo: int, hi: int, *, default: int | None = None) -> int:
        v = self._get(key, default is not None)
        if v is None:
            assert default is not None
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"field {key}: int in {lo}..{hi}")
        return v

    def number(self, key: str) -> float:
        v = self._get(key, False)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"field {key}: number")
        return float(v)

    def flag(self, key: str, *, default: bool = False) -> bool:
        v = self._get(key, True)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"field {key}: bool")
        return v

    def pcr_map(self, key: str, max_items: int, value_len: int) -> dict[int, bytes]:
        """A map of small int keys to fixed-length bytes (PCR index -> value)."""
        v = self._get(key, False)
        if not isinstance(v, dict) or len(v) > max_items:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"field {key}: map")
        out: dict[int, bytes] = {}
        for raw_key, val in v.items():
            k = raw_key
            if isinstance(k, str) and k.isascii() and k.isdigit() and len(k) <= 2:
                k = int(k)
            if (
                isinstance(k, bool)
                or not isinstance(k, int)
                or not 0 <= k < 64
                or not isinstance(val, bytes)
                or len(val) != value_len
            ):
                raise AttestgateError(ErrorCode.BAD_REQUEST, f"field {key}: entries")
            out[k] = val
        return out

    def mapping(self, key: str, *, optional: bool = False) -> dict[str, Any]:
        v = self._get(key, optional)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"field {key}: map")
        return v
