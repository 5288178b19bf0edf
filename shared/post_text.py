"""The post rules a device needs: text validation and the digest its post key signs.

Apart from shared.posts (which re-exports both, with the board's checks of stored posts) so
that ``attestgate post`` does not import the store's records and the signature verifier.
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata

from shared.errors import AttestgateError, ErrorCode
from shared.wire import LABEL_POST, MAX_POST_BYTES

_ALLOWED_CONTROL = frozenset("\n\t\u200d")  # ZWJ joins emoji sequences
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Line/paragraph separators and every bidi control (marks LRM, RLM, ALM; embeddings,
# overrides and isolates): they reorder or split what other devices display.
# The same rule for ASCII text, where the refused characters are exactly the C0 controls
# and DEL (category Cc) but newline and tab: one scan in C instead of a lookup per character.
_ASCII_REFUSED = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_LEN = struct.Struct(">I")
_TS = struct.Struct(">Iq")  # the timestamp's length prefix (8) and the timestamp


def validate_text(text: object) -> str:
    """UTF-8 text of at most MAX_POST_BYTES, no control characters but newline and tab.

    Raises INVALID_TEXT. Surrogates (not encodable as UTF-8) and every character of
    Unicode category C* other than newline/tab (controls, format characters such as
    bidi overrides and zero-width spaces, private use, unassigned) are refused.
    """
    if not isinstance(text, str) or not text.strip():
        raise AttestgateError(ErrorCode.INVALID_TEXT, "empty or not text")
    if text.isascii():  # one byte per character, every one of them encodable
        if len(text) > MAX_POST_BYTES:
            raise AttestgateError(ErrorCode.INVALID_TEXT, f"{len(text)} bytes")
        refused = _ASCII_REFUSED.search(text)
        if refused is not None:
            raise AttestgateError(ErrorCode.INVALID_TEXT, f"character U+{ord(refused[0]):04X}")
        return text
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise AttestgateError(ErrorCode.INVALID_TEXT, "not valid UTF-8") from None
    if len(encoded) > MAX_POST_BYTES:
        raise AttestgateError(ErrorCode.INVALID_TEXT, f"{len(encoded)} bytes")
    for ch in text:
        # C*: controls, format (bidi overrides, zero-width), private use, unassigned;
        # Zl/Zp: line and paragraph separators, which break one-post-per-line output.
        if ch not in _ALLOWED_CONTROL and unicodedata.category(ch) in _REFUSED_CATEGORIES:
            raise AttestgateError(ErrorCode.INVALID_TEXT, f"character U+{ord(ch):04X}")
    return text


def post_digest(device_id: str, signed_at_ms: int, key: bytes, text: str) -> bytes:
    """What the device's post key signs: SHA-256(label, device id, client timestamp, key, text).

    Every part is length-prefixed; the timestamp is milliseconds since the epoch as a
    signed 64-bit big-endian integer. This is everything a reader is shown except the
    author, which is the registry's name of the device id.
    """
    device, encoded = device_id.encode(), text.encode("utf-8")
    return hashlib.sha256(b"".join((
        LABEL_POST, _LEN.pack(len(device)), device, _TS.pack(8, signed_at_ms),
        _LEN.pack(len(key)), key, _LEN.pack(len(encoded)), encoded))).digest()
