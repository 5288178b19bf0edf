"""make_credential / wrap_hmac_key cross-checked against tpm2-pytss's own software
implementation (the real TPM round trip is in tests/integration/tpm)."""

from __future__ import annotations

import hashlib
import secrets

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.algorithms import AES

crypto = pytest.importorskip("tpm2_pytss.internal.crypto")
from tpm2_pytss.types import (  # noqa: E402
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPMT_SENSITIVE,
)
from tpm2_pytss.utils import unwrap  # noqa: E402

from shared.errors import AttestgateError, ErrorCode  # noqa: E402
from shared.tpm.constants import Alg, ObjectAttr  # noqa: E402
from shared.tpm.credential import make_credential, wrap_hmac_key  # noqa: E402
from shared.tpm.kdf import kdfa, kdfe  # noqa: E402
from shared.tpm.structures import (  # noqa: E402
    AES128_CFB,
    SCHEME_NULL,
    EccParms,
    EccPoint,
    RsaParms,
    build_public,
    name_of,
    parse_public,
)
from shared.tpm.templates import EK_TEMPLATES, ek_public_from_key  # noqa: E402

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _sensitive(key: Key) -> TPMT_SENSITIVE:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return TPMT_SENSITIVE.from_pem(pem)


def _ek(template_name: str) -> tuple[Key, bytes]:
    template = next(t for t in EK_TEMPLATES if t.name == template_name)
    key: Key
    if template.key_type == Alg.RSA:
        key = rsa.generate_private_key(65537, template.rsa_bits)
    else:
        curve = {3: ec.SECP256R1(), 4: ec.SECP384R1(), 5: ec.SECP521R1()}[template.curve]
        key = ec.generate_private_key(curve)
    return key, ek_public_from_key(key.public_key(), template).marshal()


def _activate(key: Key, ek_public: bytes, name: bytes, id_object: bytes,
              enc_secret: bytes) -> bytes:
    """TPM2_ActivateCredential in software, from tpm2-pytss's primitives."""
    pub = TPM2B_PUBLIC.unmarshal(ek_public)[0].publicArea
    seed = crypto._secret_to_seed(_sensitive(key), pub, b"IDENTITY\x00",
                                  bytes(TPM2B_ENCRYPTED_SECRET.unmarshal(enc_secret)[0]))
    halg = crypto._get_digest(pub.nameAlg)
    blob = id_object[2:]
    outer, off = TPM2B_DIGEST.unmarshal(blob)
    enc = blob[off:]
    hmac_key = crypto._kdfa(pub.nameAlg, seed, b"INTEGRITY", b"", b"", halg.digest_size * 8)
    crypto._check_hmac(halg, hmac_key, enc, name, bytes(outer))
    bits = pub.parameters.asymDetail.symmetric.keyBits.sym
    sym = crypto._kdfa(pub.nameAlg, seed, b"STORAGE", name, b"", bits)
    cred, _ = TPM2B_DIGEST.unmarshal(crypto._decrypt(AES, CFB, sym, enc))
    return bytes(cred)


@pytest.mark.parametrize("template", ["EK-RSA2048", "EK-ECC256", "EK-HIGH-ECC384",
                                      "EK-HIGH-RSA2048", "EK-HIGH-RSA3072", "EK-HIGH-ECC521"])
def test_make_credential_activates_in_software(template: str) -> None:
    key, ek_public = _ek(template)
    name = b"\x00\x0b" + hashlib.sha256(b"ak").digest()
    secret = secrets.token_bytes(32)
    id_object, enc_secret = make_credential(ek_public, name, secret, secrets.token_bytes)
    assert _activate(key, ek_public, name, id_object, enc_secret) == secret
    with pytest.raises(Exception, match=r"(?i)signature|invalid"):
        _activate(key, ek_public, name[:-1] + b"\x00", id_object, enc_secret)


def test_make_credential_is_deterministic_for_ecc_with_a_fixed_rng() -> None:
    _, ek_public = _ek("EK-ECC256")
    name = b"\x00\x0b" + bytes(32)

    def rng(n: int) -> bytes:
        return (b"\x42" * n)[:n]

    assert make_credential(ek_public, name, b"s" * 32, rng) == make_credential(
        ek_public, name, b"s" * 32, rng)


@pytest.mark.parametrize(("ek", "name", "secret"), [
    (b"", b"\x00\x0b" + bytes(32), b"s"),
    ("ek", b"\x00\x0b" + bytes(31), b"s"),
    ("ek", b"\x00\x0b" + bytes(32), b""),
    ("ek", b"\x00\x0b" + bytes(32), b"s" * 33),
    ("ek", b"\x00\x99" + bytes(32), b"s"),
    ("ak", b"\x00\x0b" + bytes(32), b"s"),  # a signing key is no EK
])
def test_make_credential_refuses_bad_input(ek: bytes | str, name: bytes, secret: bytes) -> None:
    if ek == "ek":
        ek = _ek("EK-ECC256")[1]
    elif ek == "ak":
        k = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
        ek = build_public(Alg.ECC, Alg.SHA256, ObjectAttr.SIGN_ENCRYPT | ObjectAttr.RESTRICTED, b"",
                          parameters=EccParms(AES128_CFB, SCHEME_NULL, 3, SCHEME_NULL),
                          unique=EccPoint(k.x.to_bytes(32, "big"), k.y.to_bytes(32, "big"))
                          ).marshal()
    assert isinstance(ek, bytes)
    with pytest.raises(AttestgateError) as e:
        make_credential(ek, name, secret, secrets.token_bytes)
    assert e.value.code is ErrorCode.BAD_REQUEST


SRK_ATTRS = (ObjectAttr.FIXEDTPM | ObjectAttr.FIXEDPARENT | ObjectAttr.SENSITIVEDATAORIGIN
             | ObjectAttr.USERWITHAUTH | ObjectAttr.RESTRICTED | ObjectAttr.DECRYPT
             | ObjectAttr.NODA)


def _srk(kind: str) -> tuple[Key, bytes]:
    key: Key
    if kind == "ecc":
        key = ec.generate_private_key(ec.SECP256R1())
        n = key.public_key().public_numbers()
        pub = build_public(Alg.ECC, Alg.SHA256, SRK_ATTRS, b"",
                           parameters=EccParms(AES128_CFB, SCHEME_NULL, 3, SCHEME_NULL),
                           unique=EccPoint(n.x.to_bytes(32, "big"), n.y.to_bytes(32, "big")))
    else:
        key = rsa.generate_private_key(65537, 2048)
        pub = build_public(Alg.RSA, Alg.SHA256, SRK_ATTRS, b"",
                           parameters=RsaParms(AES128_CFB, SCHEME_NULL, 2048, 0),
                           unique=key.public_key().public_numbers().n.to_bytes(256, "big"))
    return key, pub.marshal()


@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_wrap_hmac_key_unwraps_with_tpm2_pytss(kind: str) -> None:
    key, srk_public = _srk(kind)
    psk = secrets.token_bytes(32)
    public, duplicate, seed = wrap_hmac_key(srk_public, psk, secrets.token_bytes)
    sens = unwrap(TPM2B_PUBLIC.unmarshal(srk_public)[0].publicArea, _sensitive(key),
                  TPM2B_PUBLIC.unmarshal(public)[0], TPM2B_PRIVATE.unmarshal(duplicate)[0],
                  TPM2B_ENCRYPTED_SECRET.unmarshal(seed)[0])
    s = sens.sensitiveArea
    assert bytes(s.sensitive.bits) == psk
    assert bytes(s.authValue) == b""
    parsed = parse_public(public)
    assert parsed.type == Alg.KEYEDHASH
    assert parsed.attributes == ObjectAttr.USERWITHAUTH | ObjectAttr.SIGN_ENCRYPT
    assert parsed.unique == hashlib.sha256(bytes(s.seedValue) + psk).digest()
    assert name_of(public) == bytes(TPM2B_PUBLIC.unmarshal(public)[0].get_name())
    assert psk not in public + duplicate + seed


@pytest.mark.parametrize("size", [0, 15, 65])
def test_wrap_refuses_bad_key_sizes(size: int) -> None:
    with pytest.raises(AttestgateError) as e:
        wrap_hmac_key(_srk("ecc")[1], b"k" * size, secrets.token_bytes)
    assert e.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("alg", [Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512])
def test_kdfs_match_tpm2_pytss(alg: int) -> None:
    key, ctx_u, ctx_v = secrets.token_bytes(32), secrets.token_bytes(40), secrets.token_bytes(9)
    for bits in (128, 256, 520):
        assert kdfa(alg, key, b"STORAGE", ctx_u, ctx_v, bits=bits) == crypto._kdfa(
            alg, key, b"STORAGE", ctx_u, ctx_v, bits)
        assert kdfe(alg, key, b"IDENTITY\x00", ctx_u, ctx_v, bits=bits) == crypto.kdfe(
            alg, key, b"IDENTITY\x00", ctx_u, ctx_v, bits)


def test_group_orders_are_the_curve_orders() -> None:
    """The ECDH scalar is reduced mod these: n - 1 must be a valid key and n must not.
    (The P-521 order once had two extra hex digits, so MakeCredential to an
    EK-HIGH-ECC521 EK failed with a foreign ValueError.)"""
    from shared.tpm.kdf import _ORDERS  # noqa: PLC0415

    for curve_id, curve in ((3, ec.SECP256R1()), (4, ec.SECP384R1()), (5, ec.SECP521R1())):
        order = _ORDERS[curve_id]
        assert order.bit_length() == curve.key_size
        ec.derive_private_key(order - 1, curve)
        with pytest.raises(ValueError):
            ec.derive_private_key(order, curve)
