"""TPM commands sent as bytes through the TCTI: unsealing a PCR-bound object, and the
commands of an attested connect whose ESAPI wrappers cost more client CPU than the TPM.

This module holds no ESAPI state: the objects named here are loaded, tracked and flushed by
ESAPI (client/tpm/objects.py); a command here only uses one by its TPM handle and makes
nothing ESAPI would have to know about (no session stays, no object is created).

Why not ESAPI: every ESAPI command authorized by a session costs ~3 ms of *client CPU*
in libtss2-esys 3.2's OpenSSL 3 backend (the session HMACs go through EVP_PKEY and
provider look-ups; perf showed OPENSSL_strcasecmp, OPENSSL_LH_doall_arg, malloc), so a
device sealed with ``--bind-pcrs`` paid StartAuthSession 0.9 ms + Unseal 2.1 ms on every
new process's first connect, against 0.3 ms for the same three commands marshalled here
and their one HMAC computed by Python's ``hmac``. libtss2 3.2 has no crypto callbacks.

What the TPM checks is unchanged: the same unbound, unsalted policy session, PolicyPCR
with an empty digest (the TPM takes the PCRs' current values), and the object's
authPolicy decides at Unseal. The command HMAC is computed as ESAPI computes it (TPM 2.0
Part 1, 19.6: key = sessionKey, empty for an unbound unsalted session without
PolicyAuthValue; over cpHash, nonceCaller, nonceTPM, attributes). The response HMAC uses
the same empty key, so checking it would prove nothing; it is not checked (nor did ESAPI's
check add anything). ``continueSession`` is clear: the TPM flushes the session when
Unseal succeeds; on any failure it is flushed here.

:func:`policy_pcr_unseal` drives the exchange over anything with ``transmit(bytes)`` and
``receive() -> bytes`` (a tpm2_pytss TCTI); the rest is pure marshalling with sizes
checked before anything is read. A TPM error is raised as :class:`TpmResponseCode`.

The connect's other commands (:func:`read_public`, :func:`hmac_sha256`, :func:`quote`,
:func:`unseal_password`) and the post's :func:`sign`. Profiled: tpm2_pytss builds and walks
Python objects around every ESAPI call (ReadPublic ~0.35 ms of profiled CPU each, Quote ~1 ms
with the TPMS_ATTEST parse and the TPML_PCR_SELECTION built from text, against ~0.1 ms for
the TCTI exchange). They need no session beyond the password one (empty authValue, as ESAPI
sends for these objects), so nothing is computed for authorization, and the answers are read
with sizes checked before anything is taken. Measured: bench/README.md, "Round 6".
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
from typing import Final, Protocol

ST_NO_SESSIONS: Final = 0x8001
ST_SESSIONS: Final = 0x8002
CC_START_AUTH_SESSION: Final = 0x176
CC_POLICY_PCR: Final = 0x17F
CC_UNSEAL: Final = 0x15E
CC_FLUSH_CONTEXT: Final = 0x165
CC_READ_PUBLIC: Final = 0x173
CC_HMAC: Final = 0x155
CC_QUOTE: Final = 0x158
CC_SIGN: Final = 0x15D
ST_HASHCHECK: Final = 0x8024
RS_PW: Final = 0x40000009
RH_NULL: Final = 0x40000007
SE_POLICY: Final = 0x01
ALG_NULL: Final = 0x0010
ALG_SHA256: Final = 0x000B
NONCE_LEN: Final = 32
SHA256_NAME_LEN: Final = 34  # nameAlg (2) || SHA-256 (32)
MAX_RESPONSE: Final = 4096  # an Unseal answer is at most ~200 bytes, a Quote's ~300
MAX_HMAC_DATA: Final = 1024  # TPM2B_MAX_BUFFER
MAX_QUOTE_DATA: Final = 64  # TPM2B_DATA
# A password session with the empty authValue: handle, nonceCaller, attributes, hmac.
_PASSWORD_AUTH: Final = struct.pack(">IIHBH", 9, RS_PW, 0, 0, 0)
_HEADER: Final = struct.Struct(">HII")
# TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING: answers ESAPI resubmits, at most
# ESYS_MAX_SUBMISSIONS (5) times in all (libtpms answers RETRY now and then, e.g. after a
# ContextLoad).
RESUBMIT: Final = frozenset({0x922, 0x908, 0x90A})
MAX_SUBMISSIONS: Final = 5


class TpmResponseCode(Exception):
    """The TPM answered with ``rc`` != 0 (or something that is not a TPM answer: rc 0x101,
    TPM_RC_FAILURE, after which the caller treats the TPM as failed)."""

    def __init__(self, rc: int) -> None:
        super().__init__(f"rc=0x{rc:x}")
        self.rc = rc


class Transport(Protocol):
    def transmit(self, data: bytes) -> None: ...

    def receive(self) -> bytes: ...


# -- marshalling (pure) ------------------------------------------------------------------------


def command(tag: int, code: int, body: bytes) -> bytes:
    return _HEADER.pack(tag, _HEADER.size + len(body), code) + body


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def start_policy_session(nonce_caller: bytes) -> bytes:
    """TPM2_StartAuthSession: no tpmKey, no bind, policy, symmetric NULL, SHA-256."""
    return command(ST_NO_SESSIONS, CC_START_AUTH_SESSION,
                   struct.pack(">II", RH_NULL, RH_NULL) + tpm2b(nonce_caller) + tpm2b(b"")
                   + struct.pack(">BHH", SE_POLICY, ALG_NULL, ALG_SHA256))


def policy_pcr(session: int, selection: bytes) -> bytes:
    """TPM2_PolicyPCR with an empty pcrDigest; ``selection`` a marshalled TPML_PCR_SELECTION."""
    return command(ST_NO_SESSIONS, CC_POLICY_PCR,
                   struct.pack(">I", session) + tpm2b(b"") + selection)


def unseal(item: int, item_name: bytes, session: int, nonce_caller: bytes,
           nonce_tpm: bytes) -> bytes:
    """TPM2_Unseal authorized by the policy ``session`` (continueSession clear)."""
    attributes = 0
    cp_hash = hashlib.sha256(struct.pack(">I", CC_UNSEAL) + item_name).digest()
    mac = hmac.new(b"", cp_hash + nonce_caller + nonce_tpm + bytes([attributes]),
                   "sha256").digest()
    auth = struct.pack(">I", session) + tpm2b(nonce_caller) + bytes([attributes]) + tpm2b(mac)
    return command(ST_SESSIONS, CC_UNSEAL,
                   struct.pack(">I", item) + struct.pack(">I", len(auth)) + auth)


def read_public(handle: int) -> bytes:
    """TPM2_ReadPublic (no authorization)."""
    return command(ST_NO_SESSIONS, CC_READ_PUBLIC, struct.pack(">I", handle))


def hmac_sha256(handle: int, data: bytes) -> bytes:
    """TPM2_HMAC with SHA-256 of ``data`` (at most MAX_HMAC_DATA) by the keyedhash object."""
    if len(data) > MAX_HMAC_DATA:
        raise ValueError("HMAC data over TPM2B_MAX_BUFFER")
    return command(ST_SESSIONS, CC_HMAC, struct.pack(">I", handle) + _PASSWORD_AUTH
                   + tpm2b(data) + struct.pack(">H", ALG_SHA256))


def quote(handle: int, qualifying_data: bytes, selection: bytes) -> bytes:
    """TPM2_Quote by the signing key ``handle`` with its own scheme (inScheme NULL);
    ``selection`` a marshalled TPML_PCR_SELECTION."""
    if len(qualifying_data) > MAX_QUOTE_DATA:
        raise ValueError("qualifying data over TPM2B_DATA")
    return command(ST_SESSIONS, CC_QUOTE, struct.pack(">I", handle) + _PASSWORD_AUTH
                   + tpm2b(qualifying_data) + struct.pack(">H", ALG_NULL) + selection)


def sign(handle: int, digest: bytes) -> bytes:
    """TPM2_Sign of a 32-byte ``digest`` by the (unrestricted) signing key ``handle`` with
    its own scheme, validation the NULL-hierarchy HASHCHECK ticket (what ESAPI sends by
    default; TPM2_Sign accepts it for keys that are not restricted)."""
    if len(digest) != 32:
        raise ValueError("a SHA-256 digest is needed")
    return command(ST_SESSIONS, CC_SIGN, struct.pack(">I", handle) + _PASSWORD_AUTH
                   + tpm2b(digest) + struct.pack(">H", ALG_NULL)
                   + struct.pack(">HI", ST_HASHCHECK, RH_NULL) + tpm2b(b""))


def unseal_password(item: int) -> bytes:
    """TPM2_Unseal of an object whose authValue is empty (userWithAuth)."""
    return command(ST_SESSIONS, CC_UNSEAL, struct.pack(">I", item) + _PASSWORD_AUTH)


def flush_context(handle: int) -> bytes:
    return command(ST_NO_SESSIONS, CC_FLUSH_CONTEXT, struct.pack(">I", handle))


def response(data: bytes) -> bytes:
    """The parameters of a TPM response; TpmResponseCode for an error or a malformed answer."""
    if not _HEADER.size <= len(data) <= MAX_RESPONSE:
        raise TpmResponseCode(0x101)
    _tag, size, rc = _HEADER.unpack_from(data)
    if rc != 0:
        raise TpmResponseCode(rc)
    if size != len(data):
        raise TpmResponseCode(0x101)
    return data[_HEADER.size:]


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise TpmResponseCode(0x101)
    return data[pos:pos + n], pos + n


def _take_tpm2b(data: bytes, pos: int) -> tuple[bytes, int]:
    raw, pos = _take(data, pos, 2)
    return _take(data, pos, struct.unpack(">H", raw)[0])


def parse_start_session(body: bytes) -> tuple[int, bytes]:
    """(session handle, nonceTPM)."""
    raw, pos = _take(body, 0, 4)
    nonce, pos = _take_tpm2b(body, pos)
    if pos != len(body) or not nonce:
        raise TpmResponseCode(0x101)
    return struct.unpack(">I", raw)[0], nonce


def parse_unseal(body: bytes) -> bytes:
    """outData of a TPM2_Unseal response with one session (parameterSize, data, auth)."""
    raw, pos = _take(body, 0, 4)
    (parameter_size,) = struct.unpack(">I", raw)
    data, end = _take_tpm2b(body, pos)
    if end - pos != parameter_size:
        raise TpmResponseCode(0x101)
    return data


def _password_parameters(body: bytes) -> bytes:
    """The parameter area of an answer to a command with the password session: parameterSize,
    the parameters, then that session's answer (empty nonce, attributes, empty hmac)."""
    raw, pos = _take(body, 0, 4)
    params, pos = _take(body, pos, struct.unpack(">I", raw)[0])
    auth = body[pos:]
    if len(auth) != 5 or auth[:2] != b"\0\0" or auth[3:] != b"\0\0":
        raise TpmResponseCode(0x101)
    return params


def _one_tpm2b(params: bytes) -> bytes:
    data, pos = _take_tpm2b(params, 0)
    if pos != len(params):
        raise TpmResponseCode(0x101)
    return data


def parse_hmac(body: bytes) -> bytes:
    """outHMAC of a TPM2_HMAC answer (SHA-256: 32 bytes)."""
    digest = _one_tpm2b(_password_parameters(body))
    if len(digest) != 32:
        raise TpmResponseCode(0x101)
    return digest


def parse_password_unseal(body: bytes) -> bytes:
    """outData of a TPM2_Unseal answer (:func:`unseal_password`)."""
    return _one_tpm2b(_password_parameters(body))


def parse_quote(body: bytes) -> tuple[bytes, bytes]:
    """(TPMS_ATTEST, marshalled TPMT_SIGNATURE) of a TPM2_Quote answer. The signature is the
    rest of the parameter area; its content is the caller's to check."""
    params = _password_parameters(body)
    attest, pos = _take_tpm2b(params, 0)
    if not attest or pos >= len(params):
        raise TpmResponseCode(0x101)
    return attest, params[pos:]


def parse_sign(body: bytes) -> bytes:
    """The marshalled TPMT_SIGNATURE of a TPM2_Sign answer (its content is the caller's to
    check)."""
    signature = _password_parameters(body)
    if not signature:
        raise TpmResponseCode(0x101)
    return signature


def parse_read_public(body: bytes) -> tuple[bytes, bytes, bytes]:
    """(marshalled TPM2B_PUBLIC, name, qualifiedName) of a TPM2_ReadPublic response."""
    size, pos = _take(body, 0, 2)
    _, pos = _take(body, pos, struct.unpack(">H", size)[0])
    public = body[:pos]
    name, pos = _take_tpm2b(body, pos)
    qualified, pos = _take_tpm2b(body, pos)
    if pos != len(body) or len(public) == 2 or not name or not qualified:
        raise TpmResponseCode(0x101)
    return public, name, qualified


# -- the exchange ------------------------------------------------------------------------------


def _call(tpm: Transport, cmd: bytes) -> bytes:
    for _ in range(MAX_SUBMISSIONS - 1):
        tpm.transmit(cmd)
        try:
            return response(bytes(tpm.receive()))
        except TpmResponseCode as exc:
            # The TPM did not start the command: send it again, as ESAPI does (same bytes:
            # nothing changed in the TPM, a session's nonceTPM included).
            if exc.rc not in RESUBMIT:
                raise
    tpm.transmit(cmd)
    return response(bytes(tpm.receive()))


def call(tpm: Transport, cmd: bytes) -> bytes:
    """Send ``cmd`` and return the parameters of the answer (TpmResponseCode otherwise)."""
    return _call(tpm, cmd)


def policy_pcr_unseal(tpm: Transport, item: int, item_name: bytes, selection: bytes) -> bytes:
    """Unseal the loaded object ``item`` (TPM handle; ``item_name`` its SHA-256 name) under
    PolicyPCR(``selection``); the session is gone afterwards, whatever happened."""
    if len(item_name) != SHA256_NAME_LEN or item_name[:2] != struct.pack(">H", ALG_SHA256):
        raise ValueError("a SHA-256 name is needed")
    session, nonce_tpm = parse_start_session(
        _call(tpm, start_policy_session(os.urandom(NONCE_LEN))))
    try:
        _call(tpm, policy_pcr(session, selection))
        data = parse_unseal(_call(tpm, unseal(item, item_name, session,
                                               os.urandom(NONCE_LEN), nonce_tpm)))
    except BaseException:
        with contextlib.suppress(Exception):  # the first error is the one to report
            _call(tpm, flush_context(session))
        raise
    return data
