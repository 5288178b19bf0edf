"""Quote verification: attestgate's verifier against Keylime's ``tpm_util.checkquote``.

Both check the same real swtpm quotes (ECC P-256 AK, sha256 PCRs) with the same
nonce. Keylime takes the AK as PEM, the TPMS_ATTEST and TPMT_SIGNATURE as marshalled
(as ``tpm2_quote -m``/``-s`` write them) and the PCR values in tpm2-tools' ``-f pcrs``
layout, which :func:`tools_pcr_blob` writes (Keylime hashes those values and compares
them with the quoted digest, so a wrong layout fails the check, it cannot pass it).

Keylime comes from PyPI (``pip install --no-deps keylime``; it needs cryptography and
PyYAML); when it is missing, :func:`load_checkquote` says why and the row is skipped.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from bench._common import paired, rate
from shared.errors import AttestgateError, ErrorCode
from shared.tpm.keycache import KeyCache, parse_verifying_key
from shared.tpm.pcrs import PcrSelection
from shared.tpm.quote import verify_quote

_TPM_ALG_SHA256 = 0x000B
_PCR_SELECT_SLOTS = 16  # TPML_PCR_SELECTION in memory: HASH_COUNT entries
_DIGESTS_PER_LIST = 8  # TPML_DIGEST in memory
_TPMU_HA = 64


@dataclass(frozen=True)
class Sample:
    attest: bytes
    signature: bytes
    nonce: bytes
    pcrs: dict[int, bytes]


def load_checkquote() -> tuple[Callable[..., Any] | None, str]:
    """(Keylime's checkquote, "") or (None, why it is not available)."""
    try:
        logging.disable(logging.WARNING)  # keylime warns at import about missing config files
        with contextlib.redirect_stderr(io.StringIO()):
            from keylime.tpm import tpm_util  # noqa: PLC0415 (optional dependency)
    except Exception as exc:  # any import failure means "not installed here"
        return None, f"keylime not importable ({type(exc).__name__}: {exc}); " \
                     "pip install --no-deps keylime cryptography PyYAML"
    finally:
        logging.disable(logging.NOTSET)
    return tpm_util.checkquote, ""


def tools_pcr_blob(pcrs: dict[int, bytes]) -> bytes:
    """PCR values in tpm2-tools' ``tpm2_quote -f pcrs`` layout (little endian, as in memory).

    A TPML_PCR_SELECTION (count + 16 slots of hash, sizeofSelect, 3 bytes, padding),
    then the number of TPML_DIGESTs and each (count + 8 TPM2B_DIGEST of 64-byte bodies).
    """
    indices = sorted(pcrs)
    bitmap = 0
    for i in indices:
        bitmap |= 1 << i
    out = struct.pack("<I", 1)
    out += struct.pack("<HB", _TPM_ALG_SHA256, 3) + bitmap.to_bytes(3, "little") + b"\0\0"
    out += b"\0" * 8 * (_PCR_SELECT_SLOTS - 1)
    lists = [indices[i:i + _DIGESTS_PER_LIST] for i in range(0, len(indices), _DIGESTS_PER_LIST)]
    out += struct.pack("<I", len(lists))
    for chunk in lists:
        out += struct.pack("<I", len(chunk))
        for n in range(_DIGESTS_PER_LIST):
            value = pcrs[chunk[n]] if n < len(chunk) else b""
            out += struct.pack("<H", len(value)) + value.ljust(_TPMU_HA, b"\0")
    return out


def compare(ak_public: bytes, selection: str, samples: Sequence[Sample], seconds: float,
            checkquote: Callable[..., Any]) -> tuple[float, float, float]:
    """(attestgate verifications/s with a warm key cache, the same parsing the AK every time,
    Keylime checkquotes/s), alternating short rounds."""
    sel = PcrSelection.parse(selection)
    cache = KeyCache()
    ak_pem = parse_verifying_key(ak_public, code=ErrorCode.AK_INVALID).crypto.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    blobs = [(s, tools_pcr_blob(s.pcrs)) for s in samples]
    # Both must accept every sample before anything is timed.
    for s, blob in blobs:
        verify_quote(ak_public, s.attest, s.signature, qualifying_data=s.nonce, selection=sel,
                     pcr_values=s.pcrs)
        checkquote(ak_pem, s.nonce, s.signature, s.attest, blob, "sha256")
    counter = [0]

    def next_sample() -> tuple[Sample, bytes]:
        counter[0] += 1
        return blobs[counter[0] % len(blobs)]

    def ours_cached() -> None:
        s, _ = next_sample()
        ak = cache.get("dev", "ak", ak_public, code=ErrorCode.AK_INVALID)
        verify_quote(ak, s.attest, s.signature, qualifying_data=s.nonce, selection=sel,
                     pcr_values=s.pcrs)

    def ours_cold() -> None:
        s, _ = next_sample()
        verify_quote(ak_public, s.attest, s.signature, qualifying_data=s.nonce, selection=sel,
                     pcr_values=s.pcrs)

    def keylime() -> None:
        s, blob = next_sample()
        checkquote(ak_pem, s.nonce, s.signature, s.attest, blob, "sha256")

    try:
        ours_cached()
    except (TypeError, AttestgateError):  # an older verifier: it parses the AK every time
        ours_cached = ours_cold
    base, cached = paired(lambda t: rate(keylime, t), lambda t: rate(ours_cached, t), seconds)
    _, cold = paired(lambda t: rate(keylime, t), lambda t: rate(ours_cold, t), seconds / 2)
    return cached, cold, base
