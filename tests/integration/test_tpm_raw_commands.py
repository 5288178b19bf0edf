"""The connect's commands sent as bytes (client/tpm/rawcmd.py: ReadPublic, HMAC, Quote, an
unbound Unseal) against a real swtpm: the same answers as through ESAPI on the same objects,
the same errors for what the TPM refuses, and nothing left loaded."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator

import pytest
from tpm2_pytss.constants import TPM2_ALG
from tpm2_pytss.types import TPM2B_ATTEST, TPMS_ATTEST, TPMT_SIG_SCHEME, TPMT_SIGNATURE

from client.tpm import Tpm, rawcmd
from client.tpm.common import parse_pcr_selection, pytss_selection, selection_bytes
from shared.errors import AttestgateError, ErrorCode
from tests.integration.test_tpm_adapter import (
    NONCE,
    SEL8,
    loaded_counts,
    verify_ecdsa,
    wrap_psk,
)
from tests.support.swtpm import SwtpmProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def tpm(swtpm: SwtpmProcess) -> Iterator[Tpm]:
    with Tpm(swtpm.tcti) as t:
        yield t


def test_hmac_and_unseal_answer_as_esapi_does(tpm: Tpm) -> None:
    psk = os.urandom(32)
    key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), psk))
    data = b"e_i and e_r" * 9
    assert tpm.hmac(key, data) == hmac.new(psk, data, "sha256").digest()
    secret = os.urandom(48)
    sealed = tpm.seal(secret)
    objs = tpm._objs
    with objs.operation("test") as ectx:
        handle = objs.blob(ectx, key)
        assert bytes(ectx.hmac(handle, data, TPM2_ALG.SHA256)) == tpm.hmac(key, data)
    assert tpm.unseal(sealed) == secret
    with objs.operation("test") as ectx, objs.blob_once(ectx, sealed) as handle:
        assert bytes(ectx.unseal(handle)) == secret
        assert rawcmd.parse_password_unseal(objs.raw(rawcmd.unseal_password(
            objs.tpm_handle(ectx, handle)))) == secret


def test_read_public_answers_as_esapi_does(tpm: Tpm) -> None:
    key = tpm.create_post_key()
    objs = tpm._objs
    with objs.operation("test") as ectx:
        for handle in (objs.primary(ectx, "srk")[0], objs.blob(ectx, key)):
            public, name, qualified = ectx.read_public(handle)
            assert objs.read_public(ectx, handle) == (
                bytes(public.marshal()), bytes(name), bytes(qualified))
        assert objs.read_public(ectx, objs.blob(ectx, key))[0] == key.public


def test_a_raw_quote_is_what_esapi_gets(tpm: Tpm, swtpm: SwtpmProcess) -> None:
    ak_public = tpm.ak_public()
    quote = tpm.quote(NONCE, SEL8)
    verify_ecdsa(ak_public, quote.signature, quote.attest)
    parsed, _ = TPMS_ATTEST.unmarshal(quote.attest)
    assert bytes(parsed.extraData) == NONCE
    assert bytes(parsed.attested.quote.pcrDigest) == hashlib.sha256(
        b"".join(v for _, v in quote.pcr_values)).digest()
    objs = tpm._objs
    indices = parse_pcr_selection(SEL8)
    with objs.operation("test") as ectx:
        ak, _ = objs.primary(ectx, "ak")
        raw = objs.raw(rawcmd.quote(objs.tpm_handle(ectx, ak), NONCE, selection_bytes(indices)))
        attest_obj, sig = ectx.quote(ak, pytss_selection(indices), NONCE,
                                     TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    # the answer split as tpm2_pytss splits it
    params = raw[4:4 + int.from_bytes(raw[:4], "big")]
    attest_2b, used = TPM2B_ATTEST.unmarshal(params)
    assert rawcmd.parse_quote(raw) == (bytes(attest_2b),
                                       bytes(TPMT_SIGNATURE.unmarshal(params[used:])[0].marshal()))
    # and ESAPI's quote of the same PCRs says the same but for the clock
    mine, theirs = TPMS_ATTEST.unmarshal(rawcmd.parse_quote(raw)[0])[0], TPMS_ATTEST.unmarshal(
        bytes(attest_obj))[0]
    for field in ("qualifiedSigner", "extraData"):
        assert bytes(getattr(mine, field)) == bytes(getattr(theirs, field))
    assert bytes(mine.attested.quote.marshal()) == bytes(theirs.attested.quote.marshal())
    verify_ecdsa(ak_public, bytes(sig.marshal()), bytes(attest_obj))
    assert loaded_counts(swtpm.tcti)[1] == 0


def test_a_raw_signature_verifies_as_esapis(tpm: Tpm) -> None:
    key = tpm.create_post_key()
    digest = hashlib.sha256(b"attestgate/1 post|hello").digest()
    verify_ecdsa(key.public, tpm.sign(key, digest), b"attestgate/1 post|hello")
    objs = tpm._objs
    with objs.operation("test") as ectx:
        sig = ectx.sign(objs.blob(ectx, key), digest, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
    verify_ecdsa(key.public, bytes(sig.marshal()), b"attestgate/1 post|hello")


def test_signing_with_what_is_not_a_signing_key_is_a_tpm_error(tpm: Tpm) -> None:
    """A sealed-data object cannot sign (the TPM refuses); an HMAC key signs with HMAC, which
    is no TPMT_SIGNATURE a post can carry (refused here, before the board would)."""
    sealed = tpm.seal(b"s" * 32)
    hmac_key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), os.urandom(32)))
    for key in (sealed, hmac_key):
        with pytest.raises(AttestgateError) as err:
            tpm.sign(key, bytes(32))
        assert err.value.code is ErrorCode.TPM_ERROR


def test_what_the_tpm_refuses_is_still_a_tpm_error(tpm: Tpm) -> None:
    """A PCR-bound blob unsealed without its policy: the TPM refuses the password session."""
    bound = tpm.seal(b"s" * 32, "sha256:16")
    with pytest.raises(AttestgateError) as err:
        tpm.unseal(bound)
    assert err.value.code is ErrorCode.TPM_ERROR
    with pytest.raises(AttestgateError) as err:
        tpm.quote(b"q" * 65, SEL8)
    assert err.value.code is ErrorCode.BAD_REQUEST


def test_the_hmac_key_used_as_bytes_is_flushed_at_close(swtpm: SwtpmProcess) -> None:
    psk = os.urandom(32)
    with Tpm(swtpm.tcti) as tpm:
        key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), psk))
        sealed = tpm.seal(b"k" * 32)
        for _ in range(20):
            tpm.hmac(key, b"m")
            tpm.unseal(sealed)
            tpm.quote(NONCE, SEL8)
    assert loaded_counts(swtpm.tcti) == (0, 0)


def test_the_tpm_gone_is_unavailable(swtpm: SwtpmProcess) -> None:
    psk = os.urandom(32)
    tpm = Tpm(swtpm.tcti)
    try:
        key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), psk))
        tpm.quote(NONCE, SEL8)
        swtpm.stop()
        for call in (lambda: tpm.hmac(key, b"m"), lambda: tpm.quote(NONCE, SEL8)):
            with pytest.raises(AttestgateError) as err:
                call()
            assert err.value.code is ErrorCode.TPM_UNAVAILABLE
    finally:
        tpm.close()
