"""Quotes from real machines in the handout test data (T490, GCE Windows, GCE COS)."""

from __future__ import annotations

import base64
import json

import pytest
from tpm_unit_helpers import require_testdata

from shared.errors import AttestgateError, ErrorCode
from shared.tpm.attributes import check_ak
from shared.tpm.constants import Alg
from shared.tpm.marshal import tpm2b
from shared.tpm.pcrs import PcrSelection
from shared.tpm.quote import verify_quote
from shared.tpm.structures import CreationAttested, parse_attest, parse_tpmt_public


def _t490_pcrs() -> dict[int, bytes]:
    text = (require_testdata() / "eventlogs/safeboot-t490/pcrs-t490.txt").read_text()
    out = {}
    for line in text.splitlines():
        if ":" in line and "0x" in line:
            index, value = line.split(":")
            out[int(index)] = bytes.fromhex(value.strip()[2:])
    return out


def test_t490_quote() -> None:
    d = require_testdata() / "quotes/safeboot-t490"
    ak = tpm2b((d / "ak.pub").read_bytes())
    assert check_ak(ak).type == Alg.ECC
    args = {"selection": PcrSelection.parse("sha256:0,1,2,4"), "pcr_values": _t490_pcrs()}
    info = verify_quote(ak, (d / "quote.out").read_bytes(), (d / "quote.sig").read_bytes(),
                        qualifying_data=bytes.fromhex("abcdef"), **args)  # type: ignore[arg-type]
    assert info.reset_count == 35 and info.restart_count == 4
    with pytest.raises(AttestgateError) as e:
        verify_quote(ak, (d / "quote.out").read_bytes(), (d / "quote.sig").read_bytes(),
                     qualifying_data=b"abcdef", **args)  # type: ignore[arg-type]
    assert e.value.code is ErrorCode.QUOTE_BINDING


def test_gce_windows_quote_rsassa_sha1() -> None:
    d = json.loads((require_testdata()
                    / "quotes/go-attestation/windows_gcp_shielded_vm.json").read_text())
    ak_tpmt = base64.b64decode(d["AK"]["Public"])
    ak = parse_tpmt_public(ak_tpmt)
    assert ak.type == Alg.RSA
    pcrs = {p["Index"]: base64.b64decode(p["Digest"]) for p in d["Log"]["PCRs"]}
    info = verify_quote(tpm2b(ak_tpmt), base64.b64decode(d["Quote"]["Quote"]),
                        base64.b64decode(d["Quote"]["Signature"]), qualifying_data=b"",
                        selection=PcrSelection.single(Alg.SHA1, list(range(24))),
                        pcr_values=pcrs)
    assert len(info.pcr_digest) == 20
    creation = parse_attest(base64.b64decode(d["AK"]["CreateAttestation"]))
    assert isinstance(creation.attested, CreationAttested)
    assert creation.attested.object_name == ak.name


def _pb_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Just enough protobuf: (field number, varint or bytes) pairs."""
    out: list[tuple[int, int | bytes]] = []
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while i < len(data):
        key = varint()
        if key & 7 == 0:
            out.append((key >> 3, varint()))
        elif key & 7 == 2:
            n = varint()
            out.append((key >> 3, data[i:i + n]))
            i += n
        else:
            raise AssertionError(f"wire type {key & 7}")
    return out


@pytest.mark.parametrize(("name", "nonce"), [("gce-cos-85-no-nonce.pb", b""),
                                             ("gce-cos-85-nonce9009.pb", b"\x90\x09")])
def test_gce_cos_quotes_in_three_banks(name: str, nonce: bytes) -> None:
    fields = _pb_fields((require_testdata() / "quotes/go-tpm-tools" / name).read_bytes())
    ak = tpm2b(next(v for k, v in fields if k == 1 and isinstance(v, bytes)))
    banks = set()
    for k, v in fields:
        if k != 2 or not isinstance(v, bytes):
            continue
        q = dict(_pb_fields(v))
        pcr_fields = _pb_fields(q[3])  # type: ignore[arg-type]
        alg = next(x for f, x in pcr_fields if f == 1)
        values: dict[int, bytes] = {}
        for f, entry in pcr_fields:
            if f == 2 and isinstance(entry, bytes):
                kv = dict(_pb_fields(entry))
                values[kv[1]] = kv[2]  # type: ignore[index,assignment]
        assert isinstance(alg, int)
        sel = PcrSelection.single(alg, sorted(values))
        attest, sig = q[1], q[2]
        assert isinstance(attest, bytes) and isinstance(sig, bytes)
        verify_quote(ak, attest, sig, qualifying_data=nonce, selection=sel, pcr_values=values)
        banks.add(alg)
        with pytest.raises(AttestgateError) as e:
            verify_quote(ak, attest, sig, qualifying_data=nonce, selection=sel,
                         pcr_values={**values, 0: bytes(len(values[0]))})
        assert e.value.code is ErrorCode.PCR_DIGEST
    assert banks == {Alg.SHA1, Alg.SHA256, Alg.SHA384}
