"""Board post rules shared by client and board: text validation and the signed digest."""

from __future__ import annotations

import hashlib
import struct

from shared.errors import AttestgateError, ErrorCode
from shared.wire import LABEL_POST, MAX_POST_BYTES

_ALLOWED_CONTROL = frozenset("\n\t")


def validate_text(text: object) -> str:
    """UTF-8 text of at most MAX_POST_BYTES, no control characters but newline and tab.

    Raises INVALID_TEXT. Surrogates (not encodable as UTF-8) and every character of
    Unicode category C* other than newline/tab (controls, format, unassigned-private
    used as controls) are refused.
    """
    if not isinstance(text, str) or not text.strip():
        raise AttestgateError(ErrorCode.INVALID_TEXT, "empty or not text")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise AttestgateError(ErrorCode.INVALID_TEXT, "not valid UTF-8") from None
    if len(encoded) > MAX_POST_BYTES:
        raise AttestgateError(ErrorCode.INVALID_TEXT, f"{len(encoded)} bytes")
    for ch in text:
        o = ord(ch)
        if (o < 0x20 or 0x7F <= o <= 0x9F) and ch not in _ALLOWED_CONTROL:
            raise AttestgateError(ErrorCode.INVALID_TEXT, f"control character U+{o:04X}")
        if ch in "\u2028\u2029\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069":
            raise AttestgateError(ErrorCode.INVALID_TEXT, f"format character U+{o:04X}")
    return text


def post_digest(device_id: str, key: bytes, text: str) -> bytes:
    """What the device's post key signs: SHA-256(label, device id, idempotency key, text)."""
    h = hashlib.sha256(LABEL_POST)
    for part in (device_id.encode(), key, text.encode("utf-8")):
        h.update(struct.pack(">I", len(part)) + part)
    return h.digest()
