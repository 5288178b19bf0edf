"""Parsed public keys, kept per device: a quote check needs the AK as a cryptography
key, and parsing the TPM2B_PUBLIC and building that key took a good part of each
verification (profiled: "the AK parsed again for every quote").

:class:`KeyCache` maps (device id, which key) to the parsed key *and the exact bytes it
was parsed from*; a lookup with other bytes (the device enrolled again, an operator
changed the record) parses anew and replaces the entry, so a cached key is never used
for bytes it was not parsed from. Bounded: the least recently used entry goes first.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from shared.errors import ErrorCode
from shared.tpm.structures import PublicKey, TpmPublic, parse_public, to_crypto_key

DEFAULT_CAPACITY: Final = 10_000  # devices whose keys stay parsed (about 2 KiB each)


@dataclass(frozen=True)
class VerifyingKey:
    """A TPM2B_PUBLIC, parsed, with its cryptography public key."""

    raw: bytes = field(repr=False)
    public: TpmPublic
    crypto: PublicKey = field(repr=False)


def parse_verifying_key(raw: bytes, *, code: ErrorCode) -> VerifyingKey:
    """Parse a TPM2B_PUBLIC into a :class:`VerifyingKey`; ``code`` for anything malformed."""
    public = parse_public(raw, code=code)
    return VerifyingKey(bytes(raw), public, to_crypto_key(public, code=code))


class KeyCache:
    """Parsed keys by (device id, role); see the module docstring. Not thread-safe."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._keys: OrderedDict[tuple[str, str], VerifyingKey] = OrderedDict()
        self.parsed = 0  # how many times a key was parsed (not found, or changed)

    def get(self, device_id: str, role: str, raw: bytes, *, code: ErrorCode) -> VerifyingKey:
        """The parsed ``raw`` (e.g. the device's AK public); parses it on a miss or change."""
        slot = (device_id, role)
        hit = self._keys.get(slot)
        if hit is not None and len(hit.raw) == len(raw) and hmac.compare_digest(hit.raw, raw):
            self._keys.move_to_end(slot)
            return hit
        key = parse_verifying_key(raw, code=code)  # raises before anything is cached
        self.parsed += 1
        self._keys[slot] = key
        self._keys.move_to_end(slot)
        while len(self._keys) > self._capacity:
            self._keys.popitem(last=False)
        return key

    def forget(self, device_id: str) -> None:
        """Drop every key of ``device_id``."""
        for slot in [s for s in self._keys if s[0] == device_id]:
            del self._keys[slot]
