"""What binds TPM evidence to one Noise session: the derivations both sides compute.

The client's TPM quotes, certifies and HMACs these values; the attestor recomputes
them from the session's handshake hash ``h``. One definition, so the two can't drift.
"""

from __future__ import annotations

import hashlib

from shared.wire import LABEL_ACTIVATE, LABEL_QUOTE, LABEL_REATTEST


def quote_nonce(h: bytes) -> bytes:
    """Qualifying data of the session's first quote and of the enrollment certifications."""
    return hashlib.sha256(LABEL_QUOTE + h).digest()


def reattest_nonce(h: bytes, server_nonce: bytes) -> bytes:
    """Qualifying data of a re-attestation quote over the server's fresh nonce."""
    return hashlib.sha256(LABEL_REATTEST + h + server_nonce).digest()


def activation_message(h: bytes) -> bytes:
    """What the imported device PSK HMACs at enrollment to prove it lives in the TPM."""
    return LABEL_ACTIVATE + h
