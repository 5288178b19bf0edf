"""Baselines measured in the bench run itself, on the same machine and the same swtpm.

* :func:`tpm_floor` - the TPM commands a connect cannot avoid, with every object
  already loaded (raw ESAPI, no adapter): TPM2_HMAC, TPM2_Quote, TPM2_Unseal, and
  TPM2_Sign for a post;
* :func:`bare_ik_over_tcp_ms` - a bare noiseprotocol IKpsk2 handshake over loopback TCP
  (connect, message 1, message 2), the responder in a thread;
* :func:`bare_responder_cpu_ms` - CPU of the IKpsk2 responder alone (what a gateway
  cannot avoid per connect);
* :func:`ecdsa_verify_ms` - one ECDSA P-256 verification (cryptography).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from noise.connection import Keypair, NoiseConnection
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_SENSITIVE_DATA,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
)

from bench._common import median_ms
from shared.framing import Mode, preamble
from shared.keys import StaticKey
from shared.wire import PATTERN_CONNECT

_OBJ = TPMA_OBJECT
_SRK_ATTRS = (_OBJ.FIXEDTPM | _OBJ.FIXEDPARENT | _OBJ.SENSITIVEDATAORIGIN | _OBJ.USERWITHAUTH
              | _OBJ.RESTRICTED | _OBJ.DECRYPT | _OBJ.NODA)
_AK_ATTRS = (_OBJ.FIXEDTPM | _OBJ.FIXEDPARENT | _OBJ.SENSITIVEDATAORIGIN | _OBJ.USERWITHAUTH
             | _OBJ.RESTRICTED | _OBJ.SIGN_ENCRYPT)
_SIGN_ATTRS = (_OBJ.FIXEDTPM | _OBJ.FIXEDPARENT | _OBJ.SENSITIVEDATAORIGIN | _OBJ.USERWITHAUTH
               | _OBJ.SIGN_ENCRYPT)


@dataclass(frozen=True)
class TpmFloor:
    hmac_ms: float
    quote_ms: float
    unseal_ms: float
    sign_ms: float


def _sensitive(data: bytes) -> Any:
    return TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(data)))


def tpm_floor(tcti: str, selection: str, runs: int) -> TpmFloor:
    """Raw command times with the objects loaded. The TPM must have 3 free object slots."""
    ectx = ESAPI(tcti)
    loaded: list[Any] = []
    try:
        srk, *_ = ectx.create_primary(
            None, TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:aes128cfb", objectAttributes=_SRK_ATTRS)),
            ESYS_TR.OWNER)
        loaded.append(srk)
        hpriv, hpub, *_ = ectx.create(srk, _sensitive(os.urandom(32)), TPM2B_PUBLIC(
            TPMT_PUBLIC.parse("hmac:sha256", objectAttributes=_OBJ.FIXEDTPM | _OBJ.FIXEDPARENT
                              | _OBJ.USERWITHAUTH | _OBJ.SIGN_ENCRYPT)))
        hkey = ectx.load(srk, hpriv, hpub)
        loaded.append(hkey)
        spriv, spub, *_ = ectx.create(srk, _sensitive(os.urandom(32)), TPM2B_PUBLIC(
            TPMT_PUBLIC.parse("keyedhash", objectAttributes=_OBJ.FIXEDTPM | _OBJ.FIXEDPARENT
                              | _OBJ.USERWITHAUTH)))
        sealed = ectx.load(srk, spriv, spub)
        loaded.append(sealed)
        ectx.flush_context(srk)
        loaded.remove(srk)
        ak, *_ = ectx.create_primary(
            None, TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256:null",
                                                 objectAttributes=_AK_ATTRS)),
            ESYS_TR.ENDORSEMENT)
        loaded.append(ak)
        message = os.urandom(64)
        nonce = os.urandom(32)
        sel = TPML_PCR_SELECTION.parse(selection)
        scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
        hmac_ms = median_ms(lambda: ectx.hmac(hkey, message, TPM2_ALG.SHA256), runs, 3)
        quote_ms = median_ms(lambda: ectx.quote(ak, sel, nonce, scheme), runs, 3)
        unseal_ms = median_ms(lambda: ectx.unseal(sealed), runs, 3)
        for handle in list(loaded):
            ectx.flush_context(handle)
            loaded.remove(handle)
        signer, *_ = ectx.create_primary(
            None, TPM2B_PUBLIC(TPMT_PUBLIC.parse("ecc256:ecdsa-sha256",
                                                 objectAttributes=_SIGN_ATTRS)),
            ESYS_TR.OWNER)
        loaded.append(signer)
        digest = os.urandom(32)
        sign_ms = median_ms(lambda: ectx.sign(signer, digest, scheme), runs, 3)
        return TpmFloor(hmac_ms, quote_ms, unseal_ms, sign_ms)
    finally:
        for handle in loaded:
            ectx.flush_context(handle)
        ectx.close()


# -- bare Noise ------------------------------------------------------------------------------


class _Keys:
    def __init__(self) -> None:
        self.client = StaticKey.generate()
        self.server = StaticKey.generate()
        self.psk = os.urandom(32)
        self.prologue = preamble(Mode.CONNECT).prologue


def _conn(k: _Keys, initiator: bool) -> NoiseConnection:
    c = NoiseConnection.from_name(PATTERN_CONNECT)
    if initiator:
        c.set_as_initiator()
        c.set_keypair_from_private_bytes(Keypair.STATIC, k.client.private)
        c.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, k.server.public)
    else:
        c.set_as_responder()
        c.set_keypair_from_private_bytes(Keypair.STATIC, k.server.private)
    c.set_prologue(k.prologue)
    c.set_psks(psk=k.psk)
    c.start_handshake()
    return c


def _recv_frame(sock: socket.socket) -> bytes:
    buf = b""
    while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf[2:]


def _frame(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def bare_ik_over_tcp_ms(runs: int) -> float:
    """Median of a bare IKpsk2 handshake over loopback TCP, connect included."""
    k = _Keys()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                try:
                    r = _conn(k, initiator=False)
                    r.read_message(_recv_frame(conn))
                    conn.sendall(_frame(bytes(r.write_message(b""))))
                    conn.recv(1)  # until the client closes
                except (OSError, ConnectionError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def once() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            i = _conn(k, initiator=True)
            sock.sendall(_frame(bytes(i.write_message(struct.pack(">Q", time.time_ns())))))
            i.read_message(_recv_frame(sock))

    try:
        return median_ms(once, runs, 5)
    finally:
        stop.set()
        server.close()
        thread.join(5)


def bare_responder_cpu_ms(runs: int = 300) -> float:
    """CPU time of the IKpsk2 responder's part of a handshake (process time, mean)."""
    k = _Keys()
    msgs = []
    for _ in range(runs):
        i = _conn(k, initiator=True)
        msgs.append(bytes(i.write_message(struct.pack(">Q", 1))))
    t0 = time.process_time()
    for m in msgs:
        r = _conn(k, initiator=False)
        r.read_message(m)
        r.write_message(b"")
    return (time.process_time() - t0) / runs * 1000


def ecdsa_verify_ms(runs: int = 2000) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    data = os.urandom(200)
    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    t0 = time.process_time()
    for _ in range(runs):
        public.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    return (time.process_time() - t0) / runs * 1000
