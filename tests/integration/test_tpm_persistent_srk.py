"""The SRK persisted at 0x81000001 (TCG provisioning, systemd-tpm2-setup) is used instead of
a CreatePrimary per process, only when it is the SRK our template gives; nothing persistent
is ever flushed or changed, and nothing transient is left behind."""

from __future__ import annotations

import os

import pytest
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_CAP, TPM2_HT, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPMT_PUBLIC

from client.tpm import MAX_LOADED, Tpm
from client.tpm.common import srk_template
from client.tpm.objects import SRK_PERSISTENT_HANDLE
from tests.integration.test_tpm_adapter import NONCE, connect_shaped, wrap_psk
from tests.support.swtpm import SwtpmProcess

pytestmark = pytest.mark.integration


def transient_objects(tcti: str) -> int:
    with ESAPI(tcti) as ectx:
        _, objs = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HT.TRANSIENT << 24, 64)
        return int(objs.data.handles.count)


def persistent_handles(tcti: str) -> list[int]:
    with ESAPI(tcti) as ectx:
        _, caps = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HT.PERSISTENT << 24, 64)
        return [int(h) for h in caps.data.handles]


def persist(tcti: str, template: TPM2B_PUBLIC) -> bytes:
    """What provisioning does: CreatePrimary in the owner hierarchy, EvictControl to the SRK
    handle. Returns the persisted object's TPM2B_PUBLIC."""
    with ESAPI(tcti) as ectx:
        handle, public, *_ = ectx.create_primary(None, template, ESYS_TR.OWNER)
        persistent = ectx.evict_control(ESYS_TR.OWNER, handle, SRK_PERSISTENT_HANDLE)
        ectx.tr_close(persistent)
        ectx.flush_context(handle)
        return bytes(public.marshal())


def test_a_persisted_srk_of_our_template_is_used_and_left_in_place(swtpm: SwtpmProcess) -> None:
    with Tpm(swtpm.tcti) as before:  # enrolled while the SRK was a per-process primary
        created_public = before.srk_public()
        sealed = before.seal(b"n" * 32, "sha256:16")
        hmac_key = before.import_hmac_key(*wrap_psk(created_public, os.urandom(32)))
        post_key = before.create_post_key()
    assert persist(swtpm.tcti, srk_template()) == created_public
    with Tpm(swtpm.tcti) as tpm:
        assert tpm.srk_public() == created_public
        assert transient_objects(swtpm.tcti) == 0  # no primary created for it
        # Blobs made under the created SRK load under the persisted one (same key), and
        # every command naming it finds a free slot, a thousand times over.
        for n in range(1000):
            connect_shaped(tpm, hmac_key, post_key, sealed)
            if n % 100 == 0:
                assert transient_objects(swtpm.tcti) <= MAX_LOADED - 1
        tpm.certify_srk(NONCE)
        tpm.release()
        assert transient_objects(swtpm.tcti) == 0
        assert tpm.unseal(sealed, "sha256:16") == b"n" * 32  # found again after a release
    assert transient_objects(swtpm.tcti) == 0
    assert persistent_handles(swtpm.tcti).count(SRK_PERSISTENT_HANDLE) == 1  # not flushed


def test_another_object_at_the_srk_handle_is_ignored_and_kept(swtpm: SwtpmProcess) -> None:
    # A storage key from another template (no noDA) sits at the handle.
    other = TPM2B_PUBLIC(TPMT_PUBLIC.parse(
        "ecc256:aes128cfb", objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.DECRYPT))
    other_public = persist(swtpm.tcti, other)
    with Tpm(swtpm.tcti) as tpm:
        ours = tpm.srk_public()
        assert ours != other_public
        assert transient_objects(swtpm.tcti) == 1  # our SRK, created as before
        sealed = tpm.seal(b"s" * 16)
        assert tpm.unseal(sealed) == b"s" * 16
    assert transient_objects(swtpm.tcti) == 0
    assert persistent_handles(swtpm.tcti).count(SRK_PERSISTENT_HANDLE) == 1
