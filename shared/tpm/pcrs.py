"""PCR selections (TPML_PCR_SELECTION), the quoted PCR digest, and PCR diffs."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.constants import MAX_PCR_BANKS, MAX_PCR_SELECT, Alg, digest_size, hash_for
from shared.tpm.marshal import Reader, u16, u32
from shared.wire import MAX_PCRS

# PCR_SELECT_MIN for a PC-client TPM (24 PCRs): TPMs reject shorter bitmaps, so build 3.
_SELECT_BYTES = 3

_BANK_NAMES: dict[str, int] = {
    "sha1": Alg.SHA1,
    "sha256": Alg.SHA256,
    "sha384": Alg.SHA384,
    "sha512": Alg.SHA512,
}


@dataclass(frozen=True)
class PcrBank:
    """One TPMS_PCR_SELECTION: a hash bank and its PCR indices, ascending and unique."""

    hash_alg: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class PcrSelection:
    """A TPML_PCR_SELECTION, normalised: banks in wire order, each with sorted indices.

    Two selections compare equal when they select the same PCRs of the same banks in
    the same bank order, whatever bitmap length the TPM used on the wire.
    """

    banks: tuple[PcrBank, ...]

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        """Build from tpm2-tools notation, e.g. ``"sha256:0,1,2,3,4,5,6,7"``; banks split by ``+``.

        Raises BAD_REQUEST for an unknown bank, a bad or repeated index, or an index
        of ``shared.wire.MAX_PCRS`` or more.
        """
        banks: list[PcrBank] = []
        for part in text.split("+"):
            name, sep, rest = part.strip().partition(":")
            alg = _BANK_NAMES.get(name.strip().lower())
            if alg is None or not sep:
                raise AttestgateError(ErrorCode.BAD_REQUEST, f"pcr selection bank {name!r}")
            try:
                indices = [int(x) for x in rest.split(",")] if rest.strip() else []
            except ValueError:
                raise AttestgateError(ErrorCode.BAD_REQUEST, "pcr selection index") from None
            banks.append(_bank(alg, indices, ErrorCode.BAD_REQUEST))
        return cls._checked(banks, ErrorCode.BAD_REQUEST)

    @classmethod
    def single(cls, hash_alg: int, indices: tuple[int, ...] | list[int]) -> PcrSelection:
        """One bank; raises BAD_REQUEST like :meth:`parse`."""
        return cls._checked([_bank(hash_alg, list(indices), ErrorCode.BAD_REQUEST)],
                            ErrorCode.BAD_REQUEST)

    @classmethod
    def _checked(cls, banks: list[PcrBank], code: ErrorCode) -> PcrSelection:
        if len(banks) > MAX_PCR_BANKS:
            raise AttestgateError(code, f"{len(banks)} pcr banks")
        if len({b.hash_alg for b in banks}) != len(banks):
            raise AttestgateError(code, "pcr bank selected twice")
        return cls(tuple(banks))

    @classmethod
    def read(cls, r: Reader) -> PcrSelection:
        """Read a TPML_PCR_SELECTION from ``r`` (errors carry the reader's code)."""
        count = r.u32()
        if count > MAX_PCR_BANKS:
            raise r.fail(f"{count} pcr banks")
        banks: list[PcrBank] = []
        for _ in range(count):
            alg = r.u16()
            size = r.u8()
            if size > MAX_PCR_SELECT:
                raise r.fail(f"sizeofSelect {size}")
            bitmap = r.take(size)
            # Bit n of byte k selects PCR 8k+n (Part 2, TPMS_PCR_SELECT).
            indices = [8 * k + n for k, byte in enumerate(bitmap) for n in range(8)
                       if byte >> n & 1]
            if indices and indices[-1] >= MAX_PCRS:
                raise r.fail(f"pcr index {indices[-1]}")
            banks.append(PcrBank(alg, tuple(indices)))
        if len({b.hash_alg for b in banks}) != len(banks):
            raise r.fail("pcr bank selected twice")
        return cls(tuple(banks))

    @classmethod
    def from_bytes(cls, data: bytes, *, code: ErrorCode = ErrorCode.BAD_REQUEST) -> PcrSelection:
        """Parse a whole marshalled TPML_PCR_SELECTION; trailing bytes are refused."""
        r = Reader(data, code, "TPML_PCR_SELECTION")
        sel = cls.read(r)
        r.end()
        return sel

    def marshal(self) -> bytes:
        """The TPML_PCR_SELECTION bytes, with 3-byte bitmaps (enough for 24 PCRs)."""
        out = [u32(len(self.banks))]
        for bank in self.banks:
            bitmap = bytearray(_SELECT_BYTES)
            for i in bank.indices:
                bitmap[i // 8] |= 1 << (i % 8)
            out.append(u16(bank.hash_alg) + bytes([_SELECT_BYTES]) + bytes(bitmap))
        return b"".join(out)

    def __str__(self) -> str:
        names = {v: k for k, v in _BANK_NAMES.items()}
        return "+".join(f"{names.get(b.hash_alg, hex(b.hash_alg))}:"
                        + ",".join(str(i) for i in b.indices) for b in self.banks)


def _bank(alg: int, indices: list[int], code: ErrorCode) -> PcrBank:
    if digest_size(alg) is None:
        raise AttestgateError(code, f"pcr bank alg {alg:#x}")
    if len(set(indices)) != len(indices) or any(not 0 <= i < MAX_PCRS for i in indices):
        raise AttestgateError(code, "pcr selection indices")
    return PcrBank(alg, tuple(sorted(indices)))


def pcr_digest(hash_alg: int, selection: PcrSelection,
               values: Mapping[int, Mapping[int, bytes]]) -> bytes:
    """The pcrDigest a TPM2_Quote over ``selection`` must carry.

    ``values`` maps bank alg -> PCR index -> value. The digest is ``hash_alg`` over the
    values concatenated in selection order: bank order, then ascending index. The caller
    must supply exactly one value of the bank's digest size per selected PCR;
    otherwise BAD_REQUEST.
    """
    h = hash_for(hash_alg)
    if h is None:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"pcr digest alg {hash_alg:#x}")
    hasher = hashlib.new(h.name)
    for bank in selection.banks:
        bank_values = values.get(bank.hash_alg)
        size = digest_size(bank.hash_alg)
        if bank_values is None or set(bank_values) != set(bank.indices):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "pcr values do not match selection")
        for i in bank.indices:
            if len(bank_values[i]) != size:
                raise AttestgateError(ErrorCode.BAD_REQUEST, f"pcr {i} value length")
            hasher.update(bank_values[i])
    return hasher.digest()


@dataclass(frozen=True)
class PcrChange:
    """One PCR that differs from the baseline; ``None`` means absent on that side."""

    index: int
    enrolled: bytes | None
    current: bytes | None


def pcr_diff(baseline: Mapping[int, bytes], current: Mapping[int, bytes]) -> tuple[PcrChange, ...]:
    """PCRs whose value differs between ``baseline`` and ``current``, by ascending index.

    A PCR present on one side only counts as changed. An empty result means same state.
    """
    changes = []
    for i in sorted(set(baseline) | set(current)):
        old, new = baseline.get(i), current.get(i)
        if old is None or new is None or not hmac.compare_digest(old, new):
            changes.append(PcrChange(i, old, new))
    return tuple(changes)


def diff_view(diff: tuple[PcrChange, ...]) -> list[dict[str, object]]:
    return [
        {"pcr": c.index, "enrolled": (c.enrolled or b"").hex(), "current": (c.current or b"").hex()}
        for c in diff
    ]
