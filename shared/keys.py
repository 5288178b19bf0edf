"""Typed keys with secret hygiene: no key bytes in reprs, logs or comparisons by ``==``."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared.errors import AttestgateError, ErrorCode
from shared.wire import DH_LEN, LABEL_ENROLL_PSK, LABEL_FINGERPRINT, LABEL_SESSION_PSK, PSK_LEN

Random = Callable[[int], bytes]


@dataclass(frozen=True)
class StaticKey:
    """An X25519 static keypair; ``private`` never appears in repr."""

    private: bytes = field(repr=False)
    public: bytes

    @staticmethod
    def generate(rng: Random = os.urandom) -> StaticKey:
        return StaticKey.from_private(rng(DH_LEN))

    @staticmethod
    def from_private(private: bytes) -> StaticKey:
        if len(private) != DH_LEN:
            raise AttestgateError(ErrorCode.BAD_REQUEST, "static key must be 32 bytes")
        pub = X25519PrivateKey.from_private_bytes(private).public_key()
        # public_bytes_raw: public_bytes(Raw, Raw) without importing serialization (and its
        # SSH, RSA, DSA modules: ~10 ms of every CLI start-up).
        return StaticKey(private=private, public=pub.public_bytes_raw())


@dataclass(frozen=True)
class Psk:
    """A 32-byte pre-shared key; never printed."""

    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.value) != PSK_LEN:
            raise AttestgateError(ErrorCode.BAD_REQUEST, "psk must be 32 bytes")


def fingerprint(public: bytes) -> str:
    """The fingerprint users pin: ``SHA256:`` + hex of SHA-256(label || key), 64 hex chars."""
    return "SHA256:" + hashlib.sha256(LABEL_FINGERPRINT + public).hexdigest()


def fingerprint_matches(public: bytes, expected: str) -> bool:
    """Constant-time check of a key against a pinned fingerprint (prefix ``SHA256:`` optional)."""
    want = expected.strip().removeprefix("SHA256:").lower()
    return hmac.compare_digest(fingerprint(public).removeprefix("SHA256:"), want)


def enroll_psk(token_secret: bytes) -> Psk:
    """Enrollment handshake PSK: HMAC(token secret, label); empty secret = open enrollment."""
    return Psk(hmac.new(token_secret, LABEL_ENROLL_PSK, hashlib.sha256).digest())


def session_psk_message(initiator_ephemeral: bytes, responder_ephemeral: bytes) -> bytes:
    """The bytes the device PSK is HMACed over to make one session's Noise PSK."""
    return LABEL_SESSION_PSK + initiator_ephemeral + responder_ephemeral


def session_psk(device_psk: bytes, initiator_ephemeral: bytes, responder_ephemeral: bytes) -> Psk:
    """Server side of the session PSK; the client computes the same HMAC inside its TPM."""
    msg = session_psk_message(initiator_ephemeral, responder_ephemeral)
    return Psk(hmac.new(device_psk, msg, hashlib.sha256).digest())


def device_id_for(noise_public: bytes) -> str:
    """A device's stable id: the first 16 bytes of SHA-256 of its Noise static key, hex."""
    return hashlib.sha256(noise_public).hexdigest()[:32]
