"""The TPM adapter (client/tpm/) against a real swtpm; each test has its own template copy.

Verification here uses cryptography and tpm2_pytss's software helpers
(make_credential, wrap) the way the server does, so a passing test means the
bytes the adapter returns are the bytes a verifier can check.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from tpm2_pytss import ESAPI, utils
from tpm2_pytss.constants import (
    TPM2_ALG,
    TPM2_CAP,
    TPM2_GENERATED,
    TPM2_HT,
    TPM2_ST,
    TPMA_OBJECT,
)
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE,
    TPMS_ATTEST,
    TPMT_KEYEDHASH_SCHEME,
    TPMT_SIGNATURE,
)

from client.tpm import MAX_LOADED, Endorsement, KeyBlob, Tpm, parse_pcr_selection
from shared.errors import AttestgateError, ErrorCode
from tests.support.swtpm import (
    SwtpmProcess,
    TemplateTpm,
    change_endorsement_seed,
    clear_owner,
)
from tests.support.swtpm_fixtures import SwtpmFactory

pytestmark = pytest.mark.integration

SEL8 = "sha256:0,1,2,3,4,5,6,7"
SEL24 = "sha256:" + ",".join(str(i) for i in range(24))
NONCE = bytes(range(32))


@pytest.fixture
def tpm(swtpm: SwtpmProcess) -> Iterator[Tpm]:
    with Tpm(swtpm.tcti) as t:
        yield t


# -- helpers: what a verifier does -----------------------------------------------------------


def public_key(tpm2b_public: bytes) -> ec.EllipticCurvePublicKey:
    pub, _ = TPM2B_PUBLIC.unmarshal(tpm2b_public)
    key = serialization.load_der_public_key(pub.to_der())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def name_of(tpm2b_public: bytes) -> bytes:
    pub, _ = TPM2B_PUBLIC.unmarshal(tpm2b_public)
    return bytes(pub.get_name())


def verify_ecdsa(tpm2b_public: bytes, signature: bytes, message: bytes) -> None:
    sig, used = TPMT_SIGNATURE.unmarshal(signature)
    assert used == len(signature)
    assert sig.sigAlg == TPM2_ALG.ECDSA
    assert sig.signature.ecdsa.hash == TPM2_ALG.SHA256
    der = encode_dss_signature(
        int.from_bytes(bytes(sig.signature.ecdsa.signatureR), "big"),
        int.from_bytes(bytes(sig.signature.ecdsa.signatureS), "big"),
    )
    public_key(tpm2b_public).verify(der, message, ec.ECDSA(hashes.SHA256()))


def parse_attest(attest: bytes) -> Any:
    parsed, used = TPMS_ATTEST.unmarshal(attest)
    assert used == len(attest)
    assert parsed.magic == TPM2_GENERATED.VALUE
    return parsed


def loaded_counts(tcti: str) -> tuple[int, int]:
    """(transient objects, loaded sessions) currently in the TPM."""
    with ESAPI(tcti) as ectx:
        _, objs = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HT.TRANSIENT << 24, 64)
        _, sess = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HT.LOADED_SESSION << 24, 64)
        return int(objs.data.handles.count), int(sess.data.handles.count)


def ek_spki(endorsement: Endorsement) -> bytes:
    pub, _ = TPM2B_PUBLIC.unmarshal(endorsement.public)
    return serialization.load_der_public_key(pub.to_der()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def cert_spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def wrap_psk(srk_public: bytes, psk: bytes) -> tuple[bytes, bytes, bytes]:
    """What the server does: wrap an HMAC key to the client's SRK, no TPM needed."""
    scheme = TPMT_KEYEDHASH_SCHEME(scheme=TPM2_ALG.HMAC)
    scheme.details.hmac.hashAlg = TPM2_ALG.SHA256
    sens, pub = TPM2B_SENSITIVE.keyedhash_from_secret(
        psk, objectAttributes=TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.SIGN_ENCRYPT, scheme=scheme
    )
    srk, _ = TPM2B_PUBLIC.unmarshal(srk_public)
    _, duplicate, seed = utils.wrap(srk.publicArea, pub, sens)
    return bytes(pub.marshal()), bytes(duplicate.marshal()), bytes(seed.marshal())


def make_credential(ek_public: bytes, secret: bytes, name: bytes) -> tuple[bytes, bytes]:
    ek, _ = TPM2B_PUBLIC.unmarshal(ek_public)
    id_object, encrypted = utils.make_credential(ek, secret, name)
    return bytes(id_object.marshal()), bytes(encrypted.marshal())


# -- identity -------------------------------------------------------------------------------------


def test_info(tpm: Tpm) -> None:
    info = tpm.info()
    assert info.manufacturer == "IBM"
    assert info.vendor_string.startswith("SW")
    assert info.pcr_banks == ("sha256",)  # swtpm_setup activates only sha256
    quoted = parse_attest(tpm.quote(NONCE, SEL8).attest)
    assert info.firmware_version == quoted.firmwareVersion


def test_endorsement_matches_certificate_from_test_ca(
    tpm: Tpm, swtpm_template: TemplateTpm
) -> None:
    ek = tpm.endorsement()
    assert ek.kind == "EK-RSA2048"
    assert ek.certificate is not None
    cert = x509.load_der_x509_certificate(ek.certificate)
    cert.verify_directly_issued_by(swtpm_template.ca_certificate())
    assert ek_spki(ek) == cert_spki(ek.certificate)
    assert tpm.endorsement() == ek  # stable


@pytest.mark.parametrize(("kind", "has_cert"), [("EK-HIGH-ECC384", True), ("EK-ECC256", False)])
def test_endorsement_other_templates(swtpm: SwtpmProcess, kind: str, has_cert: bool) -> None:
    with Tpm(swtpm.tcti, ek_kinds=[kind]) as tpm:
        ek = tpm.endorsement()
    assert ek.kind == kind
    if has_cert:
        assert ek.certificate is not None
        assert ek_spki(ek) == cert_spki(ek.certificate)
    else:
        assert ek.certificate is None


def test_other_ca_template_is_another_tpm_and_ca(
    tpm: Tpm,
    swtpm_factory: SwtpmFactory,
    swtpm_template_other_ca: TemplateTpm,
    swtpm_template: TemplateTpm,
) -> None:
    other = swtpm_factory(swtpm_template_other_ca)
    with Tpm(other.tcti) as other_tpm:
        other_ek = other_tpm.endorsement()
    assert other_ek.certificate is not None
    assert other_ek.public != tpm.endorsement().public
    cert = x509.load_der_x509_certificate(other_ek.certificate)
    cert.verify_directly_issued_by(swtpm_template_other_ca.ca_certificate())
    with pytest.raises((ValueError, InvalidSignature)):
        cert.verify_directly_issued_by(swtpm_template.ca_certificate())


def test_copies_of_one_template_share_keys(tpm: Tpm, swtpm_factory: SwtpmFactory) -> None:
    with Tpm(swtpm_factory().tcti) as twin:
        assert twin.endorsement() == tpm.endorsement()
        assert twin.srk_public() == tpm.srk_public()
        assert twin.ak_public() == tpm.ak_public()


def test_ak_and_srk_are_deterministic_and_have_the_agreed_attributes(tpm: Tpm) -> None:
    ak, _ = TPM2B_PUBLIC.unmarshal(tpm.ak_public())
    srk, _ = TPM2B_PUBLIC.unmarshal(tpm.srk_public())
    assert tpm.ak_public() == tpm.ak_public()
    assert tpm.srk_public() == tpm.srk_public()
    a = ak.publicArea.objectAttributes
    for flag in (
        TPMA_OBJECT.FIXEDTPM,
        TPMA_OBJECT.FIXEDPARENT,
        TPMA_OBJECT.SENSITIVEDATAORIGIN,
        TPMA_OBJECT.RESTRICTED,
        TPMA_OBJECT.SIGN_ENCRYPT,
    ):
        assert a & flag
    assert not a & TPMA_OBJECT.DECRYPT
    s = srk.publicArea.objectAttributes
    assert s & TPMA_OBJECT.RESTRICTED and s & TPMA_OBJECT.DECRYPT and s & TPMA_OBJECT.FIXEDTPM


# -- quotes and PCRs ------------------------------------------------------------------------------


@pytest.mark.parametrize("selection", [SEL8, SEL24, "sha256:16"])
def test_quote_round_trip(tpm: Tpm, selection: str) -> None:
    quote = tpm.quote(NONCE, selection)
    ak_public = tpm.ak_public()
    verify_ecdsa(ak_public, quote.signature, quote.attest)
    attest = parse_attest(quote.attest)
    assert attest.type == TPM2_ST.ATTEST_QUOTE
    assert bytes(attest.extraData) == NONCE
    indices = parse_pcr_selection(selection)
    assert [i for i, _ in quote.pcr_values] == list(indices)
    assert quote.pcrs() == tpm.pcr_read(selection)
    digest = hashlib.sha256(b"".join(v for _, v in quote.pcr_values)).digest()
    assert bytes(attest.attested.quote.pcrDigest) == digest
    # the signer is this AK
    assert bytes(attest.qualifiedSigner)[:2] == name_of(ak_public)[:2]


def test_quote_signature_breaks_on_one_bit(tpm: Tpm) -> None:
    quote = tpm.quote(NONCE, SEL8)
    tampered = bytearray(quote.attest)
    tampered[-1] ^= 1
    with pytest.raises(InvalidSignature):
        verify_ecdsa(tpm.ak_public(), quote.signature, bytes(tampered))


def test_extend_changes_the_quote(tpm: Tpm) -> None:
    before = tpm.quote(NONCE, "sha256:7,16")
    tpm.extend_pcr(16, b"event")
    after = tpm.quote(NONCE, "sha256:7,16")
    old16 = before.pcrs()[16]
    assert after.pcrs()[16] == hashlib.sha256(old16 + hashlib.sha256(b"event").digest()).digest()
    assert after.pcrs()[7] == before.pcrs()[7]
    assert (
        parse_attest(after.attest).attested.quote.pcrDigest
        != parse_attest(before.attest).attested.quote.pcrDigest
    )
    tpm.reset_pcr(16)
    assert tpm.pcr_read("sha256:16")[16] == bytes(32)


def test_restart_resets_pcrs_and_counts_the_reboot(swtpm: SwtpmProcess) -> None:
    with Tpm(swtpm.tcti) as tpm:
        tpm.extend_pcr(10, b"boot")
        first = parse_attest(tpm.quote(NONCE, "sha256:10").attest)
        ak = tpm.ak_public()
    swtpm.restart()
    with Tpm(swtpm.tcti) as tpm:
        second = tpm.quote(NONCE, "sha256:10")
        assert second.pcrs()[10] == bytes(32)
        assert tpm.ak_public() == ak
    assert parse_attest(second.attest).clockInfo.resetCount == first.clockInfo.resetCount + 1


# -- certification and signing --------------------------------------------------------------------


def test_certify_srk_and_post_key(tpm: Tpm) -> None:
    ak_public = tpm.ak_public()
    post_key = tpm.create_post_key()
    for subject_public, cert in (
        (tpm.srk_public(), tpm.certify_srk(NONCE)),
        (post_key.public, tpm.certify_key(post_key, NONCE)),
    ):
        verify_ecdsa(ak_public, cert.signature, cert.attest)
        attest = parse_attest(cert.attest)
        assert attest.type == TPM2_ST.ATTEST_CERTIFY
        assert bytes(attest.extraData) == NONCE
        assert bytes(attest.attested.certify.name) == name_of(subject_public)


def test_post_key_signs_digests_that_verify(tpm: Tpm) -> None:
    post_key = tpm.create_post_key()
    pub, _ = TPM2B_PUBLIC.unmarshal(post_key.public)
    attrs = pub.publicArea.objectAttributes
    assert attrs & TPMA_OBJECT.FIXEDTPM and attrs & TPMA_OBJECT.SIGN_ENCRYPT
    assert not attrs & TPMA_OBJECT.RESTRICTED
    message = b"attestgate/1 post|hello board"
    signature = tpm.sign(post_key, hashlib.sha256(message).digest())
    verify_ecdsa(post_key.public, signature, message)
    # the blob survives a round trip through its file format
    again = tpm.sign(KeyBlob.from_bytes(post_key.to_bytes()), hashlib.sha256(message).digest())
    verify_ecdsa(post_key.public, again, message)


# -- credential activation and the device PSK -----------------------------------------------------


@pytest.mark.parametrize("kind", ["EK-RSA2048", "EK-HIGH-ECC384", "EK-ECC256"])
def test_activate_credential(swtpm: SwtpmProcess, kind: str) -> None:
    with Tpm(swtpm.tcti, ek_kinds=[kind]) as tpm:
        ek = tpm.endorsement()
        ak_name = name_of(tpm.ak_public())
        challenge = os.urandom(32)
        assert tpm.activate_credential(*make_credential(ek.public, challenge, ak_name)) == challenge

        wrong_name = name_of(tpm.srk_public())
        with pytest.raises(AttestgateError) as err:
            tpm.activate_credential(*make_credential(ek.public, challenge, wrong_name))
        assert err.value.code is ErrorCode.CREDENTIAL_FAILED


def test_credential_for_another_ek_fails(
    tpm: Tpm, swtpm_factory: SwtpmFactory, swtpm_template_other_ca: TemplateTpm
) -> None:
    with Tpm(swtpm_factory(swtpm_template_other_ca).tcti) as other:
        other_ek = other.endorsement().public
    blob = make_credential(other_ek, os.urandom(32), name_of(tpm.ak_public()))
    with pytest.raises(AttestgateError) as err:
        tpm.activate_credential(*blob)
    assert err.value.code is ErrorCode.CREDENTIAL_FAILED


@pytest.mark.parametrize("size", [0, 48, 1024, 1025, 5000])
def test_imported_hmac_key_matches_software_hmac(tpm: Tpm, size: int) -> None:
    psk = os.urandom(32)
    key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), psk))
    message = os.urandom(size)
    assert tpm.hmac(key, message) == hmac.new(psk, message, hashlib.sha256).digest()


def test_hmac_key_wrapped_to_another_srk_does_not_import(
    tpm: Tpm, swtpm_factory: SwtpmFactory, swtpm_template_other_ca: TemplateTpm
) -> None:
    with Tpm(swtpm_factory(swtpm_template_other_ca).tcti) as other:
        other_srk = other.srk_public()
    with pytest.raises(AttestgateError) as err:
        tpm.import_hmac_key(*wrap_psk(other_srk, os.urandom(32)))
    assert err.value.code is ErrorCode.TPM_ERROR


# -- sealing --------------------------------------------------------------------------------------


def test_seal_without_pcrs(tpm: Tpm) -> None:
    secret = os.urandom(32)
    blob = tpm.seal(secret)
    tpm.extend_pcr(16, b"irrelevant")
    assert tpm.unseal(blob) == secret


def test_seal_to_pcrs_and_detect_a_change(tpm: Tpm) -> None:
    secret = os.urandom(128)  # the largest that fits
    blob = tpm.seal(secret, "sha256:0,7,16")
    assert tpm.unseal(blob, "sha256:0,7,16") == secret
    tpm.extend_pcr(16, b"tampered")
    with pytest.raises(AttestgateError) as err:
        tpm.unseal(blob, "sha256:0,7,16")
    assert err.value.code is ErrorCode.PCR_MISMATCH
    tpm.reset_pcr(16)
    assert tpm.unseal(blob, "sha256:0,7,16") == secret


def test_unseal_with_another_selection_is_a_mismatch(tpm: Tpm) -> None:
    blob = tpm.seal(b"k" * 32, "sha256:0,7")
    with pytest.raises(AttestgateError) as err:
        tpm.unseal(blob, "sha256:0,7,16")
    assert err.value.code is ErrorCode.PCR_MISMATCH


def test_sealed_blob_survives_a_reboot(swtpm: SwtpmProcess) -> None:
    secret = os.urandom(32)
    with Tpm(swtpm.tcti) as tpm:
        blob = tpm.seal(secret, SEL8).to_bytes()
    swtpm.restart()
    with Tpm(swtpm.tcti) as tpm:
        assert tpm.unseal(KeyBlob.from_bytes(blob), SEL8) == secret


# -- another machine ------------------------------------------------------------------------------


def test_cloned_home_blobs_do_not_load_on_another_tpm(
    tpm: Tpm, swtpm_factory: SwtpmFactory
) -> None:
    """Blobs copied to a machine whose TPM has another storage seed are useless there."""
    psk = os.urandom(32)
    sealed = tpm.seal(b"s" * 32)
    post_key = tpm.create_post_key()
    hmac_key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), psk))

    other = swtpm_factory()  # same seeds as `tpm` ...
    clear_owner(other.tcti)  # ... until TPM2_Clear gives it a new storage seed
    with Tpm(other.tcti) as other_tpm:
        assert other_tpm.srk_public() != tpm.srk_public()
        # the endorsement seed is untouched: same EK, and it still matches the cert
        assert other_tpm.endorsement() == tpm.endorsement()
        attempts: tuple[Callable[[], object], ...] = (
            lambda: other_tpm.unseal(sealed),
            lambda: other_tpm.sign(post_key, bytes(32)),
            lambda: other_tpm.hmac(hmac_key, b"x"),
        )
        for attempt in attempts:
            with pytest.raises(AttestgateError) as err:
                attempt()
            assert err.value.code is ErrorCode.TPM_ERROR


def test_new_endorsement_seed_breaks_the_ek_certificate(swtpm: SwtpmProcess, tpm: Tpm) -> None:
    before = tpm.endorsement()
    change_endorsement_seed(swtpm.tcti)
    with Tpm(swtpm.tcti) as fresh:
        after = fresh.endorsement()
    assert after.certificate == before.certificate  # NV is untouched ...
    assert after.certificate is not None
    assert ek_spki(after) != cert_spki(after.certificate)  # ... but the key is new


# -- resource hygiene -----------------------------------------------------------------------------


def test_repeated_operations_leave_no_objects_or_sessions(swtpm: SwtpmProcess, tpm: Tpm) -> None:
    ek = tpm.endorsement()
    ak_name = name_of(tpm.ak_public())
    psk = os.urandom(32)
    hmac_key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), psk))
    post_key = tpm.create_post_key()
    sealed = tpm.seal(b"s" * 32, "sha256:16")
    for _ in range(20):
        tpm.quote(NONCE, SEL24)
        tpm.certify_srk(NONCE)
        tpm.certify_key(post_key, NONCE)
        tpm.sign(post_key, bytes(32))
        tpm.hmac(hmac_key, b"m" * 3000)
        assert tpm.unseal(sealed, "sha256:16") == b"s" * 32
        assert tpm.activate_credential(*make_credential(ek.public, b"c" * 32, ak_name))
        # and the failure paths
        with pytest.raises(AttestgateError):
            tpm.activate_credential(*make_credential(ek.public, b"c" * 32, bytes(34)))
        with pytest.raises(AttestgateError):
            tpm.unseal(sealed, "sha256:15,16")
        objects, sessions = loaded_counts(swtpm.tcti)
        assert objects <= MAX_LOADED  # kept loaded, within the TPM's slots
        assert sessions == 0  # sessions never outlive their operation
    tpm.close()
    assert loaded_counts(swtpm.tcti) == (0, 0)


def connect_shaped(tpm: Tpm, hmac_key: KeyBlob, post_key: KeyBlob, sealed: KeyBlob) -> None:
    """What a connect and a post ask of the TPM (client.flows.connect / post)."""
    assert tpm.unseal(sealed, "sha256:16", reuse=True) == b"n" * 32
    tpm.hmac(hmac_key, b"e_i and e_r" * 6)
    tpm.quote(NONCE, SEL8)
    tpm.sign(post_key, bytes(32))


def test_a_thousand_connects_keep_within_the_slots_and_leave_nothing(
        swtpm: SwtpmProcess) -> None:
    with Tpm(swtpm.tcti) as tpm:
        hmac_key = tpm.import_hmac_key(*wrap_psk(tpm.srk_public(), os.urandom(32)))
        post_key = tpm.create_post_key()
        sealed = tpm.seal(b"n" * 32, "sha256:16")
        most = 0
        for n in range(1000):
            connect_shaped(tpm, hmac_key, post_key, sealed)
            if n % 10 == 0:
                objects, sessions = loaded_counts(swtpm.tcti)
                most = max(most, objects)
                assert sessions == 0
        assert 0 < most <= MAX_LOADED
    assert loaded_counts(swtpm.tcti) == (0, 0)  # flushed at close


def test_release_frees_the_slots_for_another_client(swtpm: SwtpmProcess) -> None:
    """Two clients of one swtpm (no resource manager): the waiting one releases its slots."""
    with Tpm(swtpm.tcti) as waiting:
        hmac_key = waiting.import_hmac_key(*wrap_psk(waiting.srk_public(), os.urandom(32)))
        post_key = waiting.create_post_key()
        waiting.hmac(hmac_key, b"m")
        waiting.quote(NONCE, SEL8)
        waiting.sign(post_key, bytes(32))
        assert loaded_counts(swtpm.tcti)[0] == MAX_LOADED
        waiting.release()
        assert loaded_counts(swtpm.tcti) == (0, 0)
        with Tpm(swtpm.tcti) as other:
            other.sign(post_key, bytes(32))  # needs two slots: the SRK and the key
            other.quote(NONCE, SEL8)
        waiting.hmac(hmac_key, b"m")  # the first client's objects come back when used
    assert loaded_counts(swtpm.tcti) == (0, 0)


# -- errors at the boundary -----------------------------------------------------------------------


@pytest.mark.parametrize("tcti", [None, "", "   ", "nosuch:x", "swtpm\x00:port=1"])
def test_missing_or_unsupported_tcti(tcti: str | None) -> None:
    with pytest.raises(AttestgateError) as err:
        Tpm(tcti)
    assert err.value.code is ErrorCode.TPM_UNAVAILABLE


def test_unreachable_tpm(swtpm: SwtpmProcess) -> None:
    tcti = swtpm.tcti
    swtpm.stop()
    with pytest.raises(AttestgateError) as err:
        Tpm(tcti).info()
    assert err.value.code is ErrorCode.TPM_UNAVAILABLE


def test_tpm_going_away_and_closed_handle(swtpm: SwtpmProcess) -> None:
    tpm = Tpm(swtpm.tcti)
    tpm.info()
    swtpm.stop()
    with pytest.raises(AttestgateError) as err:
        tpm.quote(NONCE, SEL8)
    assert err.value.code is ErrorCode.TPM_UNAVAILABLE
    tpm.close()
    tpm.close()
    with pytest.raises(AttestgateError) as err:
        tpm.info()
    assert err.value.code is ErrorCode.TPM_UNAVAILABLE


@pytest.mark.parametrize(
    "selection",
    [
        "",
        "sha1:0",
        "sha256:",
        "sha256:24",
        "sha256:1,1",
        "sha256:0,,1",
        "sha256:-1",
        "sha256:0+sha1:0",
        "SHA256:0",
        "sha256:" + ",".join(["1"] * 100),
    ],
)
def test_bad_selection(tpm: Tpm, selection: str) -> None:
    with pytest.raises(AttestgateError) as err:
        tpm.pcr_read(selection)
    assert err.value.code is ErrorCode.BAD_REQUEST


def test_bad_arguments_never_reach_the_tpm(tpm: Tpm) -> None:
    post_key = tpm.create_post_key()
    cases: list[Callable[[], object]] = [
        lambda: tpm.quote(bytes(65), SEL8),
        lambda: tpm.sign(post_key, bytes(31)),
        lambda: tpm.seal(b""),
        lambda: tpm.seal(bytes(129)),
        lambda: tpm.extend_pcr(24, b"x"),
        lambda: tpm.activate_credential(b"\x00", b""),
        lambda: tpm.activate_credential(b"\x00\x01\x00" + bytes(10), b"\x00\x00"),
        lambda: tpm.import_hmac_key(post_key.public, b"\x00\x00", b"\x00\x00"),
        lambda: tpm.sign(KeyBlob(post_key.private + b"x", post_key.public), bytes(32)),
    ]
    for case in cases:
        with pytest.raises(AttestgateError) as err:
            case()
        assert err.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"AGK1",
        b"AGK1\x00\x01x",
        b"AGK1\x00\x01x\x00\x01y!",
        b"XXXX\x00\x01x\x00\x01y",
        b"AGK1\x00\x00\x00\x01y",
    ],
)
def test_key_blob_rejects_malformed_files(data: bytes) -> None:
    with pytest.raises(AttestgateError) as err:
        KeyBlob.from_bytes(data)
    assert err.value.code is ErrorCode.BAD_REQUEST


def test_key_blob_repr_shows_no_bytes() -> None:
    blob = KeyBlob(b"secret-ish", b"public")
    assert "secret" not in repr(blob)
    assert KeyBlob.from_bytes(blob.to_bytes()) == blob


def test_unseal_with_reuse_asks_the_tpm_once_per_open_tpm(swtpm: SwtpmProcess) -> None:
    """The Noise key is unsealed once per process; a plain unseal still checks the PCRs."""
    with Tpm(swtpm.tcti) as tpm:
        sealed = tpm.seal(b"k" * 32, "sha256:16")
        assert tpm.unseal(sealed, "sha256:16", reuse=True) == b"k" * 32
        tpm.extend_pcr(16, b"changed")
        assert tpm.unseal(sealed, "sha256:16", reuse=True) == b"k" * 32  # from memory
        with pytest.raises(AttestgateError) as err:
            tpm.unseal(sealed, "sha256:16")
        assert err.value.code is ErrorCode.PCR_MISMATCH
    with Tpm(swtpm.tcti) as fresh, pytest.raises(AttestgateError) as err:
        fresh.unseal(sealed, "sha256:16", reuse=True)  # a new process asks the TPM again
    assert err.value.code is ErrorCode.PCR_MISMATCH
