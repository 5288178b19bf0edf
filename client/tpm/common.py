"""Shared by the TPM adapter's modules: limits, result types, argument checks, templates.

Nothing here talks to a TPM; :mod:`client.tpm.objects` owns the ESAPI context.
"""

from __future__ import annotations

import functools
import hashlib
import re
import string
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_ALG, TPM2_CC, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPML_PCR_SELECTION, TPMT_PUBLIC

from shared.errors import AttestgateError, ErrorCode
from shared.wire import MAX_EVIDENCE_FIELD, MAX_PCRS

# -- limits ---------------------------------------------------------------------------
TCTI_NAMES: Final = frozenset({"device", "swtpm", "mssim", "tabrmd"})
MAX_TCTI_LEN: Final = 512
MAX_SELECTION_LEN: Final = 128
MAX_QUALIFYING_DATA: Final = 64  # TPM2B_DATA holds a TPMT_HA: at most a SHA-512 digest
MAX_SEALED_SECRET: Final = 128  # TPM_RC_SIZE above this on swtpm (TPM-NOTES §5)
MAX_HMAC_BUFFER: Final = 1024  # TPM2B_MAX_BUFFER; longer data goes through a sequence
DIGEST_LEN: Final = 32
# Reading PCRs and quoting are separate commands; an extend in between is
# detected by comparing digests, and retried this many times.
QUOTE_ATTEMPTS: Final = 3
PCR_READ_ATTEMPTS: Final = 3

# -- endorsement keys ------------------------------------------------------------------
# Tried in this order; the first one with a certificate in NV wins (TCG EK
# Credential Profile names, as tpm2_pytss.utils.create_ek_template knows them).
# RSA-3072 (H-6, nameAlg SHA-384) comes before ECC P-384: a TPM provisioned with a
# 3072-bit RSA EK (swtpm_setup --rsa-keysize 3072) has no RSA-2048 certificate.
DEFAULT_EK_KINDS: Final = ("EK-RSA2048", "EK-ECC256", "EK-HIGH-RSA3072", "EK-HIGH-ECC384")
# Where provisioning conventionally persists the RSA EKs (TCG EK Credential Profile
# 2.3: 0x81010001 for L-1, 0x8101001C for H-6); using them saves the create_primary
# an RSA key costs (18-32 ms for 2048 bits, more for 3072). Only used if it matches.
EK_PERSISTENT_HANDLES: Final = {"EK-RSA2048": 0x81010001, "EK-HIGH-RSA3072": 0x8101001C}

# TPM_PT properties (TPM 2.0 Part 2, 6.13); tpm2_pytss 3.0 names only some of them.
PT_MANUFACTURER: Final = 0x105
PT_VENDOR_STRING_1: Final = 0x106  # .. _4 = 0x109
PT_FIRMWARE_VERSION_1: Final = 0x10B
PT_FIRMWARE_VERSION_2: Final = 0x10C

TCTI_LAYER_MASK: Final = 0xFF0000
TCTI_LAYER: Final = 0x0A0000
_BLOB_MAGIC: Final = b"AGK1"
_SELECTION_RE: Final = re.compile(r"sha256:(\d{1,2}(?:,\d{1,2})*)")
_PRINTABLE: Final = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")
BANK_NAMES: Final = {
    TPM2_ALG.SHA1: "sha1",
    TPM2_ALG.SHA256: "sha256",
    TPM2_ALG.SHA384: "sha384",
    TPM2_ALG.SHA512: "sha512",
    TPM2_ALG.SM3_256: "sm3_256",
}


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TpmInfo:
    """What the TPM says about itself (TPM2_GetCapability)."""

    manufacturer: str  # TCG vendor id, e.g. "IBM" (swtpm), "IFX", "STM", "INTC"
    firmware_version: int  # FIRMWARE_VERSION_1 << 32 | _2, as in TPMS_ATTEST.firmwareVersion
    vendor_string: str  # VENDOR_STRING_1..4, e.g. "SW   TPM"
    pcr_banks: tuple[str, ...]  # banks with at least one PCR allocated, e.g. ("sha256",)


@dataclass(frozen=True)
class Endorsement:
    """The TPM's EK: which TCG template, its TPM2B_PUBLIC, and its certificate (DER) if any."""

    kind: str  # one of DEFAULT_EK_KINDS, e.g. "EK-RSA2048" or "EK-HIGH-RSA3072"
    public: bytes
    certificate: bytes | None


@dataclass(frozen=True)
class Quote:
    """A TPM2_Quote by the AK and the PCR values it covers.

    ``attest`` is the marshalled TPMS_ATTEST (the signed bytes); ``signature``
    a marshalled TPMT_SIGNATURE (ECDSA-SHA256). ``pcr_values`` are the sha256
    bank's values, ascending by index, and hash to the quote's pcrDigest.
    """

    attest: bytes
    signature: bytes
    selection: str  # canonical form, e.g. "sha256:0,1,2,3,4,5,6,7"
    pcr_values: tuple[tuple[int, bytes], ...]

    def pcrs(self) -> dict[int, bytes]:
        return dict(self.pcr_values)


@dataclass(frozen=True)
class Certification:
    """A TPM2_Certify by the AK: marshalled TPMS_ATTEST and TPMT_SIGNATURE."""

    attest: bytes
    signature: bytes


@dataclass(frozen=True, repr=False)
class KeyBlob:
    """A TPM object under the SRK: marshalled TPM2B_PRIVATE and TPM2B_PUBLIC.

    The private part is encrypted by the TPM and useless elsewhere, so the
    caller may keep it in a file; :meth:`to_bytes` gives the file format.
    """

    private: bytes
    public: bytes

    def to_bytes(self) -> bytes:
        """``AGK1 || u16 len || private || u16 len || public``."""
        return (
            _BLOB_MAGIC
            + struct.pack(">H", len(self.private))
            + self.private
            + struct.pack(">H", len(self.public))
            + self.public
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse :meth:`to_bytes` output; anything else raises BAD_REQUEST."""
        if len(data) > 2 * MAX_EVIDENCE_FIELD or not data.startswith(_BLOB_MAGIC):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "not a key blob")
        parts: list[bytes] = []
        pos = len(_BLOB_MAGIC)
        for _ in range(2):
            if pos + 2 > len(data):
                raise AttestgateError(ErrorCode.BAD_REQUEST, "truncated key blob")
            (n,) = struct.unpack_from(">H", data, pos)
            pos += 2
            if n == 0 or pos + n > len(data):
                raise AttestgateError(ErrorCode.BAD_REQUEST, "truncated key blob")
            parts.append(data[pos : pos + n])
            pos += n
        if pos != len(data):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "trailing bytes after key blob")
        return cls(private=parts[0], public=parts[1])

    def __repr__(self) -> str:
        return f"KeyBlob(private=<{len(self.private)} B>, public=<{len(self.public)} B>)"


# -- input validation --------------------------------------------------------------------


def parse_tcti(tcti: str | None) -> tuple[str, str | None]:
    """Split ``name:config`` (tpm2-tools notation) into (name, config or None).

    A missing or unsupported TCTI raises TPM_UNAVAILABLE: attestgate never
    falls back to the TSS's default search, which could find some other TPM.
    """
    if tcti is None or not tcti.strip():
        raise AttestgateError(ErrorCode.TPM_UNAVAILABLE, "no TCTI configured")
    if len(tcti) > MAX_TCTI_LEN or any(c not in _PRINTABLE for c in tcti):
        raise AttestgateError(ErrorCode.TPM_UNAVAILABLE, "malformed TCTI string")
    name, _, config = tcti.strip().partition(":")
    if name not in TCTI_NAMES:
        raise AttestgateError(
            ErrorCode.TPM_UNAVAILABLE,
            f"unsupported TCTI {name!r}; use one of {', '.join(sorted(TCTI_NAMES))}",
        )
    return name, (config or None)


def parse_pcr_selection(selection: str) -> tuple[int, ...]:
    """Parse ``"sha256:0,1,7"`` into ascending PCR indices; BAD_REQUEST if malformed.

    Only the sha256 bank is supported. Indices are 0-23, given once each.
    """
    if not isinstance(selection, str) or len(selection) > MAX_SELECTION_LEN:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "PCR selection too long or not text")
    m = _SELECTION_RE.fullmatch(selection)
    if m is None:
        raise AttestgateError(ErrorCode.BAD_REQUEST, "PCR selection must look like sha256:0,1,2")
    indices = [int(x) for x in m.group(1).split(",")]
    if any(i >= MAX_PCRS for i in indices) or len(set(indices)) != len(indices):
        raise AttestgateError(ErrorCode.BAD_REQUEST, "PCR index out of range or repeated")
    return tuple(sorted(indices))


def format_pcr_selection(indices: Sequence[int]) -> str:
    """The canonical selection string for ascending ``indices``."""
    return "sha256:" + ",".join(str(i) for i in sorted(indices))


def check_len(name: str, data: bytes, low: int, high: int) -> None:
    if not isinstance(data, bytes | bytearray) or not low <= len(data) <= high:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"{name} must be {low}-{high} bytes")


def check_pcr_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_PCRS:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"PCR index must be 0-{MAX_PCRS - 1}")


def unmarshal_strict(cls: Any, data: bytes, what: str) -> Any:
    """Strictly parse caller-supplied bytes: size first, whole buffer, no trailing bytes."""
    if not isinstance(data, bytes | bytearray) or not 0 < len(data) <= MAX_EVIDENCE_FIELD:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"{what}: empty or too large")
    try:
        obj, used = cls.unmarshal(bytes(data))
    except (TSS2_Exception, IndexError, ValueError, TypeError):
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"{what}: does not parse") from None
    if used != len(data):
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"{what}: trailing bytes")
    return obj


# -- templates (built fresh each time: tpm2_pytss objects are mutable) -------------------

_STORAGE_ATTRS: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
    | TPMA_OBJECT.NODA
)
_AK_ATTRS: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)
_POST_KEY_ATTRS: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.SIGN_ENCRYPT
)


# The SRK and AK templates, marshalled (TPM2B_PUBLIC): what
# TPMT_PUBLIC.parse("ecc256:aes128cfb", _STORAGE_ATTRS) and
# TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null", _AK_ATTRS) give, pinned by
# tests/unit/tpm/test_tpm_client_parsing.py. Unmarshalling them costs ~4 us, parsing the
# strings ~0.2-0.35 ms, which a new process paid on its first connect.
SRK_TEMPLATE: Final = bytes.fromhex("001a0023000b00030472000000060080004300100003001000000000")
AK_TEMPLATE: Final = bytes.fromhex("00180023000b00050072000000100018000b0003001000000000")


def srk_template() -> Any:
    return TPM2B_PUBLIC.unmarshal(SRK_TEMPLATE)[0]


def ak_template() -> Any:
    return TPM2B_PUBLIC.unmarshal(AK_TEMPLATE)[0]


def parsed_templates() -> tuple[bytes, bytes]:
    """(SRK, AK) templates built from their tpm2-tools strings: what the constants hold."""
    srk = TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=_STORAGE_ATTRS))
    ak = TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=_AK_ATTRS))
    return bytes(srk.marshal()), bytes(ak.marshal())


def post_key_template() -> Any:
    return TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=_POST_KEY_ATTRS))


def sealed_template(policy: bytes | None) -> Any:
    attrs = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    if policy is None:
        # Plain seal: empty auth, so anyone with this TPM and the blob can unseal.
        return TPM2B_PUBLIC(
            TPMT_PUBLIC.parse("keyedhash", objectAttributes=attrs | TPMA_OBJECT.USERWITHAUTH)
        )
    # No userWithAuth: the PCR policy is the only way to use the object.
    return TPM2B_PUBLIC(TPMT_PUBLIC.parse("keyedhash", objectAttributes=attrs, authPolicy=policy))


@functools.lru_cache(maxsize=64)
def selection_bytes(indices: tuple[int, ...]) -> bytes:
    """The marshalled TPML_PCR_SELECTION of the sha256 PCRs ``indices`` (valid, ascending):
    one entry, 3-byte bitmap, what ``TPML_PCR_SELECTION.parse`` gives for the same text
    (tests/unit/tpm/test_tpm_client_parsing.py compares them; the parse cost ~0.5 ms of
    profiled CPU on every quote)."""
    bitmap = bytearray(3)
    for i in indices:
        bitmap[i // 8] |= 1 << (i % 8)
    return struct.pack(">IHB", 1, TPM2_ALG.SHA256, len(bitmap)) + bytes(bitmap)


def pytss_selection(indices: tuple[int, ...]) -> Any:
    """A new tpm2_pytss TPML_PCR_SELECTION for ``indices`` (for ESAPI calls)."""
    return TPML_PCR_SELECTION.unmarshal(selection_bytes(indices))[0]


_ECC_POINT_MAX: Final = 128  # TPM2B_ECC_PARAMETER (MAX_ECC_KEY_BYTES in the TSS headers)


def matches_ecc_template(public: bytes, template: bytes) -> bool:
    """Whether the marshalled TPM2B_PUBLIC ``public`` is what the marshalled ECC ``template``
    (a TPM2B_PUBLIC with an empty unique point) gives: the same public area up to the unique
    field, then one point (x, y). Bytes compared instead of tpm2_pytss objects walked (the
    same answer: a test compares both on real and altered publics)."""
    head = template[2:-4]
    if template[2:4] != b"\x00\x23" or template[-4:] != bytes(4):
        raise ValueError("not an ECC template with an empty unique point")
    end = len(public)
    if end < 2 or struct.unpack_from(">H", public)[0] != end - 2 \
            or public[2:2 + len(head)] != head:
        return False
    pos = 2 + len(head)
    for _ in range(2):
        if pos + 2 > end:
            return False
        (size,) = struct.unpack_from(">H", public, pos)
        pos += 2 + size
        if size > _ECC_POINT_MAX:
            return False
    return pos == end


def pcr_policy_digest(indices: Sequence[int], values: dict[int, bytes]) -> bytes:
    """PolicyPCR's policyDigest from a fresh session, computed in software (TPM-NOTES §5)."""
    pcr_digest = hashlib.sha256(b"".join(values[i] for i in indices)).digest()
    selection = selection_bytes(tuple(sorted(indices)))
    return hashlib.sha256(
        b"\0" * DIGEST_LEN + struct.pack(">I", int(TPM2_CC.PolicyPCR)) + selection + pcr_digest
    ).digest()


def _u32(data: bytes, pos: int) -> int:
    if pos + 4 > len(data):
        raise ValueError("truncated")
    return int(struct.unpack_from(">I", data, pos)[0])


def sha256_indices(marshalled: bytes) -> list[int]:
    """Indices set in the sha256 entries of a marshalled TPML_PCR_SELECTION (a TPM's
    answer; ValueError if it does not parse whole)."""
    count = _u32(marshalled, 0)
    pos, out = 4, list[int]()
    for _ in range(count):
        if pos + 3 > len(marshalled):
            raise ValueError("truncated PCR selection")
        alg, size = struct.unpack_from(">HB", marshalled, pos)
        pos += 3
        bitmap = marshalled[pos:pos + size]
        if len(bitmap) != size:
            raise ValueError("truncated PCR selection")
        pos += size
        if alg == TPM2_ALG.SHA256:
            out.extend(byte_no * 8 + bit for byte_no, byte in enumerate(bitmap)
                       for bit in range(8) if byte >> bit & 1)
    if pos != len(marshalled):
        raise ValueError("trailing bytes after PCR selection")
    return sorted(out)


def digest_list(marshalled: bytes) -> list[bytes]:
    """The digests of a marshalled TPML_DIGEST (ValueError if it does not parse whole)."""
    count = _u32(marshalled, 0)
    pos, out = 4, list[bytes]()
    for _ in range(count):
        if pos + 2 > len(marshalled):
            raise ValueError("truncated digest list")
        (size,) = struct.unpack_from(">H", marshalled, pos)
        pos += 2
        digest = marshalled[pos:pos + size]
        if len(digest) != size:
            raise ValueError("truncated digest list")
        out.append(digest)
        pos += size
    if pos != len(marshalled):
        raise ValueError("trailing bytes after digest list")
    return out


def printable(raw: bytes) -> str:
    text = raw.decode("ascii", errors="replace")
    return "".join(c if c in _PRINTABLE else "?" for c in text.rstrip("\0 "))


@dataclass(frozen=True)
class EkChoice:
    kind: str
    template: Any  # TPM2B_PUBLIC
    certificate: bytes | None
