"""Fuzz every TPM structure and evidence check, and EK certificate loading.

Seeds are real: the swtpm known-answer blobs (``tpm_kat_data``), structures built
from the specification with software keys (``tpm_builders``, ``tpm_unit_helpers``),
and, when the handout folder is there, quotes and EK certificates of real machines
(``/work/shared/testdata``). Verification targets mutate one piece of a genuine
piece of evidence at a time, so most inputs get past the cheap checks and reach
the signature (the costly ~50 µs step) only when they are well-formed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tpm_kat_data as kat
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from tpm_builders import post_key_public, sign_digest
from tpm_unit_helpers import certify_attest, ecc_public, ecdsa_sig, quote_attest

from shared.errors import AttestgateError
from shared.tpm.attributes import check_ak, check_post_key, check_srk
from shared.tpm.certify import verify_certify
from shared.tpm.constants import Alg
from shared.tpm.credential import make_credential, wrap_hmac_key
from shared.tpm.ekcert import (
    EkCaStore,
    check_ek_allowlist,
    ek_fingerprint,
    ek_matches_cert,
    load_ek_cert,
    trim_der,
    verify_ek_chain,
)
from shared.tpm.kdf import kdfa, kdfe
from shared.tpm.marshal import tpm2b
from shared.tpm.pcrs import PcrSelection, pcr_diff, pcr_digest
from shared.tpm.quote import verify_quote
from shared.tpm.signature import verify_ecdsa_signature
from shared.tpm.structures import (
    name_of,
    parse_attest,
    parse_public,
    parse_signature,
    parse_tpmt_public,
    to_crypto_key,
)
from shared.tpm.x509cert import parse_certificate
from shared.wire import MAX_EVIDENCE_FIELD
from tests.support.fuzz import FUZZ_INPUTS, Mutator, run

# A loaded CI machine may run a target several times slower than its ~10-60 s here; the
# per-input hang check (tests.support.fuzz.HANG_S) is what catches a hang.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

TESTDATA = Path("/work/shared/testdata")
NOW = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
SEL8 = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7")
PCRS = {i: hashlib.sha256(bytes([i])).digest() for i in range(8)}
KEY = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP256R1())  # deterministic software AK
AK = ecc_public(KEY).marshal()
POST_KEY = ec.derive_private_key(0xFEDCBA0987654321, ec.SECP256R1())
POST_PUBLIC = post_key_public(POST_KEY)
NONCE = b"n" * 32
KAT_PCRS = {i: kat.QUOTE_PCRS[32 * i: 32 * i + 32] for i in range(8)}


def _one(*calls: Callable[[], object]) -> int:
    """Run each call; every one must return or raise our own error. Returns how many returned."""
    ok = 0
    for call in calls:
        try:
            call()
            ok += 1
        except AttestgateError:
            pass
    return ok


# -- real data from the handout folder (optional) ------------------------------------------


def _testdata() -> dict[str, Any]:
    """Quotes and certificates of real machines; empty when the folder is absent."""
    if not TESTDATA.is_dir():
        return {}
    out: dict[str, Any] = {}
    t490 = TESTDATA / "quotes/safeboot-t490"
    pcrs = {}
    for line in (TESTDATA / "eventlogs/safeboot-t490/pcrs-t490.txt").read_text().splitlines():
        if ":" in line and "0x" in line:
            index, value = line.split(":")
            pcrs[int(index)] = bytes.fromhex(value.strip()[2:])
    out["t490"] = (tpm2b((t490 / "ak.pub").read_bytes()), (t490 / "quote.out").read_bytes(),
                   (t490 / "quote.sig").read_bytes(), bytes.fromhex("abcdef"),
                   PcrSelection.parse("sha256:0,1,2,4"), {i: pcrs[i] for i in (0, 1, 2, 4)})
    out["ek_pub_t490"] = (t490 / "ek.pub").read_bytes()
    win = json.loads((TESTDATA / "quotes/go-attestation/windows_gcp_shielded_vm.json").read_text())
    wpcrs = {p["Index"]: base64.b64decode(p["Digest"]) for p in win["Log"]["PCRs"]}
    out["windows"] = (tpm2b(base64.b64decode(win["AK"]["Public"])),
                      base64.b64decode(win["Quote"]["Quote"]),
                      base64.b64decode(win["Quote"]["Signature"]), b"",
                      PcrSelection.single(Alg.SHA1, list(range(24))), wpcrs)
    out["windows_creation"] = base64.b64decode(win["AK"]["CreateAttestation"])
    certs = []
    for path in sorted((TESTDATA / "ek").glob("*/*")):
        if path.is_file() and path.suffix in (".der", ".pem"):
            data = path.read_bytes()
            certs.append(x509.load_pem_x509_certificate(data).public_bytes(Encoding.DER)
                         if data.startswith(b"-----") else data)
    out["certs"] = certs
    return out


REAL = _testdata()


def test_real_testdata_seeds_are_used() -> None:
    """The fuzz seeds include real machines' quotes and EK certificates when present."""
    if not REAL:
        pytest.skip(f"{TESTDATA} absent: fuzzing with the in-repo swtpm and software seeds only")
    assert REAL["certs"] and REAL["t490"] and REAL["windows"]


# -- structures ------------------------------------------------------------------------------


def _public_seeds() -> list[bytes]:
    seeds = [kat.EK_RSA_PUBLIC, kat.EK_P384_PUBLIC, kat.AK_PUBLIC, kat.SRK_PUBLIC,
             kat.POST_PUBLIC, AK, POST_PUBLIC]
    public, _, _ = wrap_hmac_key(kat.SRK_PUBLIC, b"k" * 32, random.Random(1).randbytes)
    seeds.append(public)  # a KEYEDHASH object
    if REAL:
        seeds += [REAL["t490"][0], REAL["windows"][0], REAL["ek_pub_t490"]]
    return seeds


def _mutator(seeds: list[bytes], *, dictionary: list[bytes] | None = None) -> Mutator:
    words = [v.to_bytes(2, "big") for v in (Alg.RSA, Alg.ECC, Alg.KEYEDHASH, Alg.SYMCIPHER,
                                             Alg.NULL, Alg.SHA1, Alg.SHA256, Alg.SHA384,
                                             Alg.ECDSA, Alg.RSASSA, Alg.RSAPSS, Alg.AES, Alg.CFB,
                                             0x8017, 0x8018, 0x801A)]
    return Mutator(random.Random(0), seeds, max_len=MAX_EVIDENCE_FIELD + 16,
                   dictionary=words + [b"\xff\x54\x43\x47"] + (dictionary or []))


def _bytes_target(gen: Mutator) -> Callable[[random.Random], bytes]:
    def generate(rng: random.Random) -> bytes:
        gen.rng = rng
        if rng.random() < 0.002:
            return rng.randbytes(MAX_EVIDENCE_FIELD + 1)
        return gen()
    return generate


def test_fuzz_parse_public_and_key_checks() -> None:
    def check(data: bytes) -> None:
        pub = parse_public(data)
        assert pub.marshal() == data  # the record keeps the exact bytes the name covers
        assert parse_tpmt_public(data[2:]).tpmt == pub.tpmt
        _one(lambda: pub.name, lambda: name_of(data), lambda: to_crypto_key(pub),
             lambda: check_ak(data), lambda: check_srk(data), lambda: check_post_key(data),
             lambda: ek_fingerprint(data))

    result = run("tpm parse_public + key checks", _bytes_target(_mutator(_public_seeds())), check)
    assert result.inputs >= FUZZ_INPUTS


def _signature_seeds() -> list[bytes]:
    seeds = [kat.QUOTE_SIGNATURE, kat.CERTIFY_SRK_SIGNATURE, kat.POST_SIGNATURE,
             ecdsa_sig(KEY, b"x")]
    if REAL:
        seeds += [REAL["t490"][2], REAL["windows"][2]]
    return seeds


def test_fuzz_parse_signature() -> None:
    def check(data: bytes) -> None:
        sig = parse_signature(data)
        assert sig.hash_alg in (Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512)

    gen = _mutator(_signature_seeds())
    assert run("tpm parse_signature", _bytes_target(gen), check).inputs >= FUZZ_INPUTS


def _attest_seeds() -> list[bytes]:
    seeds = [kat.QUOTE_ATTEST, kat.CERTIFY_SRK_ATTEST, quote_attest(PCRS),
             certify_attest(name_of(POST_PUBLIC))]
    if REAL:
        seeds += [REAL["t490"][1], REAL["windows"][1], REAL["windows_creation"]]
    return seeds


def test_fuzz_parse_attest() -> None:
    def check(data: bytes) -> None:
        att = parse_attest(data)
        assert att.type in (0x8017, 0x8018, 0x801A)

    gen = _mutator(_attest_seeds())
    assert run("tpm parse_attest (TPMS_ATTEST)", _bytes_target(gen), check).inputs >= FUZZ_INPUTS


def test_fuzz_pcr_selection_bytes_and_digest() -> None:
    seeds = [SEL8.marshal(), PcrSelection.parse("sha1:0,7+sha256:1,23").marshal(),
             bytes.fromhex("00000001000b03ff0000"), bytes.fromhex("00000000"),
             bytes.fromhex("00000002000403ffffff000b0517000000ff")]

    def generate(rng: random.Random) -> tuple[bytes, dict[int, bytes]]:
        gen.rng = rng
        values = {i: rng.randbytes(rng.choice((20, 32, 32, 48, 0))) for i in
                  rng.sample(range(24), rng.randrange(9))}
        return gen(), values

    def check(case: tuple[bytes, dict[int, bytes]]) -> None:
        data, values = case
        sel = PcrSelection.from_bytes(data)
        again = PcrSelection.from_bytes(sel.marshal())
        assert again == sel  # normalised: any bitmap length marshals to the same selection
        if sel.banks:
            values.update(dict.fromkeys(sel.banks[0].indices[:2], b"\x00" * 32))
            _one(lambda: pcr_digest(Alg.SHA256, sel, {sel.banks[0].hash_alg: values}),
                 lambda: pcr_digest(0x1234, sel, {}))
        pcr_diff(PCRS, values)

    gen = _mutator(seeds)
    assert run("tpm TPML_PCR_SELECTION + pcr_digest", generate, check).inputs >= FUZZ_INPUTS


def test_fuzz_pcr_selection_text() -> None:
    seeds = [b"sha256:0,1,2,3,4,5,6,7", b"sha1:0,7+sha256:1,23", b"SHA384:", b"sha512:0",
             b"sha256:0,1+sha256:2"]

    def check(data: bytes) -> None:
        sel = PcrSelection.parse(data.decode("utf-8", "replace"))
        assert PcrSelection.parse(str(sel)) == sel

    gen = Mutator(random.Random(0), seeds, max_len=256,
                  dictionary=[b",", b"+", b":", b"sha1", b"sha256", b"99", b"-1", b"\xd9\xa3",
                              b" ", b"0x10", b"\xef\xbc\x91"])
    assert run("tpm PcrSelection.parse (text)", _bytes_target(gen), check).inputs >= FUZZ_INPUTS


# -- evidence verification -------------------------------------------------------------------


@dataclass(frozen=True)
class QuoteCase:
    ak: bytes
    attest: bytes
    signature: bytes
    nonce: bytes
    selection: PcrSelection
    pcrs: dict[int, bytes]


def _quote_cases() -> list[QuoteCase]:
    sw = quote_attest(PCRS, extra=NONCE)
    cases = [QuoteCase(kat.AK_PUBLIC, kat.QUOTE_ATTEST, kat.QUOTE_SIGNATURE, kat.NONCE, SEL8,
                       KAT_PCRS),
             QuoteCase(AK, sw, ecdsa_sig(KEY, sw), NONCE, SEL8, PCRS)]
    for name in ("t490", "windows") if REAL else ():
        cases.append(QuoteCase(*REAL[name]))
    return cases


def _mutate_one(rng: random.Random, gen: Mutator, fields: list[bytes]) -> tuple[int, bytes]:
    index = rng.randrange(len(fields))
    if rng.random() < 0.1:  # a genuine piece of another case: cross-evidence splicing
        return index, rng.choice(gen.seeds)
    return index, gen.mutate(fields[index])


def test_fuzz_verify_quote() -> None:
    cases = _quote_cases()
    for c in cases:  # the seeds verify
        verify_quote(c.ak, c.attest, c.signature, qualifying_data=c.nonce,
                     selection=c.selection, pcr_values=c.pcrs)
    gen = _mutator([b for c in cases for b in (c.ak, c.attest, c.signature)])

    def generate(rng: random.Random) -> QuoteCase:
        gen.rng = rng
        c = rng.choice(cases)
        fields = [c.ak, c.attest, c.signature, c.nonce]
        if rng.random() < 0.1:
            pcrs = dict(c.pcrs)
            k = rng.choice(sorted(pcrs))
            pcrs[k] = gen.mutate(pcrs[k]) if rng.random() < 0.5 else b"\x00" * len(pcrs[k])
            return QuoteCase(*fields, c.selection, pcrs)  # type: ignore[misc]
        index, value = _mutate_one(rng, gen, fields)
        fields[index] = value
        return QuoteCase(*fields, c.selection, c.pcrs)  # type: ignore[misc]

    def check(c: QuoteCase) -> None:
        info = verify_quote(c.ak, c.attest, c.signature, qualifying_data=c.nonce,
                            selection=c.selection, pcr_values=c.pcrs)
        assert info.selection == c.selection

    assert run("tpm verify_quote", generate, check).inputs >= FUZZ_INPUTS


def test_fuzz_verify_certify_and_post_signature() -> None:
    post_name = name_of(POST_PUBLIC)
    sw = certify_attest(post_name, extra=NONCE)
    certify = [(kat.AK_PUBLIC, kat.CERTIFY_SRK_ATTEST, kat.CERTIFY_SRK_SIGNATURE, kat.SRK_PUBLIC,
                kat.NONCE), (AK, sw, ecdsa_sig(KEY, sw), POST_PUBLIC, NONCE)]
    digest = hashlib.sha256(b"post").digest()
    posts = [(kat.POST_PUBLIC, kat.POST_SIGNATURE, kat.POST_DIGEST),
             (POST_PUBLIC, sign_digest(POST_KEY, digest), digest)]
    for a, att, sig, pub, nonce in certify:
        verify_certify(a, att, sig, certified_public=pub, qualifying_data=nonce)
    for pub, sig, dig in posts:
        verify_ecdsa_signature(pub, sig, dig)
    gen = _mutator([b for case in (*certify, *posts) for b in case])

    def generate(rng: random.Random) -> tuple[str, list[bytes]]:
        gen.rng = rng
        kind = "certify" if rng.random() < 0.6 else "post"
        fields = list(rng.choice(certify if kind == "certify" else posts))
        index, value = _mutate_one(rng, gen, fields)
        fields[index] = value
        return kind, fields

    def check(case: tuple[str, list[bytes]]) -> None:
        kind, f = case
        if kind == "certify":
            verify_certify(f[0], f[1], f[2], certified_public=f[3], qualifying_data=f[4])
        else:
            verify_ecdsa_signature(f[0], f[1], f[2])

    assert run("tpm verify_certify + post signature", generate, check).inputs >= FUZZ_INPUTS


def test_fuzz_credential_and_kdf() -> None:
    """MakeCredential and key wrapping to mutated EK/SRK publics; KDFs on odd arguments."""
    ak_name = name_of(kat.AK_PUBLIC)
    parents = [kat.EK_RSA_PUBLIC, kat.EK_P384_PUBLIC, kat.SRK_PUBLIC]
    make_credential(kat.EK_RSA_PUBLIC, ak_name, b"c" * 32, random.Random(0).randbytes)
    gen = _mutator([*parents, ak_name])
    algs = (Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512, Alg.NULL, 0, 0xFFFF)

    def generate(rng: random.Random) -> tuple[str, Any]:
        gen.rng = rng
        roll = rng.random()
        if roll < 0.45:
            ek = gen.mutate(rng.choice(parents)) if rng.random() < 0.8 else rng.choice(parents)
            name = gen.mutate(ak_name) if rng.random() < 0.3 else ak_name
            secret = rng.randbytes(rng.choice((0, 1, 16, 32, 48, 64, 65)))
            return "make_credential", (ek, name, secret, rng.randbytes)
        if roll < 0.8:
            srk = gen.mutate(rng.choice(parents))
            key = rng.randbytes(rng.choice((0, 15, 16, 32, 64, 65)))
            return "wrap_hmac_key", (srk, key, rng.randbytes)
        bits = rng.choice((0, -8, 7, 8, 128, 256, 1000, 4096))
        return rng.choice(("kdfa", "kdfe")), (rng.choice(algs), rng.randbytes(
            rng.randrange(80)), rng.randbytes(rng.randrange(16)), rng.randbytes(
            rng.randrange(40)), rng.randbytes(rng.randrange(40)), bits)

    def check(case: tuple[str, Any]) -> None:
        kind, args = case
        if kind == "make_credential":
            id_object, secret = make_credential(*args)
            assert id_object and secret
        elif kind == "wrap_hmac_key":
            public, _dup, _seed = wrap_hmac_key(*args)
            assert parse_public(public).type == Alg.KEYEDHASH
        else:
            alg, key, label, u, v, bits = args
            out = (kdfa if kind == "kdfa" else kdfe)(alg, key, label, u, v, bits=bits)
            assert len(out) == bits // 8

    assert run("tpm credential/wrap + kdfa/kdfe", generate, check).inputs >= FUZZ_INPUTS


# -- EK certificates ---------------------------------------------------------------------------


# A serial number <= 0 breaks RFC 5280; cryptography still loads such a certificate with
# this deprecation warning (an error only under -W error, as here). Some TPM vendors'
# EK certificates had such serials; refusing them is cryptography's call to make.
@pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")
def test_fuzz_ek_certificate_loading() -> None:
    """load_ek_cert (with NV padding), the EK-public match, allowlist, and the chain check."""
    certs = [kat.EK_RSA_CERT, kat.EK_P384_CERT, kat.EK_RSA_CERT + b"\xff" * 300,
             *REAL.get("certs", [])]
    ca = parse_certificate(x509.load_pem_x509_certificate(kat.EK_CA_CERT_PEM)
                           .public_bytes(Encoding.DER))
    store = EkCaStore((ca,), ())
    ek_for = {kat.EK_RSA_CERT: kat.EK_RSA_PUBLIC, kat.EK_P384_CERT: kat.EK_P384_PUBLIC}
    verify_ek_chain(kat.EK_RSA_CERT, store, datetime.datetime.now(datetime.UTC))
    gen = Mutator(random.Random(0), certs, max_len=MAX_EVIDENCE_FIELD + 16,
                  dictionary=[b"\x30\x82", b"\x30\x81", b"\x30\x83\xff\xff\xff", b"\x02\x01\x00",
                              b"\x06\x03\x55\x1d\x13", b"\x01\x01\xff", b"\xa0\x03"])
    loaded = 0

    def generate(rng: random.Random) -> tuple[bytes, bytes]:
        gen.rng = rng
        ek = rng.choice((kat.EK_RSA_PUBLIC, kat.EK_P384_PUBLIC))
        if rng.random() < 0.05:
            return gen.mutate(kat.EK_RSA_CERT)[:rng.randrange(8)], ek
        return gen(), ek

    def check(case: tuple[bytes, bytes]) -> None:
        nonlocal loaded
        data, ek = case
        cert = load_ek_cert(data)
        assert data.startswith(trim_der(data))
        loaded += 1
        _one(lambda: ek_matches_cert(ek_for.get(data, ek), cert),
             lambda: check_ek_allowlist(ek, ["00" * 32]))
        # A chain check costs ~1 ms: every parsable certificate for the first 2,000, then
        # one in 8 (always, the same ones for a given seed).
        if loaded <= 2000 or loaded % 8 == 0:
            verify_ek_chain(data, store, NOW)

    assert run("tpm EK certificate loading", generate, check).inputs >= FUZZ_INPUTS
