"""shared.tpm against a real swtpm: what the pure code builds, the TPM accepts, and
what the TPM produces, the pure code verifies."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import swtpm_tpm_helper as helper

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not helper.available(), reason="swtpm / swtpm_setup not installed"),
]

tpm2_pytss = pytest.importorskip("tpm2_pytss")

from tpm2_pytss import ESAPI  # noqa: E402
from tpm2_pytss.constants import (  # noqa: E402
    ESYS_TR,
    TPM2_ALG,
    TPM2_RH,
    TPM2_SE,
    TPM2_ST,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (  # noqa: E402
    TPM2B_DATA,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
    TPMT_TK_HASHCHECK,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template  # noqa: E402

from shared.errors import AttestgateError, ErrorCode  # noqa: E402
from shared.tpm.attributes import check_ak, check_post_key, check_srk  # noqa: E402
from shared.tpm.certify import verify_certify  # noqa: E402
from shared.tpm.credential import make_credential, wrap_hmac_key  # noqa: E402
from shared.tpm.ekcert import ek_matches_cert, verify_ek_chain  # noqa: E402
from shared.tpm.pcrs import PcrSelection  # noqa: E402
from shared.tpm.quote import verify_quote  # noqa: E402
from shared.tpm.signature import verify_ecdsa_signature  # noqa: E402
from shared.tpm.structures import name_of  # noqa: E402

A = TPMA_OBJECT
AK_ATTRS = (A.FIXEDTPM | A.FIXEDPARENT | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH
            | A.RESTRICTED | A.SIGN_ENCRYPT)
SRK_ATTRS = (A.FIXEDTPM | A.FIXEDPARENT | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH
             | A.RESTRICTED | A.DECRYPT | A.NODA)
POST_ATTRS = A.FIXEDTPM | A.FIXEDPARENT | A.SENSITIVEDATAORIGIN | A.USERWITHAUTH | A.SIGN_ENCRYPT


@pytest.fixture(scope="session")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(state template dir, CA dir): swtpm_setup once per session with a private CA."""
    base = tmp_path_factory.mktemp("swtpm-template")
    ca_dir, state = base / "ca", base / "state"
    helper.make_ca(ca_dir)
    helper.provision(state, ca_dir)
    trust = base / "trust"
    trust.mkdir()
    (trust / "issuercert.pem").write_bytes((ca_dir / "issuercert.pem").read_bytes())
    return state, trust


@pytest.fixture
def ectx(provisioned: tuple[Path, Path], tmp_path: Path) -> Iterator[ESAPI]:
    tpm = helper.start(helper.copy_state(provisioned[0], tmp_path / "state"))
    try:
        ctx = ESAPI(tpm.tcti)
        try:
            yield ctx
        finally:
            ctx.close()
    finally:
        tpm.stop()


def _ak(ectx: ESAPI) -> tuple[object, bytes]:
    tmpl = TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=AK_ATTRS))
    handle, pub, *_ = ectx.create_primary(None, tmpl, ESYS_TR.ENDORSEMENT)
    return handle, pub.marshal()


def _srk(ectx: ESAPI, alg: str = "ecc256:aes128cfb") -> tuple[object, bytes]:
    tmpl = TPM2B_PUBLIC(TPMT_PUBLIC.parse(alg, objectAttributes=SRK_ATTRS))
    handle, pub, *_ = ectx.create_primary(None, tmpl, ESYS_TR.OWNER)
    return handle, pub.marshal()


def _ek_policy_session(ectx: ESAPI) -> object:
    sess = ectx.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY,
                                   TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), TPM2_ALG.SHA256)
    ectx.policy_secret(ESYS_TR.ENDORSEMENT, sess, b"", b"", b"", 0)
    return sess


@pytest.mark.parametrize("ek_type", ["EK-RSA2048", "EK-HIGH-ECC384"])
def test_ek_cert_chain_match_and_credential_activation(ectx: ESAPI,
                                                       provisioned: tuple[Path, Path],
                                                       ek_type: str) -> None:
    cert_der, templ = create_ek_template(ek_type, NVReadEK(ectx))
    ek, ek_pub, *_ = ectx.create_primary(None, templ, ESYS_TR.ENDORSEMENT)
    info = verify_ek_chain(cert_der, provisioned[1], datetime.datetime.now(datetime.UTC))
    ek_matches_cert(ek_pub.marshal(), info.certificate)

    ak, ak_pub = _ak(ectx)
    check_ak(ak_pub)
    secret = secrets.token_bytes(32)
    id_object, enc_secret = make_credential(ek_pub.marshal(), name_of(ak_pub), secret,
                                            secrets.token_bytes)
    blob, _ = TPM2B_ID_OBJECT.unmarshal(id_object)
    seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(enc_secret)
    sess = _ek_policy_session(ectx) if ek_type == "EK-RSA2048" else ESYS_TR.PASSWORD
    got = ectx.activate_credential(ak, ek, blob, seed, session1=ESYS_TR.PASSWORD, session2=sess)
    assert bytes(got) == secret


def test_credential_for_another_name_is_refused_by_the_tpm(ectx: ESAPI) -> None:
    _, templ = create_ek_template("EK-HIGH-ECC384", NVReadEK(ectx))
    ek, ek_pub, *_ = ectx.create_primary(None, templ, ESYS_TR.ENDORSEMENT)
    ak, _ = _ak(ectx)
    other = b"\x00\x0b" + hashlib.sha256(b"not the ak").digest()
    id_object, enc_secret = make_credential(ek_pub.marshal(), other, b"s" * 32,
                                            secrets.token_bytes)
    with pytest.raises(tpm2_pytss.TSS2_Exception):
        ectx.activate_credential(ak, ek, TPM2B_ID_OBJECT.unmarshal(id_object)[0],
                                 TPM2B_ENCRYPTED_SECRET.unmarshal(enc_secret)[0])


def test_low_range_ecc_ek_activation(ectx: ESAPI) -> None:
    _, templ = create_ek_template("EK-ECC256", NVReadEK(ectx))
    ek, ek_pub, *_ = ectx.create_primary(None, templ, ESYS_TR.ENDORSEMENT)
    ak, ak_pub = _ak(ectx)
    id_object, enc_secret = make_credential(ek_pub.marshal(), name_of(ak_pub), b"k" * 32,
                                            secrets.token_bytes)
    got = ectx.activate_credential(ak, ek, TPM2B_ID_OBJECT.unmarshal(id_object)[0],
                                   TPM2B_ENCRYPTED_SECRET.unmarshal(enc_secret)[0],
                                   session2=_ek_policy_session(ectx))
    assert bytes(got) == b"k" * 32


@pytest.mark.parametrize("srk_alg", ["ecc256:aes128cfb", "rsa2048:aes128cfb"])
def test_wrapped_hmac_key_imports_and_computes_the_same_hmac(ectx: ESAPI, srk_alg: str) -> None:
    srk, srk_pub = _srk(ectx, srk_alg)
    check_srk(srk_pub)
    psk = secrets.token_bytes(32)
    public, duplicate, seed = wrap_hmac_key(srk_pub, psk, secrets.token_bytes)
    pub = TPM2B_PUBLIC.unmarshal(public)[0]
    priv = ectx.import_(srk, TPM2B_DATA(), pub, TPM2B_PRIVATE.unmarshal(duplicate)[0],
                        TPM2B_ENCRYPTED_SECRET.unmarshal(seed)[0],
                        TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL))
    key = ectx.load(srk, priv, pub)
    msg = b"attestgate/1 session psk" + secrets.token_bytes(64)
    assert bytes(ectx.hmac(key, msg, TPM2_ALG.SHA256)) == hmac.new(psk, msg, "sha256").digest()


def test_wrap_for_another_srk_is_refused_by_the_tpm(ectx: ESAPI) -> None:
    srk, _ = _srk(ectx)
    _, other_pub = _srk(ectx, "rsa2048:aes128cfb")
    public, duplicate, seed = wrap_hmac_key(other_pub, b"p" * 32, secrets.token_bytes)
    with pytest.raises(tpm2_pytss.TSS2_Exception):
        ectx.import_(srk, TPM2B_DATA(), TPM2B_PUBLIC.unmarshal(public)[0],
                     TPM2B_PRIVATE.unmarshal(duplicate)[0],
                     TPM2B_ENCRYPTED_SECRET.unmarshal(seed)[0],
                     TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL))


def test_real_quote_verifies_and_binds(ectx: ESAPI) -> None:
    ak, ak_pub = _ak(ectx)
    sel_text = "sha256:0,1,2,3,4,5,6,7,16"
    nonce = secrets.token_bytes(32)
    att, sig = ectx.quote(ak, sel_text, nonce)
    _, _, digests = ectx.pcr_read("sha256:0,1,2,3,4,5,6,7")
    _, _, more = ectx.pcr_read("sha256:16")
    values = dict(zip([0, 1, 2, 3, 4, 5, 6, 7, 16],
                      [bytes(d) for d in list(digests) + list(more)], strict=True))
    sel = PcrSelection.parse(sel_text)
    info = verify_quote(ak_pub, bytes(att), sig.marshal(), qualifying_data=nonce,
                        selection=sel, pcr_values=values)
    assert info.selection == sel
    # An endorsement-hierarchy AK sees the real clock: swtpm_setup's runs count as resets.
    assert info.reset_count > 0 and info.restart_count == 0 and info.safe
    with pytest.raises(AttestgateError) as e:
        verify_quote(ak_pub, bytes(att), sig.marshal(), qualifying_data=bytes(32),
                     selection=sel, pcr_values=values)
    assert e.value.code is ErrorCode.QUOTE_BINDING
    with pytest.raises(AttestgateError) as e:
        verify_quote(ak_pub, bytes(att), sig.marshal(), qualifying_data=nonce,
                     selection=sel, pcr_values={**values, 16: b"\x01" * 32})
    assert e.value.code is ErrorCode.PCR_DIGEST


def test_certify_srk_and_post_key_then_post_signature(ectx: ESAPI) -> None:
    ak, ak_pub = _ak(ectx)
    srk, srk_pub = _srk(ectx)
    tmpl = TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes=POST_ATTRS))
    priv, post_pub, *_ = ectx.create(srk, None, tmpl)
    post = ectx.load(srk, priv, post_pub)
    nonce = secrets.token_bytes(32)
    for handle, public, check in ((srk, srk_pub, check_srk),
                                  (post, post_pub.marshal(), check_post_key)):
        att, sig = ectx.certify(handle, ak, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        info = verify_certify(ak_pub, bytes(att), sig.marshal(), certified_public=public,
                              qualifying_data=nonce)
        assert info.name == name_of(public)
        check(public)
    with pytest.raises(AttestgateError) as e:
        verify_certify(ak_pub, bytes(att), sig.marshal(), certified_public=srk_pub,
                       qualifying_data=nonce)
    assert e.value.code is ErrorCode.CERTIFY_INVALID

    digest = hashlib.sha256(b"attestgate/1 post" + b"hello board").digest()
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.ECDSA)
    scheme.details.any.hashAlg = TPM2_ALG.SHA256
    sig = ectx.sign(post, digest, scheme,
                    TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL))
    verify_ecdsa_signature(post_pub.marshal(), sig.marshal(), digest)
    with pytest.raises(AttestgateError) as e:
        verify_ecdsa_signature(post_pub.marshal(), sig.marshal(),
                               hashlib.sha256(b"another post").digest())
    assert e.value.code is ErrorCode.BAD_SIGNATURE
