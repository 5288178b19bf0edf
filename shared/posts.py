"""Board post rules shared by client and board: text validation and the signed digest."""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from enum import StrEnum
from typing import Any

from shared.errors import AttestgateError, ErrorCode
from shared.records import Device, Post
from shared.store.interface import Store
from shared.tpm.keycache import VerifyingKey
from shared.tpm.signature import verify_signature
from shared.tpm.structures import parse_public, parse_signature, read_ecdsa_sha256
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


def post_view(p: Post, device: Device | None, *, verified: bool) -> dict[str, Any]:
    """What readers get: the author is the registry's name of the device (\"\" if gone)."""
    return {
        "post_id": p.post_id,
        "device_id": p.device_id,
        "author": device.name if device is not None else "",
        "text": p.text,
        "ts": p.signed_at_ms / 1000,
        "verified": verified,
    }


class Problem(StrEnum):
    """What ``check_post`` found wrong with a stored post."""

    DEVICE = "device"  # its device is not in the registry (any more)
    SIGNATURE = "signature"  # device id, time, key or text differ from what the device signed
    AUTHOR = "author"  # the store holds an author field that is not the registry's name
    TIME = "time"  # the signed time is further from the board's receive time than allowed


def signature_ok(device: Device | None, post: Post) -> bool:
    """The post's signature verifies under its device's post key over what is shown."""
    if device is None:
        return False
    try:
        check_signature(device.post_public, post.signature,
                        post_digest(post.device_id, post.signed_at_ms, post.key, post.text))
    except AttestgateError:
        return False
    return True


def check_post(device: Device | None, post: Post, clock_skew: float) -> tuple[Problem, ...]:
    """Every check on a stored post against the registry; () when it all holds.

    ``device`` is the registry's record of ``post.device_id`` (None if unknown).
    """
    if device is None:
        return (Problem.DEVICE,)
    problems = []
    if not signature_ok(device, post):
        problems.append(Problem.SIGNATURE)
    if post.stored_author is not None and post.stored_author != device.name:
        problems.append(Problem.AUTHOR)
    if abs(post.signed_at_ms / 1000 - post.received_at) > clock_skew:
        problems.append(Problem.TIME)
    return tuple(problems)


def verify_post(store: Store, post: Post) -> bool:
    """Check a stored post's signature again under its device's post key."""
    return signature_ok(store.get_device(post.device_id), post)


def check_signature(post_public: bytes | VerifyingKey, signature: bytes, digest: bytes) -> None:
    """BAD_SIGNATURE unless ``signature`` is the post key's over ``digest``.

    ``post_public`` is the key's TPM2B_PUBLIC, raw or parsed (e.g. from a KeyCache).
    """
    code = ErrorCode.BAD_SIGNATURE
    if isinstance(post_public, VerifyingKey):
        key, crypto = post_public.public, post_public.crypto
    else:
        key, crypto = parse_public(post_public, code=code), None
    sig = read_ecdsa_sha256(signature) or parse_signature(signature, code=code)
    verify_signature(key, sig, digest, code=code, prehashed=True, public=crypto)
