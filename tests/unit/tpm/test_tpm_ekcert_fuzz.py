"""Fuzz the certificate reader and the chain check: any bytes give a result or our own error.

Inputs are mutations of real certificates (the handout test data when present, the
swtpm EK KATs, a hand-built Nuvoton-style chain) and random bytes. The count is
ATTESTGATE_FUZZ_INPUTS (default 100,000); the seed is fixed, so a failure reproduces.
"""

from __future__ import annotations

import base64
import datetime
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import der_builders as d
import pytest
import tpm_kat_data as kat
from cryptography.hazmat.primitives.asymmetric import ec
from tpm_unit_helpers import TESTDATA

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.ekcert import EkCaStore, load_ek_cert, verify_ek_chain
from shared.tpm.x509cert import build_path, parse_certificate

pytestmark = pytest.mark.fuzz

INPUTS = int(os.environ.get("ATTESTGATE_FUZZ_INPUTS", "100000"))
SEED = 0x5EED_EC
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
ALLOWED = {ErrorCode.EK_UNTRUSTED, ErrorCode.TOO_LARGE}


def _corpus() -> list[bytes]:
    out = [kat.EK_RSA_CERT, kat.EK_P384_CERT]
    key = ec.generate_private_key(ec.SECP256R1())
    name = d.nuvoton_style_name("Fuzz TPM Root CA")
    out.append(d.sign_cert(d.ca_spec(name, key), key))
    out.append(d.sign_cert(d.ek_spec(name, key.public_key()), key))
    if TESTDATA.is_dir():
        for path in sorted((TESTDATA / "ek").rglob("*")):
            if not path.is_file() or path.suffix not in {".pem", ".crt", ".cer", ".der"}:
                continue
            data = path.read_bytes()
            blocks = re.findall(rb"-----BEGIN CERTIFICATE-----(.*?)-----END", data, re.S)
            out += [base64.b64decode(b) for b in blocks] if blocks else [data]
    return out


def _mutators(rng: random.Random, corpus: list[bytes]) -> list[Callable[[bytes], bytes]]:
    def flip(b: bytes) -> bytes:
        i = rng.randrange(len(b))
        return b[:i] + bytes([b[i] ^ (1 << rng.randrange(8))]) + b[i + 1 :]

    def set_byte(b: bytes) -> bytes:
        i = rng.randrange(len(b))
        v = rng.choice((0x00, 0x7F, 0x80, 0x81, 0x82, 0x83, 0x84, 0xFF, rng.randrange(256)))
        return b[:i] + bytes([v]) + b[i + 1 :]

    def header_byte(b: bytes) -> bytes:
        # Lengths and tags sit near the start of each element; hit the first 64 bytes.
        i = rng.randrange(min(64, len(b)))
        return b[:i] + bytes([rng.randrange(256)]) + b[i + 1 :]

    def insert(b: bytes) -> bytes:
        i = rng.randrange(len(b) + 1)
        return b[:i] + rng.randbytes(rng.randrange(1, 8)) + b[i:]

    def delete(b: bytes) -> bytes:
        i = rng.randrange(len(b))
        return b[:i] + b[i + rng.randrange(1, 16) :]

    def truncate(b: bytes) -> bytes:
        return b[: rng.randrange(len(b))]

    def duplicate(b: bytes) -> bytes:
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randrange(1, 64))
        return b[:j] + b[i:j] + b[j:]

    def splice(b: bytes) -> bytes:
        other = rng.choice(corpus)
        return b[: rng.randrange(len(b))] + other[rng.randrange(len(other)) :]

    def append(b: bytes) -> bytes:
        return b + rng.choice((b"\xff" * rng.randrange(1, 40), b"\x00", rng.randbytes(3)))

    def many(b: bytes) -> bytes:
        for _ in range(rng.randrange(2, 6)):
            b = flip(b) if b else b
        return b

    return [flip, set_byte, header_byte, insert, delete, truncate, duplicate, splice, append,
            many]


def test_fuzz_certificate_reader_and_chain(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    corpus = _corpus()
    mutators = _mutators(rng, corpus)
    (tmp_path / "ca.der").write_bytes(corpus[2])
    (tmp_path / "kat.pem").write_bytes(kat.EK_CA_CERT_PEM)
    store = EkCaStore.from_dir(tmp_path)
    assert len(store.roots) == 2
    outcomes: Counter[str] = Counter()
    start = time.perf_counter()
    for n in range(INPUTS):
        if n % 10 == 0:
            data = rng.randbytes(rng.randrange(0, 300))
            if n % 20 == 0:  # random bytes behind a plausible outer header
                data = b"\x30\x82" + len(data).to_bytes(2, "big") + data
        else:
            data = rng.choice(corpus)
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                data = rng.choice(mutators)(data) if data else data
        try:
            cert = load_ek_cert(data)
        except AttestgateError as exc:
            assert exc.code in ALLOWED, (n, data.hex(), exc)
            outcomes["refused"] += 1
            continue
        outcomes["parsed"] += 1
        # Whatever parses must also go through the chain rules without a foreign error.
        try:
            build_path(cert, store.roots, store.intermediates, NOW)
            outcomes["verified"] += 1
        except AttestgateError as exc:
            assert exc.code is ErrorCode.EK_UNTRUSTED, (n, data.hex(), exc)
    elapsed = time.perf_counter() - start
    print(f"\nfuzzed {INPUTS} certificate inputs in {elapsed:.1f} s: {dict(outcomes)}")
    assert sum(outcomes[k] for k in ("refused", "parsed")) == INPUTS
    # The mutations reach past the outer header: many inputs parse, few verify.
    assert outcomes["parsed"] > INPUTS // 50


def test_fuzz_whole_chain_entry_point_on_a_sample() -> None:
    """verify_ek_chain (the attestor's call) on mutated Nuvoton-style leaves."""
    rng = random.Random(SEED + 1)
    corpus = _corpus()
    mutators = _mutators(rng, corpus)
    key = ec.generate_private_key(ec.SECP256R1())
    name = d.nuvoton_style_name("Fuzz TPM Root CA")
    root = parse_certificate(d.sign_cert(d.ca_spec(name, key), key))
    leaf = d.sign_cert(d.ek_spec(name, key.public_key()), key)
    store = EkCaStore((root,), ())
    verify_ek_chain(leaf, store, NOW)
    for _ in range(max(1, INPUTS // 50)):
        data = rng.choice(mutators)(leaf)
        try:
            verify_ek_chain(data, store, NOW)
        except AttestgateError as exc:
            assert exc.code in ALLOWED
