"""TPM objects and their lifetime: the ESAPI context, the primaries, the loaded blobs.

One :class:`TpmObjects` per :class:`~client.tpm.Tpm`. It keeps what it loads loaded for
the life of the process instead of re-deriving it per call (profiled: CreatePrimary,
Load and FlushContext were 10 of the 14 TPM commands of an attested connect):

* the SRK and the AK are primaries: created once, kept while there is room; an SRK
  persisted at 0x81000001 from our template is used instead of creating one
  (:meth:`TpmObjects._persistent_srk`), counted as holding a slot, never flushed;
* key blobs (the device HMAC key, the post key) are loaded under the SRK once and
  kept; a blob that is used once (a sealed secret) is flushed right after use;
* at most ``max_loaded`` transient objects are held at a time (swtpm and many real
  TPMs have 3 slots, TPM-NOTES §0, and no resource manager cleans up after us):
  before anything new is loaded, the least recently used object that the running
  operation does not need is flushed. The SRK is evicted like any other object: its
  children stay loaded without it;
* should the TPM still answer TPM_RC_OBJECT_MEMORY (another client of a TPM without
  resource manager holds slots), everything not in use is flushed and the command
  retried once;
* sessions are never kept: each is flushed at the end of the operation that started
  it (ESAPI sets continueSession);
* :meth:`release` flushes everything (a process that will wait a long time, e.g.
  ``attestgate follow``, calls it so that other clients of the same TPM find free
  slots); :meth:`close` releases and closes the context;
* with :meth:`keep_contexts`, what is created or loaded is also ContextSaved into a file
  of the client's home, and the next process ContextLoads it instead (checked: a blob or
  the SRK by ReadPublic, the AK by the qualifiedSigner of what it signs); anything that
  does not load or does not match falls back to the usual path (client/tpm/saved.py).

Every public operation runs inside :meth:`operation`, which translates tpm2_pytss
exceptions into AttestgateError (TPM_UNAVAILABLE for the transport, TPM_ERROR for the
TPM) and unpins the objects the operation used. Not thread-safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPM2_SE, TPMA_OBJECT
from tpm2_pytss.TCTILdr import TCTILdr
from tpm2_pytss.types import (
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPMS_CONTEXT,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from client.tpm import rawcmd
from client.tpm.common import (
    AK_TEMPLATE,
    DEFAULT_EK_KINDS,
    EK_PERSISTENT_HANDLES,
    PCR_READ_ATTEMPTS,
    SRK_TEMPLATE,
    TCTI_LAYER,
    TCTI_LAYER_MASK,
    EkChoice,
    KeyBlob,
    ak_template,
    digest_list,
    matches_ecc_template,
    parse_tcti,
    pytss_selection,
    sha256_indices,
    srk_template,
    unmarshal_strict,
)
from client.tpm.saved import (
    KIND_CONTEXT,
    KIND_NAME,
    KIND_PCRS,
    PCR_LEN,
    SavedContexts,
    blob_id,
    pcrs_id,
    primary_id,
)
from shared.errors import AttestgateError, ErrorCode

# Where TCG provisioning puts the SRK (TPM v2.0 Provisioning Guidance, persistent handles).
SRK_PERSISTENT_HANDLE: Final = 0x81000001
# Transient object slots this adapter fills at most (TPM2_PT_HR_TRANSIENT_MIN is 3 on
# swtpm and the spec's minimum; a resource manager gives each client at least as many).
MAX_LOADED: Final = 3

_Key = tuple[str, ...]  # ("srk",), ("ak",) or ("blob", private hex, public hex)
_SRK: Final[_Key] = ("srk",)
_AK: Final[_Key] = ("ak",)
# The hierarchy each primary lives in, as the handle its qualified name starts from.
_HIERARCHY: Final = {"srk": 0x40000001, "ak": 0x4000000B}  # TPM_RH_OWNER, TPM_RH_ENDORSEMENT
_SHA256_NAME_ALG: Final = struct.pack(">H", 0x000B)


class TpmObjects:
    """The ESAPI context of one TPM and the objects loaded in it (see the module doc)."""

    def __init__(self, tcti: str | None, *, ek_kinds: Sequence[str] = DEFAULT_EK_KINDS,
                 max_loaded: int = MAX_LOADED) -> None:
        name, config = parse_tcti(tcti)
        unknown = [k for k in ek_kinds if k not in DEFAULT_EK_KINDS]
        if unknown or not ek_kinds:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"unknown EK kinds {unknown}")
        if max_loaded < 2:  # a blob needs its parent loaded next to it
            raise AttestgateError(ErrorCode.BAD_REQUEST, "max_loaded must be at least 2")
        self.ek_kinds = tuple(ek_kinds)
        self.max_loaded = max_loaded
        self._ek: EkChoice | None = None
        self._loaded: OrderedDict[_Key, Any] = OrderedDict()  # least recently used first
        self._publics: dict[_Key, Any] = {}  # TPM2B_PUBLIC of the primaries (None: not read)
        self._pinned: set[_Key] = set()  # used by the running operation
        # The SRK persisted at SRK_PERSISTENT_HANDLE, once found to be ours (see
        # _persistent_srk); None: not looked for yet since the last release.
        self._srk_found: tuple[Any, Any] | None = None
        self._srk_looked = False
        self._extra = 0  # transient objects of the running operation outside the cache
        # Contexts saved in the client's home (see keep_contexts), and the PCR values
        # last read per selection (a quote whose pcrDigest they match needs no PCR_Read).
        self._saved: SavedContexts | None = None
        self._ak_name: bytes | None = None  # saved with the AK's context (confirm_signer)
        self._pcrs: dict[tuple[int, ...], dict[int, bytes]] = {}
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

    # -- lifetime ---------------------------------------------------------------------------

    def release(self) -> None:
        """Flush every object this adapter holds; they are loaded again when needed."""
        ectx = self._ectx
        while self._loaded:
            key, handle = self._loaded.popitem(last=False)
            if ectx is not None and not self._is_persistent(key):
                self._flush(ectx, handle)
        self._publics.clear()
        self._pinned.clear()
        found, self._srk_found, self._srk_looked = self._srk_found, None, False
        if found is not None and ectx is not None:
            # A persistent object is never flushed; only ESAPI's metadata is dropped.
            with contextlib.suppress(TSS2_Exception):
                ectx.tr_close(found[0])

    def close(self) -> None:
        """Write the saved contexts if they changed, flush what is loaded and release the
        connection; idempotent."""
        saved, self._saved = self._saved, None
        if saved is not None:
            saved.write()
        self.release()
        ectx, self._ectx = self._ectx, None
        tcti, self._tcti_obj = self._tcti_obj, None
        if ectx is not None:
            ectx.close()
        if tcti is not None:
            # ESAPI only finalizes a TCTI it loaded itself from a string.
            tcti.close()

    @property
    def transport(self) -> Any:
        """The TCTI, for commands sent as bytes (client/tpm/rawcmd.py) between ESAPI calls."""
        if self._tcti_obj is None:
            raise AttestgateError(ErrorCode.TPM_UNAVAILABLE, "TPM connection closed")
        return self._tcti_obj

    def raw(self, cmd: bytes) -> bytes:
        """Send a command marshalled by client/tpm/rawcmd.py and return its answer's
        parameters; a TPM error (or an answer that is not well-formed: rc 0x101) is raised
        as the TSS2_Exception ESAPI would raise, so every caller's handling stays ESAPI's."""
        try:
            return rawcmd.call(self.transport, cmd)
        except rawcmd.TpmResponseCode as exc:
            raise TSS2_Exception(exc.rc) from None

    @staticmethod
    def tpm_handle(ectx: Any, handle: Any) -> int:
        """The TPM's handle of an object ESAPI tracks (for :meth:`raw` commands)."""
        return int(ectx.tr_get_tpm_handle(handle))

    def read_public(self, ectx: Any, handle: Any) -> tuple[bytes, bytes, bytes]:
        """TPM2_ReadPublic as bytes: (marshalled TPM2B_PUBLIC, name, qualified name).
        ESAPI's wrapper built three objects per call (~0.35 ms of profiled CPU)."""
        return rawcmd.parse_read_public(self.raw(rawcmd.read_public(self.tpm_handle(ectx, handle))))

    @property
    def loaded(self) -> int:
        """How many transient objects this adapter holds now."""
        return len(self._loaded)

    # -- operations -------------------------------------------------------------------------

    @contextlib.contextmanager
    def operation(self, op: str) -> Iterator[Any]:
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
                if rc & TCTI_LAYER_MASK == TCTI_LAYER
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
        finally:
            self._pinned.clear()
            self._extra = 0

    def flush(self, ectx: Any, handle: Any) -> None:
        """Flush a transient object or session that is not in the cache."""
        self._flush(ectx, handle)

    def _flush(self, ectx: Any, handle: Any) -> None:
        # Runs in `finally`: if the TPM went away, the error that got us here
        # matters more than this one.
        with contextlib.suppress(TSS2_Exception):
            ectx.flush_context(handle)

    def _make_room(self, ectx: Any, needed: int = 1) -> None:
        """Flush least recently used, unpinned objects until ``needed`` more fit."""
        for key in list(self._loaded):
            if len(self._loaded) + self._extra + needed <= self.max_loaded:
                return
            if key not in self._pinned:
                self._evict(ectx, key)

    def _evict(self, ectx: Any, key: _Key) -> None:
        handle = self._loaded.pop(key)
        if self._is_persistent(key):
            return  # it stays in the TPM; only its slot (see primary) is given back
        self._publics.pop(key, None)
        self._flush(ectx, handle)

    def _is_persistent(self, key: _Key) -> bool:
        return key == _SRK and self._srk_found is not None

    def with_room(self, ectx: Any, create: Callable[[], Any], needed: int = 1) -> Any:
        """Run a command that needs ``needed`` free object slots; retry once on 0x902.

        Loading and creating need one; so do TPM2_Create and TPM2_Import, which
        build the new object in a free slot before returning its blob.
        """
        self._make_room(ectx, needed)
        try:
            return create()
        except TSS2_Exception as exc:
            if int(exc.error) != TPM2_RC.OBJECT_MEMORY:
                raise
        # Someone else (another client of a TPM without resource manager) holds slots:
        # give back everything the running operation does not need, then try once more.
        for key in [k for k in self._loaded if k not in self._pinned]:
            self._evict(ectx, key)
        return create()

    def _use(self, key: _Key) -> Any:
        handle = self._loaded.get(key)
        if handle is not None:
            self._loaded.move_to_end(key)
            self._pinned.add(key)
        return handle

    def _keep(self, key: _Key, handle: Any) -> None:
        self._loaded[key] = handle
        self._pinned.add(key)

    def primary(self, ectx: Any, which: str) -> tuple[Any, Any]:
        """(handle, TPM2B_PUBLIC) of the SRK (``"srk"``) or the AK (``"ak"``), kept loaded.

        Both are primaries from fixed templates, so they come out the same every time.
        In order: already loaded; a saved context (see :meth:`keep_contexts`) that the TPM
        confirms is that primary; the persisted SRK; CreatePrimary.
        """
        key = _SRK if which == "srk" else _AK
        handle = self._use(key)
        if handle is not None:
            return handle, self._publics[key]
        if which == "srk":
            marshalled, hierarchy = SRK_TEMPLATE, ESYS_TR.OWNER
        else:
            marshalled, hierarchy = AK_TEMPLATE, ESYS_TR.ENDORSEMENT
        ident = primary_id(which, marshalled)
        if which == "ak":
            # Not asked with ReadPublic: the AK only signs, and the qualifiedSigner of what
            # it signed says what it is (confirm_signer), for free.
            saved_name = self._saved.get(KIND_NAME, ident) if self._saved else None
            restored = self._restore(ectx, ident, None) if saved_name else None
            self._ak_name = saved_name if restored else None
        else:
            restored = self._restore(ectx, ident, lambda public, name, qualified: (
                matches_ecc_template(public, marshalled)
                and qualified == _qualified_name(_HIERARCHY[which], name)))
        if restored is None and which == "srk":
            restored = self._persistent_srk(ectx)
            if restored is not None:
                # A command naming a persistent object has the TPM load it into a transient
                # slot for the command's duration: it is counted as loaded, like the
                # created SRK it replaces, but never flushed.
                self._make_room(ectx, 1)
        if restored is None:
            template = srk_template() if which == "srk" else ak_template()
            handle, public, *_ = self.with_room(
                ectx, lambda: ectx.create_primary(None, template, hierarchy))
            if self._remember(ectx, ident, handle) and which == "ak" and self._saved:
                self._saved.put(KIND_NAME, ident, _name(public))
        else:
            handle, public = restored
            if isinstance(public, bytes):  # read back by _restore: the SRK's, checked
                public = TPM2B_PUBLIC.unmarshal(public)[0]
        self._keep(key, handle)
        self._publics[key] = public
        return handle, public

    def primary_public(self, ectx: Any, which: str) -> Any:
        """The TPM2B_PUBLIC of the SRK or the AK (ReadPublic for an AK restored from a saved
        context, which must then be our template's primary in the endorsement hierarchy)."""
        handle, public = self.primary(ectx, which)
        if public is None:
            raw, name, qualified = self.read_public(ectx, handle)
            if matches_ecc_template(raw, AK_TEMPLATE) and qualified == _qualified_name(
                    _HIERARCHY["ak"], name):
                public = TPM2B_PUBLIC.unmarshal(raw)[0]
            else:
                self.distrust_ak(ectx)
                handle, public = self.primary(ectx, which)
            self._publics[_AK] = public
        return public

    def confirm_signer(self, ectx: Any, qualified_signer: bytes) -> bool:
        """Whether the AK that just signed (``qualified_signer``: the TPMS_ATTEST's) is ours.

        Always true for an AK created here. One restored from a saved context must be a
        primary in the endorsement hierarchy (its qualified name says so; its name is the
        one saved with it): made from another object's context, it is flushed, every
        saved context dropped, and False returned: the caller gets the AK again (created
        now) and signs again.
        """
        if self._publics.get(_AK, False) is not None:
            return True
        # The name saved with the context, not ESAPI's (Esys_TR_GetName hashes the public
        # area through OpenSSL: ~0.6 ms, more than asking the TPM).
        if self._ak_name and qualified_signer == _qualified_name(
                _HIERARCHY["ak"], self._ak_name):
            return True
        self.distrust_ak(ectx)
        return False

    def distrust_ak(self, ectx: Any) -> bool:
        """Flush an AK restored from a saved context and not confirmed yet, and drop the
        saved contexts; False if there is none (then an AK failure is the TPM's)."""
        if _AK not in self._loaded or self._publics.get(_AK, False) is not None:
            return False
        self._evict(ectx, _AK)
        if self._saved is not None:
            self._saved.drop_contexts()
        return True

    def blob(self, ectx: Any, blob: KeyBlob) -> Any:
        """The handle of ``blob`` loaded under the SRK, kept loaded for later calls."""
        key = self._blob_key(blob)
        handle = self._use(key)
        if handle is None:
            handle = self._restore_or_load(ectx, blob)
            self._keep(key, handle)
        return handle

    @contextlib.contextmanager
    def blob_once(self, ectx: Any, blob: KeyBlob) -> Iterator[Any]:
        """``blob`` loaded under the SRK for this operation only, flushed after."""
        handle = self._use(self._blob_key(blob))
        if handle is not None:  # someone already keeps it loaded
            yield handle
            return
        handle = self._restore_or_load(ectx, blob)
        self._extra += 1
        try:
            yield handle
        finally:
            self._extra -= 1
            self._flush(ectx, handle)

    def _restore_or_load(self, ectx: Any, blob: KeyBlob) -> Any:
        ident = blob_id(blob.private, blob.public)
        restored = self._restore(
            ectx, ident, lambda public, _name, _qualified: public == blob.public)
        if restored is not None:
            return restored[0]
        handle = self._load(ectx, blob)
        self._remember(ectx, ident, handle)
        return handle

    # -- contexts saved across processes ----------------------------------------------------

    def keep_contexts(self, path: Path) -> None:
        """Carry the contexts of the SRK, the AK and the key blobs across processes in the
        file ``path`` (:mod:`client.tpm.saved`).

        From now on an object that is not loaded is ContextLoaded from the file when it
        holds one and the TPM confirms that the loaded object is the one expected
        (ReadPublic: a blob's very public area, the SRK our template's primary in the owner
        hierarchy; the AK: the qualifiedSigner of its first signature, see
        :meth:`confirm_signer`); otherwise it is created or loaded as before and its
        context saved.
        Any failure to load a saved context (another TPM, a TPM Reset or Clear since,
        a damaged file) drops them all and falls back silently. The file is written
        (0600) at :meth:`close` if anything changed.
        """
        if self._saved is not None and self._saved.path == path:
            return
        if self._saved is not None:
            self._saved.write()
        self._saved = SavedContexts(path)

    def _restore(self, ectx: Any, ident: bytes,
                 fits: Callable[[bytes, bytes, bytes], bool] | None
                 ) -> tuple[Any, bytes | None] | None:
        """(handle, marshalled TPM2B_PUBLIC) of the saved context ``ident``, ContextLoaded, if
        the TPM says (ReadPublic: public, name, qualified name) that it ``fits``; else None, with
        every saved context dropped and nothing left loaded. With ``fits`` None, the TPM
        is not asked and the public is None: the caller checks the object otherwise."""
        saved = self._saved
        data = saved.get(KIND_CONTEXT, ident) if saved is not None else None
        if saved is None or data is None:
            return None
        handle = None
        try:
            context, used = TPMS_CONTEXT.unmarshal(data)
            if used == len(data):
                handle = self.with_room(ectx, lambda: ectx.context_load(context))
                if fits is None:
                    return handle, None
                public, name, qualified = self.read_public(ectx, handle)
                if fits(public, name, qualified):
                    return handle, public
        except TSS2_Exception as exc:
            if int(exc.rc) & TCTI_LAYER_MASK == TCTI_LAYER or (
                    int(exc.error) == TPM2_RC.OBJECT_MEMORY):
                if handle is not None:
                    self._flush(ectx, handle)
                # The TPM is gone, or its slots are held by another client: the usual path
                # would fail the same way, and the saved contexts are not at fault.
                raise
        except (ValueError, TypeError, IndexError):
            pass  # ESAPI's part of the context does not parse
        if handle is not None:
            self._flush(ectx, handle)
        saved.drop_contexts()
        return None

    def _remember(self, ectx: Any, ident: bytes, handle: Any) -> bool:
        """Save the context of ``handle`` (just created or loaded) for later processes."""
        if self._saved is None:
            return False
        try:
            context = ectx.context_save(handle)
        except TSS2_Exception as exc:
            if int(exc.rc) & TCTI_LAYER_MASK == TCTI_LAYER:
                raise
            return False  # not saved: the next process makes it the usual way
        self._saved.put(KIND_CONTEXT, ident, bytes(context.marshal()))
        return True

    def kept_pcrs(self, indices: Sequence[int]) -> dict[int, bytes] | None:
        """The sha256 PCR values last read for ``indices`` (this process or a saved file)."""
        values = self._pcrs.get(tuple(indices))
        if values is not None or self._saved is None:
            return values
        data = self._saved.get(KIND_PCRS, pcrs_id(indices))
        if data is None or len(data) != PCR_LEN * len(indices):
            return None
        values = {i: data[n * PCR_LEN:(n + 1) * PCR_LEN] for n, i in enumerate(indices)}
        self._pcrs[tuple(indices)] = values
        return values

    def keep_pcrs(self, indices: Sequence[int], values: dict[int, bytes]) -> None:
        self._pcrs[tuple(indices)] = values
        if self._saved is not None:
            self._saved.put(KIND_PCRS, pcrs_id(indices), b"".join(values[i] for i in indices))

    @contextlib.contextmanager
    def transient(self, ectx: Any, create: Callable[[], Any]) -> Iterator[Any]:
        """An object outside the cache (a transient EK, a sequence) for this operation."""
        result = self.with_room(ectx, create)
        self._extra += 1
        try:
            yield result
        finally:
            self._extra -= 1

    @staticmethod
    def _blob_key(blob: KeyBlob) -> _Key:
        if not isinstance(blob, KeyBlob):
            raise AttestgateError(ErrorCode.BAD_REQUEST, "expected a KeyBlob")
        return ("blob", blob.private.hex(), blob.public.hex())

    def _load(self, ectx: Any, blob: KeyBlob) -> Any:
        private = unmarshal_strict(TPM2B_PRIVATE, blob.private, "key blob private")
        public = unmarshal_strict(TPM2B_PUBLIC, blob.public, "key blob public")
        srk, _ = self.primary(ectx, "srk")
        try:
            return self.with_room(ectx, lambda: ectx.load(srk, private, public))
        except TSS2_Exception as exc:
            if int(exc.rc) & TCTI_LAYER_MASK == TCTI_LAYER:
                raise  # the TPM went away (TPM_UNAVAILABLE), not "another TPM's blob"
            raise AttestgateError(
                ErrorCode.TPM_ERROR,
                f"load: blob does not load under this TPM's SRK: rc=0x{int(exc.rc):x} ({exc})",
            ) from None

    def _persistent_srk(self, ectx: Any) -> tuple[Any, Any] | None:
        """(handle, TPM2B_PUBLIC) of the SRK persisted at SRK_PERSISTENT_HANDLE (TCG TPM v2.0
        Provisioning Guidance; e.g. systemd-tpm2-setup puts the same ECC P-256 SRK there), if
        its public area is the one our template gives: then it is the very key CreatePrimary
        would derive (same seed, same template) and blobs made under either load under both.
        Looked for once per release; anything else there is ignored, never changed."""
        if self._srk_looked:
            return self._srk_found
        self._srk_looked = True
        try:
            handle = ectx.tr_from_tpmpublic(SRK_PERSISTENT_HANDLE)
        except TSS2_Exception:
            return None  # nothing persisted there (0x18b): CreatePrimary as before
        try:
            public, _, _ = ectx.read_public(handle)
        except TSS2_Exception:
            ectx.tr_close(handle)
            return None
        if not matches_ecc_template(bytes(public.marshal()), SRK_TEMPLATE):
            ectx.tr_close(handle)
            return None
        self._srk_found = (handle, public)
        return self._srk_found

    # -- sessions ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def policy_session(self, ectx: Any) -> Iterator[Any]:
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

    # -- endorsement key --------------------------------------------------------------------

    @contextlib.contextmanager
    def ek_session(self, ectx: Any) -> Iterator[Any]:
        """Authorization for the EK in the USER role.

        Low-range TCG EKs have no userWithAuth and authPolicy =
        PolicySecret(TPM_RH_ENDORSEMENT); the high-range ones have userWithAuth
        and an empty auth value, so a password session works (TPM-NOTES §2).
        """
        choice = self.select_ek(ectx)
        if choice.template.publicArea.objectAttributes & TPMA_OBJECT.USERWITHAUTH:
            yield ESYS_TR.PASSWORD
            return
        with self.policy_session(ectx) as sess:
            ectx.policy_secret(ESYS_TR.ENDORSEMENT, sess, b"", b"", b"", 0)
            yield sess

    def select_ek(self, ectx: Any) -> EkChoice:
        if self._ek is not None:
            return self._ek
        nv = NVReadEK(ectx)
        first: EkChoice | None = None
        for kind in self.ek_kinds:
            try:
                cert, template = create_ek_template(kind, nv)
            except ValueError:
                continue  # a high-range kind with no certificate in NV
            if cert is not None:
                self._ek = EkChoice(kind, template, bytes(cert))
                return self._ek
            if first is None:
                first = EkChoice(kind, template, None)
        if first is None:
            raise AttestgateError(ErrorCode.TPM_ERROR, f"endorsement: none of {self.ek_kinds}")
        self._ek = first
        return first

    @contextlib.contextmanager
    def ek(self, ectx: Any) -> Iterator[tuple[Any, Any]]:
        """(handle, TPM2B_PUBLIC) of the chosen EK, persistent if it matches, else created.

        The EK is only used at enrollment, so a created one is flushed at once.
        """
        choice = self.select_ek(ectx)
        persistent = EK_PERSISTENT_HANDLES.get(choice.kind)
        found = self._persistent_ek(ectx, persistent, choice) if persistent else None
        if found is not None:
            handle, public = found
            # A command naming a persistent object has the TPM load it into a
            # transient slot for the command's duration: keep one free.
            self._make_room(ectx, 1)
            self._extra += 1
            try:
                yield handle, public
            finally:
                self._extra -= 1
                # A persistent object is not flushed; just drop ESAPI's metadata.
                with contextlib.suppress(TSS2_Exception):
                    ectx.tr_close(handle)
            return
        with self.transient(ectx, lambda: ectx.create_primary(
                None, choice.template, ESYS_TR.ENDORSEMENT)) as created:
            handle, public, *_ = created
            try:
                yield handle, public
            finally:
                self._flush(ectx, handle)

    def _persistent_ek(self, ectx: Any, handle_no: int, choice: EkChoice) -> Any:
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

    # -- PCRs -------------------------------------------------------------------------------

    def read_pcrs(self, ectx: Any, indices: Sequence[int]) -> dict[int, bytes]:
        """Read sha256 PCRs; TPM2_PCR_Read returns at most 8 digests, so loop.

        The update counter must stay the same across the chunks, otherwise a
        PCR changed between them and the read starts over. The values read are kept
        (:meth:`kept_pcrs`).
        """
        for _ in range(PCR_READ_ATTEMPTS):
            values: dict[int, bytes] = {}
            counter: int | None = None
            while len(values) < len(indices):
                remaining = [i for i in indices if i not in values]
                update, sel_out, digests = ectx.pcr_read(pytss_selection(tuple(remaining)))
                # One marshal each and byte slicing: tpm2_pytss's per-item indexing cost
                # ~0.4 ms per read (profiled).
                try:
                    got = sha256_indices(bytes(sel_out.marshal()))
                    read = digest_list(bytes(digests.marshal()))
                except ValueError:
                    got, read = [], []
                if not got or len(got) != len(read) or not set(got) <= set(remaining):
                    raise AttestgateError(
                        ErrorCode.TPM_ERROR,
                        "pcr_read: no or unexpected PCRs returned (is the sha256 bank active?)",
                    )
                if counter is not None and int(update) != counter:
                    break
                counter = int(update)
                values.update(zip(got, read, strict=True))
            else:
                self.keep_pcrs(indices, values)
                return values
        raise AttestgateError(
            ErrorCode.TPM_ERROR, f"pcr_read: PCRs kept changing ({PCR_READ_ATTEMPTS} attempts)"
        )

def _qualified_name(hierarchy: int, name: bytes) -> bytes:
    """The qualified name of a primary called ``name`` in ``hierarchy`` (TPM 2.0 Part 1,
    16: QN = nameAlg || H(QN(parent) || name), a hierarchy's QN being its handle)."""
    return _SHA256_NAME_ALG + hashlib.sha256(struct.pack(">I", hierarchy) + name).digest()


def _name(public: Any) -> bytes:
    """The name of a TPM2B_PUBLIC with nameAlg SHA-256: nameAlg || SHA-256(publicArea)."""
    return _SHA256_NAME_ALG + hashlib.sha256(bytes(public.publicArea.marshal())).digest()
