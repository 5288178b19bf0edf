"""client/tpm/rawcmd.py without a TPM: the bytes of the three commands of a PCR-bound unseal,
the HMAC as TPM 2.0 Part 1 §19.6 defines it, and answers that are not well-formed."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from tpm2_pytss.types import TPML_PCR_SELECTION

from client.tpm import rawcmd

NAME = b"\x00\x0b" + bytes(range(32))
SEL = bytes(TPML_PCR_SELECTION.parse("sha256:0,7,16").marshal())


def test_start_policy_session_bytes() -> None:
    nonce = bytes(range(32))
    assert rawcmd.start_policy_session(nonce) == (
        struct.pack(">HII", 0x8001, 10 + 8 + 34 + 2 + 1 + 4, 0x176)
        + struct.pack(">II", 0x40000007, 0x40000007) + b"\x00\x20" + nonce + b"\x00\x00"
        + b"\x01" + b"\x00\x10" + b"\x00\x0b")


def test_policy_pcr_bytes() -> None:
    assert rawcmd.policy_pcr(0x03000000, SEL) == (
        struct.pack(">HII", 0x8001, 10 + 4 + 2 + len(SEL), 0x17F)
        + struct.pack(">I", 0x03000000) + b"\x00\x00" + SEL)


def test_unseal_bytes_and_hmac() -> None:
    caller, tpm_nonce = b"c" * 32, b"t" * 32
    cmd = rawcmd.unseal(0x80000001, NAME, 0x03000000, caller, tpm_nonce)
    tag, size, code = struct.unpack_from(">HII", cmd)
    assert (tag, size, code) == (0x8002, len(cmd), 0x15E)
    item, auth_size, session = struct.unpack_from(">III", cmd, 10)
    assert (item, auth_size, session) == (0x80000001, len(cmd) - 18, 0x03000000)
    assert cmd[22:24] == b"\x00\x20" and cmd[24:56] == caller
    assert cmd[56] == 0  # continueSession clear: the TPM flushes the session
    cp_hash = hashlib.sha256(struct.pack(">I", 0x15E) + NAME).digest()
    expected = hmac.new(b"", cp_hash + caller + tpm_nonce + b"\x00", hashlib.sha256).digest()
    assert cmd[57:59] == b"\x00\x20" and cmd[59:] == expected


def test_responses() -> None:
    ok = struct.pack(">HII", 0x8001, 10 + 4 + 34, 0) + struct.pack(">I", 0x03000000) \
        + b"\x00\x20" + b"n" * 32
    assert rawcmd.parse_start_session(rawcmd.response(ok)) == (0x03000000, b"n" * 32)
    body = struct.pack(">I", 34) + b"\x00\x20" + b"s" * 32 + b"\x00\x20" + b"n" * 32 + b"\x01" \
        + b"\x00\x20" + b"h" * 32
    assert rawcmd.parse_unseal(body) == b"s" * 32


@pytest.mark.parametrize(("data", "rc"), [
    (b"", 0x101),
    (struct.pack(">HII", 0x8001, 10, 0x99D), 0x99D),  # the TPM's own error
    (struct.pack(">HII", 0x8001, 11, 0), 0x101),  # size field says otherwise
    (struct.pack(">HII", 0x8001, 10, 0) + bytes(rawcmd.MAX_RESPONSE), 0x101),
])
def test_error_and_malformed_answers(data: bytes, rc: int) -> None:
    with pytest.raises(rawcmd.TpmResponseCode) as err:
        rawcmd.response(data)
    assert err.value.rc == rc


@pytest.mark.parametrize("body", [
    b"", struct.pack(">I", 3), struct.pack(">I", 1) + b"\x00\x20",
    struct.pack(">I", 99) + b"\x00\x01x", struct.pack(">I", 34) + b"\x00\x20" + b"s" * 31,
])
def test_malformed_unseal_answers(body: bytes) -> None:
    with pytest.raises(rawcmd.TpmResponseCode):
        rawcmd.parse_unseal(body)


@pytest.mark.parametrize("body", [
    b"", struct.pack(">I", 1), struct.pack(">IH", 1, 0), struct.pack(">IH", 1, 2) + b"ab" + b"x",
])
def test_malformed_session_answers(body: bytes) -> None:
    with pytest.raises(rawcmd.TpmResponseCode):
        rawcmd.parse_start_session(body)


class Recording:
    """A TPM that answers from a script: what the exchange sends, in order."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.sent: list[int] = []

    def transmit(self, data: bytes) -> None:
        self.sent.append(struct.unpack_from(">I", data, 6)[0])

    def receive(self) -> bytes:
        return self.answers.pop(0)


def _answer(body: bytes = b"", rc: int = 0) -> bytes:
    return struct.pack(">HII", 0x8001, 10 + len(body), rc) + body


def test_a_refused_unseal_flushes_the_session() -> None:
    tpm = Recording([_answer(struct.pack(">I", 0x03000000) + b"\x00\x20" + b"n" * 32),
                     _answer(), _answer(rc=0x99D), _answer()])
    with pytest.raises(rawcmd.TpmResponseCode) as err:
        rawcmd.policy_pcr_unseal(tpm, 0x80000001, NAME, SEL)
    assert err.value.rc == 0x99D
    assert tpm.sent == [0x176, 0x17F, 0x15E, 0x165]


def test_a_successful_unseal_leaves_the_flush_to_the_tpm() -> None:
    body = struct.pack(">I", 34) + b"\x00\x20" + b"s" * 32 + b"\x00\x20" + b"n" * 32 + b"\x01" \
        + b"\x00\x00"
    tpm = Recording([_answer(struct.pack(">I", 0x03000000) + b"\x00\x20" + b"n" * 32),
                     _answer(), _answer(body)])
    assert rawcmd.policy_pcr_unseal(tpm, 0x80000001, NAME, SEL) == b"s" * 32
    assert tpm.sent == [0x176, 0x17F, 0x15E]


def test_only_sha256_names() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        rawcmd.policy_pcr_unseal(Recording([]), 0x80000001, b"\x00\x04" + bytes(20), SEL)
