"""The client's TPM adapter: the only package in attestgate that imports tpm2_pytss.

Open a :class:`Tpm` from a TCTI string in tpm2-tools notation and use it as a
context manager. Every method returns plain ``bytes`` (marshalled TPM
structures, exactly as the server parses them) or frozen dataclasses; every
failure is an :class:`~shared.errors.AttestgateError`:

* ``TPM_UNAVAILABLE`` - no TCTI configured, or the TPM cannot be reached;
* ``BAD_REQUEST`` - an argument is malformed (bad PCR selection, oversized
  data, a blob that does not parse); nothing was sent to the TPM;
* ``CREDENTIAL_FAILED`` - a credential was not made for this TPM's EK and AK, or a
  wrapped secret key was made for another SRK or altered;
* ``PCR_MISMATCH`` - a PCR-bound secret cannot be unsealed because the PCRs
  differ from their values at sealing time ("the machine state changed");
* ``TPM_ERROR`` - anything else the TPM refused; ``detail`` has the rc.

The package is split by responsibility:

* :mod:`client.tpm.common` - limits, result types (:class:`KeyBlob`, :class:`Quote`,
  ...), argument checks and templates; no TPM;
* :mod:`client.tpm.objects` - the ESAPI context and the objects loaded in it: the SRK
  and AK primaries are created once, key blobs loaded once, and all of them kept (at
  most three at a time, least recently used flushed first) until :meth:`Tpm.release`
  or :meth:`Tpm.close`, which flush them;
* :mod:`client.tpm.evidence` - EK, PCRs, quotes, certifications, credential activation;
* :mod:`client.tpm.keys` - HMAC key import and use, post key, sealing;
* :mod:`client.tpm.secrets` - unwrapping the key of a released secret;
* :mod:`client.tpm.saved` - the file of saved object contexts (:meth:`Tpm.keep_contexts`).

The SRK and AK are primaries, so they come out the same every time; the post key,
HMAC key and sealed secrets are :class:`KeyBlob` s that the caller stores and hands
back.

A ``Tpm`` is not thread-safe; use one per thread. On a TPM without a resource manager
(swtpm; a real TPM behind ``/dev/tpmrm0`` has one) a ``Tpm`` holds up to three object
slots until it is closed: a process that goes on waiting with it open should call
:meth:`Tpm.release` first so that other clients of the same TPM find room.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from client.tpm import evidence, keys, secrets
from client.tpm.common import (
    DEFAULT_EK_KINDS,
    MAX_HMAC_BUFFER,
    MAX_QUALIFYING_DATA,
    MAX_SEALED_SECRET,
    MAX_SELECTION_LEN,
    MAX_TCTI_LEN,
    TCTI_NAMES,
    Certification,
    Endorsement,
    KeyBlob,
    Quote,
    TpmInfo,
    format_pcr_selection,
    parse_pcr_selection,
    parse_tcti,
)
from client.tpm.objects import MAX_LOADED, TpmObjects

__all__ = [
    "DEFAULT_EK_KINDS",
    "MAX_HMAC_BUFFER",
    "MAX_LOADED",
    "MAX_QUALIFYING_DATA",
    "MAX_SEALED_SECRET",
    "MAX_SELECTION_LEN",
    "MAX_TCTI_LEN",
    "TCTI_NAMES",
    "Certification",
    "Endorsement",
    "KeyBlob",
    "Quote",
    "Tpm",
    "TpmInfo",
    "format_pcr_selection",
    "parse_pcr_selection",
    "parse_tcti",
]


class Tpm:
    """A connection to one TPM through the TCTI named by ``tcti``.

    ``Tpm("swtpm:host=127.0.0.1,port=2321")``, ``Tpm("device:/dev/tpmrm0")``.
    Use as a context manager, or call :meth:`close`. Opening raises
    TPM_UNAVAILABLE when ``tcti`` is missing, unsupported or unreachable.
    ``ek_kinds`` sets which EK templates :meth:`endorsement` tries, in order;
    ``max_loaded`` how many transient objects it keeps loaded at most.
    """

    def __init__(self, tcti: str | None, *, ek_kinds: Sequence[str] = DEFAULT_EK_KINDS,
                 max_loaded: int = MAX_LOADED) -> None:
        self._objs = TpmObjects(tcti, ek_kinds=ek_kinds, max_loaded=max_loaded)
        self._unsealed: dict[tuple[bytes, bytes, str | None], bytes] = {}

    def close(self) -> None:
        """Flush every object loaded, forget unsealed secrets, release the connection.

        Idempotent. Nothing this adapter loaded is left in the TPM.
        """
        self._unsealed.clear()
        self._objs.close()

    def release(self) -> None:
        """Flush the objects kept loaded (they are loaded again on the next use)."""
        self._objs.release()

    def keep_contexts(self, path: os.PathLike[str] | str) -> None:
        """Carry the TPM contexts of the SRK, the AK and the key blobs used here to later
        processes in the file ``path`` (in the client's home; written at :meth:`close`,
        0600): a new process ContextLoads them (~0.15 ms each on swtpm) instead of
        CreatePrimary and Load. A saved context is used only if the TPM confirms it is
        the expected object; one that does not load (another TPM, a TPM Reset or Clear
        since, a damaged or substituted file) is ignored silently and the file rewritten.
        The PCR values last read go there too (used only when they hash to a quote's
        pcrDigest). See :mod:`client.tpm.saved`.
        """
        self._objs.keep_contexts(Path(path))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- identity ---------------------------------------------------------------------------

    def info(self) -> TpmInfo:
        """Manufacturer, firmware version, vendor string and active PCR banks."""
        return evidence.info(self._objs)

    def endorsement(self) -> Endorsement:
        """The EK: the first of ``ek_kinds`` with a certificate in NV.

        If none has a certificate, the first kind that can be created is used
        and ``certificate`` is None; the caller decides whether an uncertified
        EK is acceptable (allowlist). The choice is remembered for
        :meth:`activate_credential`.
        """
        return evidence.endorsement(self._objs)

    def srk_public(self) -> bytes:
        """The SRK's TPM2B_PUBLIC (ECC P-256 storage primary, owner hierarchy)."""
        return evidence.primary_public(self._objs, "srk")

    def ak_public(self) -> bytes:
        """The AK's TPM2B_PUBLIC (restricted ECDSA-SHA256 P-256 primary, endorsement hierarchy)."""
        return evidence.primary_public(self._objs, "ak")

    # -- PCRs -------------------------------------------------------------------------------

    def pcr_read(self, selection: str) -> dict[int, bytes]:
        """The sha256 values of the PCRs in ``selection`` (e.g. ``"sha256:0,1,2"``)."""
        return evidence.pcr_read(self._objs, selection)

    def extend_pcr(self, index: int, data: bytes) -> None:
        """Extend sha256 PCR ``index`` with SHA-256(``data``): new = SHA-256(old || SHA-256(data)).

        At locality 0 only PCRs 0-16 and 23 can be extended.
        """
        evidence.extend_pcr(self._objs, index, data)

    def reset_pcr(self, index: int) -> None:
        """Reset PCR ``index`` to zeros; at locality 0 only PCRs 16 and 23 allow it."""
        evidence.reset_pcr(self._objs, index)

    def quote(self, qualifying_data: bytes, selection: str) -> Quote:
        """Quote the PCRs in ``selection`` with the AK over ``qualifying_data`` (≤ 64 B).

        The returned ``pcr_values`` are guaranteed to be the quoted ones: they
        are checked against the quote's pcrDigest, and the read and quote are
        retried if a PCR changed in between.
        """
        return evidence.quote(self._objs, qualifying_data, selection)

    # -- certification and signing ----------------------------------------------------------

    def certify_srk(self, qualifying_data: bytes) -> Certification:
        """The AK's TPM2_Certify of the SRK over ``qualifying_data`` (≤ 64 B)."""
        return evidence.certify_srk(self._objs, qualifying_data)

    def certify_key(self, key: KeyBlob, qualifying_data: bytes) -> Certification:
        """The AK's TPM2_Certify of ``key`` (a blob under the SRK, e.g. the post key)."""
        return evidence.certify_key(self._objs, key, qualifying_data)

    def create_post_key(self) -> KeyBlob:
        """A new non-restricted ECDSA-SHA256 P-256 signing key under the SRK.

        The caller stores the blob; its private part only loads in this TPM.
        """
        return keys.create_post_key(self._objs)

    def sign(self, key: KeyBlob, digest: bytes) -> bytes:
        """Sign a 32-byte SHA-256 ``digest`` with ``key``; returns a marshalled TPMT_SIGNATURE."""
        return keys.sign(self._objs, key, digest)

    # -- credential activation and the device PSK -------------------------------------------

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes:
        """Recover the secret of a MakeCredential blob made for this TPM's EK and AK.

        ``id_object`` is a marshalled TPM2B_ID_OBJECT, ``encrypted_secret`` a
        marshalled TPM2B_ENCRYPTED_SECRET. A blob made for another EK or AK
        name raises CREDENTIAL_FAILED.
        """
        return evidence.activate_credential(self._objs, id_object, encrypted_secret)

    def import_hmac_key(self, public: bytes, duplicate: bytes, seed: bytes) -> KeyBlob:
        """Import an HMAC key that the server wrapped to this TPM's SRK.

        ``public`` (TPM2B_PUBLIC of a keyedhash object), ``duplicate``
        (TPM2B_PRIVATE) and ``seed`` (TPM2B_ENCRYPTED_SECRET) are what
        ``tpm2_pytss.utils.wrap`` produces with no inner wrapper. The key never
        appears in this process; the caller stores the returned blob.
        """
        return keys.import_hmac_key(self._objs, public, duplicate, seed)

    def hmac(self, key: KeyBlob, data: bytes) -> bytes:
        """HMAC-SHA256 of ``data`` with the TPM-resident ``key`` (any length)."""
        return keys.hmac(self._objs, key, data)

    def unwrap_secret_key(self, public: bytes, duplicate: bytes, seed: bytes) -> bytes:
        """Import a sealed-data object the server wrapped to this TPM's SRK and unseal it.

        Same inputs as :meth:`import_hmac_key`; returns the object's data (a released
        secret's AES key). CREDENTIAL_FAILED when the blob was made for another TPM or
        altered; the imported object is flushed at once.
        """
        return secrets.unwrap(self._objs, public, duplicate, seed)

    def unwrap_bound_secret_key(self, public: bytes, duplicate: bytes, seed: bytes, *,
                                selection: str, policy_public: bytes, policy_ref: bytes,
                                policies: Sequence[tuple[bytes, bytes]]) -> bytes:
        """:meth:`unwrap_secret_key` for a PCR-bound object (PolicyAuthorize): unseals
        only while the PCRs in ``selection`` match a state whose PolicyPCR digest the
        server signed (``policies``: (approvedPolicy, TPMT_SIGNATURE) pairs).
        PCR_MISMATCH when none matches."""
        return secrets.unwrap_bound(self._objs, public, duplicate, seed, selection,
                                    policy_public, policy_ref, policies)

    # -- sealing ----------------------------------------------------------------------------

    def seal(self, secret: bytes, pcr_selection: str | None = None) -> KeyBlob:
        """Seal ``secret`` (1-128 B) under the SRK.

        With ``pcr_selection``, the object can only be unsealed while those
        PCRs hold the values they hold *now*; without, anyone holding the blob
        and this TPM can unseal it. Pass the same selection to :meth:`unseal`.
        """
        return keys.seal(self._objs, secret, pcr_selection)

    def unseal(self, blob: KeyBlob, pcr_selection: str | None = None, *,
               reuse: bool = False) -> bytes:
        """Unseal a :meth:`seal` blob, passing the selection it was sealed with.

        Raises PCR_MISMATCH when the PCRs no longer hold their sealing-time
        values (the machine state changed), or when ``pcr_selection`` differs
        from the one used to seal. TPM_ERROR if the blob is not from this TPM,
        or if a PCR-bound blob is unsealed without a selection.

        With ``reuse``, a secret this ``Tpm`` already unsealed is returned from
        memory (until :meth:`close`) instead of asking the TPM again: the caller
        accepts that a PCR change after the first unseal is not noticed here (the
        server's quote check still sees it).
        """
        memo = (blob.private, blob.public, pcr_selection) if isinstance(blob, KeyBlob) else None
        if reuse and memo is not None and memo in self._unsealed:
            return self._unsealed[memo]
        secret = keys.unseal(self._objs, blob, pcr_selection)
        if reuse and memo is not None:
            self._unsealed[memo] = secret
        return secret
