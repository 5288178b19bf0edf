"""The client's TPM adapter: the only module in attestgate that imports tpm2_pytss.

Open a :class:`Tpm` from a TCTI string in tpm2-tools notation and use it as a
context manager. Every method returns plain ``bytes`` (marshalled TPM
structures, exactly as the server parses them) or frozen dataclasses; every
failure is an :class:`~shared.errors.AttestgateError`:

* ``TPM_UNAVAILABLE`` - no TCTI configured, or the TPM cannot be reached;
* ``BAD_REQUEST`` - an argument is malformed (bad PCR selection, oversized
  data, a blob that does not parse); nothing was sent to the TPM;
* ``CREDENTIAL_FAILED`` - a credential was not made for this TPM's EK and AK;
* ``PCR_MISMATCH`` - a PCR-bound secret cannot be unsealed because the PCRs
  differ from their values at sealing time ("the machine state changed");
* ``TPM_ERROR`` - anything else the TPM refused; ``detail`` has the rc.

Keys (TCG EK, and attestgate's SRK, AK and post key) are re-derived or loaded
per call and flushed before the call returns: swtpm and many real TPMs hold only
three transient objects and three sessions, and nothing is cleaned up for us
when no resource manager runs. The SRK and AK are primaries, so they come out
the same on every call; the post key, HMAC key and sealed secrets are
:class:`KeyBlob` s that the caller stores and hands back.

A ``Tpm`` is not thread-safe; use one per thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import string
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, Self

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_CC,
    TPM2_RC,
    TPM2_SE,
    TPMA_OBJECT,
)
from tpm2_pytss.TCTILdr import TCTILdr
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TPMU_HA,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

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
_EK_PERSISTENT_HANDLES: Final = {"EK-RSA2048": 0x81010001, "EK-HIGH-RSA3072": 0x8101001C}

# TPM_PT properties (TPM 2.0 Part 2, 6.13); tpm2_pytss 3.0 names only some of them.
_PT_MANUFACTURER: Final = 0x105
_PT_VENDOR_STRING_1: Final = 0x106  # .. _4 = 0x109
_PT_FIRMWARE_VERSION_1: Final = 0x10B
_PT_FIRMWARE_VERSION_2: Final = 0x10C

_TCTI_LAYER_MASK: Final = 0xFF0000
_TCTI_LAYER: Final = 0x0A0000
_BLOB_MAGIC: Final = b"AGK1"
_SELECTION_RE: Final = re.compile(r"sha256:(\d{1,2}(?:,\d{1,2})*)")
_PRINTABLE: Final = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")
_BANK_NAMES: Final = {
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


def _check_len(name: str, data: bytes, low: int, high: int) -> None:
    if not isinstance(data, bytes | bytearray) or not low <= len(data) <= high:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"{name} must be {low}-{high} bytes")


def _check_pcr_index(index: int) -> None:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_PCRS:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"PCR index must be 0-{MAX_PCRS - 1}")


def _unmarshal(cls: Any, data: bytes, what: str) -> Any:
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


# -- templates (built fresh each time: tpm2_pytss objects are mutable) ---------------------

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


def _srk_template() -> Any:
    return TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=_STORAGE_ATTRS))


def _ak_template() -> Any:
    return TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=_AK_ATTRS))


def _post_key_template() -> Any:
    return TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=_POST_KEY_ATTRS))


def _sealed_template(policy: bytes | None) -> Any:
    attrs = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    if policy is None:
        # Plain seal: empty auth, so anyone with this TPM and the blob can unseal.
        return TPM2B_PUBLIC(
            TPMT_PUBLIC.parse("keyedhash", objectAttributes=attrs | TPMA_OBJECT.USERWITHAUTH)
        )
    # No userWithAuth: the PCR policy is the only way to use the object.
    return TPM2B_PUBLIC(TPMT_PUBLIC.parse("keyedhash", objectAttributes=attrs, authPolicy=policy))


def _pcr_policy_digest(indices: Sequence[int], values: dict[int, bytes]) -> bytes:
    """PolicyPCR's policyDigest from a fresh session, computed in software (TPM-NOTES §5)."""
    pcr_digest = hashlib.sha256(b"".join(values[i] for i in indices)).digest()
    selection = TPML_PCR_SELECTION.parse(format_pcr_selection(indices)).marshal()
    return hashlib.sha256(
        b"\0" * DIGEST_LEN + struct.pack(">I", int(TPM2_CC.PolicyPCR)) + selection + pcr_digest
    ).digest()


def _selected_indices(selection: Any) -> list[int]:
    """Indices set in the sha256 entries of a TPML_PCR_SELECTION."""
    out: list[int] = []
    for i in range(int(selection.count)):
        entry = selection[i]
        if entry.hash != TPM2_ALG.SHA256:
            continue
        bitmap = bytes(entry.pcrSelect)[: int(entry.sizeofSelect)]
        out.extend(
            byte_no * 8 + bit
            for byte_no, byte in enumerate(bitmap)
            for bit in range(8)
            if byte >> bit & 1
        )
    return sorted(out)


def _printable(raw: bytes) -> str:
    text = raw.decode("ascii", errors="replace")
    return "".join(c if c in _PRINTABLE else "?" for c in text.rstrip("\0 "))


@dataclass(frozen=True)
class _EkChoice:
    kind: str
    template: Any  # TPM2B_PUBLIC
    certificate: bytes | None


# -- the adapter ---------------------------------------------------------------------------


class Tpm:
    """A connection to one TPM through the TCTI named by ``tcti``.

    ``Tpm("swtpm:host=127.0.0.1,port=2321")``, ``Tpm("device:/dev/tpmrm0")``.
    Use as a context manager, or call :meth:`close`. Opening raises
    TPM_UNAVAILABLE when ``tcti`` is missing, unsupported or unreachable.
    ``ek_kinds`` sets which EK templates :meth:`endorsement` tries, in order.
    """

    def __init__(self, tcti: str | None, *, ek_kinds: Sequence[str] = DEFAULT_EK_KINDS) -> None:
        name, config = parse_tcti(tcti)
        unknown = [k for k in ek_kinds if k not in DEFAULT_EK_KINDS]
        if unknown or not ek_kinds:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"unknown EK kinds {unknown}")
        self._ek_kinds = tuple(ek_kinds)
        self._ek: _EkChoice | None = None
        # libtss2 prints expected failures (policy checks, missing NV indices) as
        # ERROR lines on stderr; it reads TSS2_LOG at its first log call.
        os.environ.setdefault("TSS2_LOG", "all+none")
        self._tcti_obj: Any = None
        self._ectx: Any = None
        try:
            self._tcti_obj = TCTILdr(name, config)
            self._ectx = ESAPI(self._tcti_obj)
        except TSS2_Exception as exc:
            self.close()
            raise AttestgateError(
                ErrorCode.TPM_UNAVAILABLE, f"open {name}: rc=0x{int(exc.rc):x} ({exc})"
            ) from None

    def close(self) -> None:
        """Release the connection; idempotent. Nothing is left loaded in the TPM."""
        ectx, self._ectx = self._ectx, None
        tcti, self._tcti_obj = self._tcti_obj, None
        if ectx is not None:
            ectx.close()
        if tcti is not None:
            # ESAPI only finalizes a TCTI it loaded itself from a string.
            tcti.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- identity ------------------------------------------------------------------------

    def info(self) -> TpmInfo:
        """Manufacturer, firmware version, vendor string and active PCR banks."""
        with self._boundary("info") as ectx:
            _, cap = ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, _PT_MANUFACTURER, 8)
            tagged = cap.data.tpmProperties
            props = {int(tagged[i].property): int(tagged[i].value) for i in range(tagged.count)}
            _, pcr_cap = ectx.get_capability(TPM2_CAP.PCRS, 0, 1)
            assigned = pcr_cap.data.assignedPCR
            banks = []
            for i in range(int(assigned.count)):
                entry = assigned[i]
                if any(bytes(entry.pcrSelect)[: int(entry.sizeofSelect)]):
                    alg = entry.hash
                    banks.append(_BANK_NAMES.get(alg, f"0x{int(alg):04x}"))

        def word(pt: int) -> bytes:
            return struct.pack(">I", props.get(pt, 0))

        return TpmInfo(
            manufacturer=_printable(word(_PT_MANUFACTURER)),
            firmware_version=props.get(_PT_FIRMWARE_VERSION_1, 0) << 32
            | props.get(_PT_FIRMWARE_VERSION_2, 0),
            vendor_string=_printable(b"".join(word(_PT_VENDOR_STRING_1 + k) for k in range(4))),
            pcr_banks=tuple(banks),
        )

    def endorsement(self) -> Endorsement:
        """The EK: the first of ``ek_kinds`` with a certificate in NV.

        If none has a certificate, the first kind that can be created is used
        and ``certificate`` is None; the caller decides whether an uncertified
        EK is acceptable (allowlist). The choice is remembered for
        :meth:`activate_credential`.
        """
        with self._boundary("endorsement") as ectx, self._ek_loaded(ectx) as (_, public):
            choice = self._select_ek(ectx)
            return Endorsement(
                kind=choice.kind, public=bytes(public.marshal()), certificate=choice.certificate
            )

    def srk_public(self) -> bytes:
        """The SRK's TPM2B_PUBLIC (ECC P-256 storage primary, owner hierarchy)."""
        with self._boundary("srk_public") as ectx, self._primary(ectx, "srk") as (_, public):
            return bytes(public.marshal())

    def ak_public(self) -> bytes:
        """The AK's TPM2B_PUBLIC (restricted ECDSA-SHA256 P-256 primary, endorsement hierarchy)."""
        with self._boundary("ak_public") as ectx, self._primary(ectx, "ak") as (_, public):
            return bytes(public.marshal())

    # -- PCRs ----------------------------------------------------------------------------

    def pcr_read(self, selection: str) -> dict[int, bytes]:
        """The sha256 values of the PCRs in ``selection`` (e.g. ``"sha256:0,1,2"``)."""
        indices = parse_pcr_selection(selection)
        with self._boundary("pcr_read") as ectx:
            return self._read_pcrs(ectx, indices)

    def extend_pcr(self, index: int, data: bytes) -> None:
        """Extend sha256 PCR ``index`` with SHA-256(``data``): new = SHA-256(old || SHA-256(data)).

        At locality 0 only PCRs 0-16 and 23 can be extended.
        """
        _check_pcr_index(index)
        _check_len("data", data, 0, MAX_EVIDENCE_FIELD)
        digest = hashlib.sha256(data).digest()
        values = TPML_DIGEST_VALUES(
            [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))]
        )
        with self._boundary("extend_pcr") as ectx:
            ectx.pcr_extend(ESYS_TR.PCR0 + index, values)

    def reset_pcr(self, index: int) -> None:
        """Reset PCR ``index`` to zeros; at locality 0 only PCRs 16 and 23 allow it."""
        _check_pcr_index(index)
        with self._boundary("reset_pcr") as ectx:
            ectx.pcr_reset(ESYS_TR.PCR0 + index)

    def quote(self, qualifying_data: bytes, selection: str) -> Quote:
        """Quote the PCRs in ``selection`` with the AK over ``qualifying_data`` (≤ 64 B).

        The returned ``pcr_values`` are guaranteed to be the quoted ones: they
        are checked against the quote's pcrDigest, and the read and quote are
        retried if a PCR changed in between.
        """
        _check_len("qualifying data", qualifying_data, 0, MAX_QUALIFYING_DATA)
        indices = parse_pcr_selection(selection)
        canonical = format_pcr_selection(indices)
        with self._boundary("quote") as ectx, self._primary(ectx, "ak") as (ak, _):
            for _ in range(QUOTE_ATTEMPTS):
                values = self._read_pcrs(ectx, indices)
                attest_obj, sig = ectx.quote(
                    ak,
                    TPML_PCR_SELECTION.parse(canonical),
                    bytes(qualifying_data),
                    TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
                )
                attest = bytes(attest_obj)
                parsed, _ = TPMS_ATTEST.unmarshal(attest)
                quoted = bytes(parsed.attested.quote.pcrDigest)
                expected = hashlib.sha256(b"".join(values[i] for i in indices)).digest()
                if quoted == expected:
                    return Quote(
                        attest=attest,
                        signature=bytes(sig.marshal()),
                        selection=canonical,
                        pcr_values=tuple((i, values[i]) for i in indices),
                    )
        raise AttestgateError(
            ErrorCode.TPM_ERROR, f"quote: PCRs kept changing ({QUOTE_ATTEMPTS} attempts)"
        )

    # -- certification and signing -------------------------------------------------------

    def certify_srk(self, qualifying_data: bytes) -> Certification:
        """The AK's TPM2_Certify of the SRK over ``qualifying_data`` (≤ 64 B)."""
        _check_len("qualifying data", qualifying_data, 0, MAX_QUALIFYING_DATA)
        with (
            self._boundary("certify_srk") as ectx,
            self._primary(ectx, "srk") as (srk, _),
            self._primary(ectx, "ak") as (ak, _),
        ):
            return self._certify(ectx, srk, ak, qualifying_data)

    def certify_key(self, key: KeyBlob, qualifying_data: bytes) -> Certification:
        """The AK's TPM2_Certify of ``key`` (a blob under the SRK, e.g. the post key)."""
        _check_len("qualifying data", qualifying_data, 0, MAX_QUALIFYING_DATA)
        with (
            self._boundary("certify_key") as ectx,
            self._loaded(ectx, key) as handle,
            self._primary(ectx, "ak") as (ak, _),
        ):
            return self._certify(ectx, handle, ak, qualifying_data)

    def create_post_key(self) -> KeyBlob:
        """A new non-restricted ECDSA-SHA256 P-256 signing key under the SRK.

        The caller stores the blob; its private part only loads in this TPM.
        """
        with self._boundary("create_post_key") as ectx, self._primary(ectx, "srk") as (srk, _):
            private, public, *_ = ectx.create(srk, None, _post_key_template())
            return KeyBlob(bytes(private.marshal()), bytes(public.marshal()))

    def sign(self, key: KeyBlob, digest: bytes) -> bytes:
        """Sign a 32-byte SHA-256 ``digest`` with ``key``; returns a marshalled TPMT_SIGNATURE."""
        _check_len("digest", digest, DIGEST_LEN, DIGEST_LEN)
        with self._boundary("sign") as ectx, self._loaded(ectx, key) as handle:
            # The default validation is a NULL-hierarchy HASHCHECK ticket, which
            # TPM2_Sign accepts for keys that are not restricted.
            sig = ectx.sign(handle, bytes(digest), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
            return bytes(sig.marshal())

    # -- credential activation and the device PSK --------------------------------------------

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        """Recover the secret of a MakeCredential blob made for this TPM's EK and AK.

        ``id_object`` is a marshalled TPM2B_ID_OBJECT, ``encrypted_secret`` a
        marshalled TPM2B_ENCRYPTED_SECRET. A blob made for another EK or AK
        name raises CREDENTIAL_FAILED.
        """
        blob = _unmarshal(TPM2B_ID_OBJECT, id_object, "id object")
        secret = _unmarshal(TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted secret")
        with (
            self._boundary("activate_credential") as ectx,
            self._ek_loaded(ectx) as (ek, _),
            self._primary(ectx, "ak") as (ak, _),
            self._ek_session(ectx) as ek_auth,
        ):
            try:
                # session1 authorizes the AK (ADMIN role, password), session2 the EK.
                cred = ectx.activate_credential(
                    ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=ek_auth
                )
            except TSS2_Exception as exc:
                if self._credential_rejected(ectx, exc):
                    raise AttestgateError(
                        ErrorCode.CREDENTIAL_FAILED,
                        f"activate_credential: rc=0x{int(exc.rc):x} ({exc})",
                    ) from None
                raise
            return bytes(cred)

    def import_hmac_key(self, public: bytes, duplicate: bytes, seed: bytes) -> KeyBlob:
        """Import an HMAC key that the server wrapped to this TPM's SRK.

        ``public`` (TPM2B_PUBLIC of a keyedhash object), ``duplicate``
        (TPM2B_PRIVATE) and ``seed`` (TPM2B_ENCRYPTED_SECRET) are what
        ``tpm2_pytss.utils.wrap`` produces with no inner wrapper. The key never
        appears in this process; the caller stores the returned blob.
        """
        pub = _unmarshal(TPM2B_PUBLIC, public, "public")
        dup = _unmarshal(TPM2B_PRIVATE, duplicate, "duplicate")
        sym_seed = _unmarshal(TPM2B_ENCRYPTED_SECRET, seed, "seed")
        if pub.publicArea.type != TPM2_ALG.KEYEDHASH:
            raise AttestgateError(ErrorCode.BAD_REQUEST, "import: not a keyedhash object")
        with self._boundary("import_hmac_key") as ectx, self._primary(ectx, "srk") as (srk, _):
            private = ectx.import_(
                srk, TPM2B_DATA(), pub, dup, sym_seed, TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL)
            )
            return KeyBlob(bytes(private.marshal()), bytes(pub.marshal()))

    def hmac(self, key: KeyBlob, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` with the TPM-resident ``key`` (any length)."""
        if not isinstance(data, bytes | bytearray):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "hmac data must be bytes")
        data = bytes(data)
        with self._boundary("hmac") as ectx, self._loaded(ectx, key) as handle:
            if len(data) <= MAX_HMAC_BUFFER:
                return bytes(ectx.hmac(handle, data, TPM2_ALG.SHA256))
            seq = ectx.hmac_start(handle, b"", TPM2_ALG.SHA256)
            completed = False
            try:
                chunks = [
                    data[i : i + MAX_HMAC_BUFFER] for i in range(0, len(data), MAX_HMAC_BUFFER)
                ]
                for chunk in chunks[:-1]:
                    ectx.sequence_update(seq, chunk)
                digest, _ = ectx.sequence_complete(seq, chunks[-1], ESYS_TR.RH_NULL)
                completed = True  # SequenceComplete flushed the sequence object
                return bytes(digest)
            finally:
                if not completed:
                    self._flush(ectx, seq)

    # -- sealing -----------------------------------------------------------------------------

    def seal(self, secret: bytes, pcr_selection: str | None = None) -> KeyBlob:
        """Seal ``secret`` (1-128 B) under the SRK.

        With ``pcr_selection``, the object can only be unsealed while those
        PCRs hold the values they hold *now*; without, anyone holding the blob
        and this TPM can unseal it. Pass the same selection to :meth:`unseal`.
        """
        _check_len("secret", secret, 1, MAX_SEALED_SECRET)
        indices = parse_pcr_selection(pcr_selection) if pcr_selection is not None else None
        sensitive = TPM2B_SENSITIVE_CREATE(
            TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(bytes(secret)))
        )
        with self._boundary("seal") as ectx:
            policy = None
            if indices is not None:
                policy = _pcr_policy_digest(indices, self._read_pcrs(ectx, indices))
            with self._primary(ectx, "srk") as (srk, _):
                private, public, *_ = ectx.create(srk, sensitive, _sealed_template(policy))
                return KeyBlob(bytes(private.marshal()), bytes(public.marshal()))

    def unseal(self, blob: KeyBlob, pcr_selection: str | None = None) -> bytes:
        """Unseal a :meth:`seal` blob, passing the selection it was sealed with.

        Raises PCR_MISMATCH when the PCRs no longer hold their sealing-time
        values (the machine state changed), or when ``pcr_selection`` differs
        from the one used to seal. TPM_ERROR if the blob is not from this TPM,
        or if a PCR-bound blob is unsealed without a selection.
        """
        selection = (
            TPML_PCR_SELECTION.parse(format_pcr_selection(parse_pcr_selection(pcr_selection)))
            if pcr_selection is not None
            else None
        )
        with self._boundary("unseal") as ectx, self._loaded(ectx, blob) as handle:
            if selection is None:
                return bytes(ectx.unseal(handle))
            with self._policy_session(ectx) as sess:
                try:
                    # An empty pcrDigest makes the TPM use the current values;
                    # the mismatch then shows up at unseal as a policy failure.
                    ectx.policy_pcr(sess, b"", selection)
                    return bytes(ectx.unseal(handle, session1=sess))
                except TSS2_Exception as exc:
                    if int(exc.error) in (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED):
                        raise AttestgateError(
                            ErrorCode.PCR_MISMATCH, f"unseal: rc=0x{int(exc.rc):x} ({exc})"
                        ) from None
                    raise

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _boundary(self, op: str) -> Iterator[Any]:
        """Yield the ESAPI context; translate tpm2_pytss exceptions into AttestgateError."""
        ectx = self._ectx
        if ectx is None:
            raise AttestgateError(ErrorCode.TPM_UNAVAILABLE, f"{op}: TPM connection closed")
        try:
            yield ectx
        except TSS2_Exception as exc:
            rc = int(exc.rc)
            # TCTI-layer codes mean the transport failed, not the TPM.
            code = (
                ErrorCode.TPM_UNAVAILABLE
                if rc & _TCTI_LAYER_MASK == _TCTI_LAYER
                else ErrorCode.TPM_ERROR
            )
            raise AttestgateError(code, f"{op}: rc=0x{rc:x} ({exc})") from None
        except NoSuchIndex as exc:
            # Never str() a NoSuchIndex: its __str__ raises NameError in tpm2_pytss 3.0.
            index = int(getattr(exc, "index", 0))
            raise AttestgateError(
                ErrorCode.TPM_ERROR, f"{op}: NV index 0x{index:08x} is not defined"
            ) from None
        except IndexError:
            # tpm2_pytss raises IndexError for a buffer over a TPM2B's capacity.
            raise AttestgateError(
                ErrorCode.TPM_ERROR, f"{op}: a value exceeds a TPM buffer size"
            ) from None

    def _flush(self, ectx: Any, handle: Any) -> None:
        # Runs in `finally`: if the TPM went away, the error that got us here
        # matters more than this one.
        with contextlib.suppress(TSS2_Exception):
            ectx.flush_context(handle)

    @contextlib.contextmanager
    def _primary(self, ectx: Any, which: str) -> Iterator[tuple[Any, Any]]:
        """Create the SRK or AK, yield (handle, TPM2B_PUBLIC), flush it."""
        if which == "srk":
            template, hierarchy = _srk_template(), ESYS_TR.OWNER
        else:
            template, hierarchy = _ak_template(), ESYS_TR.ENDORSEMENT
        handle, public, *_ = ectx.create_primary(None, template, hierarchy)
        try:
            yield handle, public
        finally:
            self._flush(ectx, handle)

    @contextlib.contextmanager
    def _loaded(self, ectx: Any, blob: KeyBlob) -> Iterator[Any]:
        """Load ``blob`` under the SRK and yield its handle; the SRK is flushed before the yield."""
        if not isinstance(blob, KeyBlob):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "expected a KeyBlob")
        private = _unmarshal(TPM2B_PRIVATE, blob.private, "key blob private")
        public = _unmarshal(TPM2B_PUBLIC, blob.public, "key blob public")
        with self._primary(ectx, "srk") as (srk, _):
            try:
                handle = ectx.load(srk, private, public)
            except TSS2_Exception as exc:
                raise AttestgateError(
                    ErrorCode.TPM_ERROR,
                    f"load: blob does not load under this TPM's SRK: rc=0x{int(exc.rc):x} ({exc})",
                ) from None
        try:
            yield handle
        finally:
            self._flush(ectx, handle)

    @contextlib.contextmanager
    def _policy_session(self, ectx: Any) -> Iterator[Any]:
        # Unbound, unsalted: policy sessions here only carry policy, not secrecy.
        sess = ectx.start_auth_session(
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            yield sess
        finally:
            # ESAPI sets continueSession, so the TPM keeps the session until flushed.
            self._flush(ectx, sess)

    @contextlib.contextmanager
    def _ek_session(self, ectx: Any) -> Iterator[Any]:
        """Authorization for the EK in the USER role.

        Low-range TCG EKs have no userWithAuth and authPolicy =
        PolicySecret(TPM_RH_ENDORSEMENT); the high-range ones have userWithAuth
        and an empty auth value, so a password session works (TPM-NOTES §2).
        """
        choice = self._select_ek(ectx)
        if choice.template.publicArea.objectAttributes & TPMA_OBJECT.USERWITHAUTH:
            yield ESYS_TR.PASSWORD
            return
        with self._policy_session(ectx) as sess:
            ectx.policy_secret(ESYS_TR.ENDORSEMENT, sess, b"", b"", b"", 0)
            yield sess

    def _select_ek(self, ectx: Any) -> _EkChoice:
        if self._ek is not None:
            return self._ek
        nv = NVReadEK(ectx)
        first: _EkChoice | None = None
        for kind in self._ek_kinds:
            try:
                cert, template = create_ek_template(kind, nv)
            except ValueError:
                continue  # a high-range kind with no certificate in NV
            if cert is not None:
                self._ek = _EkChoice(kind, template, bytes(cert))
                return self._ek
            if first is None:
                first = _EkChoice(kind, template, None)
        if first is None:
            raise AttestgateError(ErrorCode.TPM_ERROR, f"endorsement: none of {self._ek_kinds}")
        self._ek = first
        return first

    @contextlib.contextmanager
    def _ek_loaded(self, ectx: Any) -> Iterator[tuple[Any, Any]]:
        """Yield (handle, TPM2B_PUBLIC) of the chosen EK, persistent if it matches, else created."""
        choice = self._select_ek(ectx)
        persistent = _EK_PERSISTENT_HANDLES.get(choice.kind)
        found = self._persistent_ek(ectx, persistent, choice) if persistent else None
        if found is not None:
            handle, public = found
            try:
                yield handle, public
            finally:
                # A persistent object is not flushed; just drop ESAPI's metadata.
                with contextlib.suppress(TSS2_Exception):
                    ectx.tr_close(handle)
            return
        handle, public, *_ = ectx.create_primary(None, choice.template, ESYS_TR.ENDORSEMENT)
        try:
            yield handle, public
        finally:
            self._flush(ectx, handle)

    def _persistent_ek(self, ectx: Any, handle_no: int, choice: _EkChoice) -> Any:
        """(handle, public) of the persistent EK if it was made from the chosen template."""
        try:
            handle = ectx.tr_from_tpmpublic(handle_no)
        except TSS2_Exception:
            return None  # nothing persisted there (0x18b); fall back to create_primary
        public, _, _ = ectx.read_public(handle)
        # Same template means: identical public area once the unique field
        # (the RSA modulus) is copied over.
        expected, _ = TPMT_PUBLIC.unmarshal(choice.template.publicArea.marshal())
        if public.publicArea.type != TPM2_ALG.RSA or expected.type != TPM2_ALG.RSA:
            ectx.tr_close(handle)
            return None
        expected.unique.rsa = bytes(public.publicArea.unique.rsa)
        if bytes(expected.marshal()) != bytes(public.publicArea.marshal()):
            ectx.tr_close(handle)
            return None
        return handle, public

    def _read_pcrs(self, ectx: Any, indices: Sequence[int]) -> dict[int, bytes]:
        """Read sha256 PCRs; TPM2_PCR_Read returns at most 8 digests, so loop.

        The update counter must stay the same across the chunks, otherwise a
        PCR changed between them and the read starts over.
        """
        for _ in range(PCR_READ_ATTEMPTS):
            values: dict[int, bytes] = {}
            counter: int | None = None
            while len(values) < len(indices):
                remaining = [i for i in indices if i not in values]
                update, sel_out, digests = ectx.pcr_read(
                    TPML_PCR_SELECTION.parse(format_pcr_selection(remaining))
                )
                got = _selected_indices(sel_out)
                if not got or len(got) != int(digests.count) or not set(got) <= set(remaining):
                    raise AttestgateError(
                        ErrorCode.TPM_ERROR,
                        "pcr_read: no or unexpected PCRs returned (is the sha256 bank active?)",
                    )
                if counter is not None and int(update) != counter:
                    break
                counter = int(update)
                for n, index in enumerate(got):
                    values[index] = bytes(digests[n])
            else:
                return values
        raise AttestgateError(
            ErrorCode.TPM_ERROR, f"pcr_read: PCRs kept changing ({PCR_READ_ATTEMPTS} attempts)"
        )

    def _credential_rejected(self, ectx: Any, exc: Any) -> bool:
        """Whether an ActivateCredential error means "not for this EK/AK" rather than a TPM fault.

        A parameter error on the blob or the secret (integrity, value, size,
        point) is the spec's answer. libtpms 0.9 (swtpm) instead answers
        TPM_RC_FAILURE when RSA-OAEP decryption of the secret fails, i.e. for
        a credential made to another RSA EK, without entering failure mode;
        a TPM that really failed reports it in GetTestResult.
        """
        if int(exc.parameter) in (1, 2):
            return True
        if int(exc.rc) != TPM2_RC.FAILURE:
            return False
        try:
            _, result = ectx.get_test_result()
        except TSS2_Exception:
            return False
        return bool(int(result) == TPM2_RC.SUCCESS)

    def _certify(self, ectx: Any, subject: Any, ak: Any, qualifying_data: bytes) -> Certification:
        attest, sig = ectx.certify(
            subject, ak, bytes(qualifying_data), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
        )
        return Certification(attest=bytes(attest), signature=bytes(sig.marshal()))
