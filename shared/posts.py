"""Board post rules shared by client and board: text validation and the signed digest."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from shared.errors import AttestgateError, ErrorCode
from shared.post_text import post_digest, validate_text
from shared.records import Device, Post
from shared.store.interface import Store
from shared.tpm.keycache import VerifyingKey
from shared.tpm.signature import verify_signature
from shared.tpm.structures import parse_public, parse_signature, read_ecdsa_sha256

__all__ = ["Problem", "check_post", "check_signature", "post_digest", "post_view",
           "signature_ok", "validate_text", "verify_post"]


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
