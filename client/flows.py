"""What the client does with its TPM and a channel: enroll, connect (attested), post.

``progress`` callbacks receive one line per step for the CLI to show.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client import pending as pending_post
from client import server_view
from client import state as st
from client.channel import (
    UNANSWERED_ENROLL,
    Channel,
    NetworkError,
    Refused,
    open_connect,
    open_enroll,
    retrying,
)
from client.tpm import KeyBlob, Tpm
from shared.binding import activation_message, quote_nonce, reattest_nonce
from shared.config import parse_host_port
from shared.errors import AttestgateError, ErrorCode
from shared.keys import Psk, StaticKey, fingerprint, fingerprint_matches, session_psk_message
from shared.post_text import post_digest, validate_text
from shared.wire import Command

Progress = Callable[[str], None]


def _pcr_map(values: dict[int, bytes]) -> dict[str, bytes]:
    return {str(i): v for i, v in values.items()}


@dataclass(frozen=True)
class ServerPin:
    fingerprint: str | None  # expected fingerprint, or None with tofu
    tofu: bool


def check_log_size(log: bytes | None) -> None:
    """Refuse (BAD_REQUEST, a usage error) a log the server could not take: more than
    MAX_LOG_TRANSFER bytes, or more than MAX_LOG_BUS once compressed."""
    if log:
        # Only with a log: shared.eventlog is the parser and verifier (client/cli.py _LAZY).
        from shared.eventlog.transport import compress  # noqa: PLC0415

        try:
            compress(log)
        except AttestgateError as exc:
            raise AttestgateError(ErrorCode.BAD_REQUEST,
                                  f"the event log is too large to send ({exc.detail})") from None


def _send_log(ch: Channel, log: bytes) -> int:
    """Send the event log in LOG chunks without waiting; returns the last chunk's id."""
    from shared.eventlog.transport import chunks  # noqa: PLC0415 (see check_log_size)

    last = 0
    for offset, data in chunks(log):
        last = ch.send(Command.LOG, offset=offset, data=data)
    return last


def enroll(tpm: Tpm, home_path: os.PathLike[str] | str, server: str, name: str,
           token: str | None, pin: ServerPin, bind_pcrs: bool, progress: Progress,
           event_log: bytes | None = None) -> st.ClientState:
    """Enroll; with ``event_log`` the server keeps the log with the baseline (it must
    replay to the quoted PCRs: LOG_INCONSISTENT otherwise)."""
    home = Path(home_path)
    host, port = parse_host_port(server)
    check_log_size(event_log)
    tpm.keep_contexts(home / st.CONTEXTS_FILE)  # the first connect then creates nothing
    progress("reading the TPM's endorsement key and certificate")
    ek = tpm.endorsement()
    static = StaticKey.generate()

    def check_server(public: bytes) -> None:
        if pin.fingerprint is not None:
            if not fingerprint_matches(public, pin.fingerprint):
                raise AttestgateError(ErrorCode.PROTOCOL,
                                      "the server's key does not match --server-key")
        elif pin.tofu:
            progress(f"trusting server key on first use: {fingerprint(public)}")
        else:
            raise AttestgateError(ErrorCode.BAD_REQUEST, "give --server-key or --tofu")

    progress(f"opening the enrollment channel to {host}:{port}")
    ch, hello = retrying(lambda: open_enroll(host, port, static, token, check_server), progress)
    with ch:
        nonce = quote_nonce(ch.handshake_hash)
        progress("creating the attestation key and the post-signing key in the TPM")
        ak_public = tpm.ak_public()
        srk_public = tpm.srk_public()
        post_key = tpm.create_post_key()
        srk_cert = tpm.certify_srk(nonce)
        post_cert = tpm.certify_key(post_key, nonce)
        progress(f"quoting PCRs {hello.selection} bound to this channel")
        quote = tpm.quote(nonce, hello.selection)
        progress("sending the evidence to the server"
                 + (f" with the event log ({len(event_log)} bytes)" if event_log else ""))
        try:
            req_id = ch.send(
                Command.ENROLL, name=name, ek_public=ek.public, ek_cert=ek.certificate or b"",
                ak_public=ak_public, srk_public=srk_public, srk_attest=srk_cert.attest,
                srk_signature=srk_cert.signature, post_public=post_key.public,
                post_attest=post_cert.attest, post_signature=post_cert.signature,
                quote_attest=quote.attest, quote_signature=quote.signature,
                pcrs=_pcr_map(quote.pcrs()),
                **({"log_size": len(event_log)} if event_log else {}),
            )
            if event_log:
                _send_log(ch, event_log)
            challenge = ch.reply_to(req_id)
        except NetworkError as exc:
            # XXpsk3 mixes the token's PSK in only at message 3, which the gateway reads
            # after we sent it: a wrong token secret shows up here, as a silent close that
            # nothing authenticates (it could as well be a service going down).
            raise NetworkError(f"{exc}: {UNANSWERED_ENROLL}") from None
        progress("activating the credential and importing the device secret into the TPM")
        answer = tpm.activate_credential(bytes(challenge["id_object"]),
                                         bytes(challenge["encrypted_secret"]))
        psk_key = tpm.import_hmac_key(bytes(challenge["psk_public"]),
                                      bytes(challenge["psk_duplicate"]),
                                      bytes(challenge["psk_seed"]))
        mac = tpm.hmac(psk_key, activation_message(ch.handshake_hash))
        done = ch.request(Command.ACTIVATE, challenge=answer, mac=mac)
        server_public = hello.server_public
    progress("sealing this device's Noise key to the TPM"
             + (" and its current PCR state" if bind_pcrs else ""))
    secret = os.urandom(32)
    sealed = tpm.seal(secret, hello.selection if bind_pcrs else None)
    state = st.ClientState(
        version=st.STATE_VERSION, server=server, server_public=server_public.hex(),
        device_id=str(done["device_id"]), name=name, selection=hello.selection,
        baseline={str(i): v.hex() for i, v in quote.pcrs().items()}, bind_pcrs=bind_pcrs,
        noise_sealed=sealed.to_bytes().hex(),
        noise_encrypted=st.encrypt_static(static, secret, os.urandom(12)).hex(),
        noise_public=static.public.hex(), psk_key=psk_key.to_bytes().hex(),
        post_key=post_key.to_bytes().hex(), enrolled_at=time.time(),
    )
    st.save(home, state)
    return state


def unseal_static(tpm: Tpm, state: st.ClientState) -> StaticKey:
    """The Noise static key; PCR_MISMATCH when it is bound to PCRs that changed.

    Unsealed once per ``tpm`` (per process): later connects reuse the secret (the
    unseal was 1.65 ms of every connect); the quote still shows the server any change.
    """
    sealed = KeyBlob.from_bytes(bytes.fromhex(state.noise_sealed))
    secret = tpm.unseal(sealed, state.selection if state.bind_pcrs else None, reuse=True)
    return st.decrypt_static(bytes.fromhex(state.noise_encrypted), secret)


def connect(tpm: Tpm, state: st.ClientState, progress: Progress,
            home: Path | None = None, event_log: bytes | None = None) -> Channel:
    """Open an attested session: IKpsk2 with the TPM-computed PSK, then the bound quote.

    With ``event_log`` the quote announces it (``log_size``); the server asks for it
    (``need_log``) only when the quote matches no approved state, and then says what
    changed in its refusal. One round trip otherwise. With ``home``, what the server says
    about the device (accepted baselines and status, or the status a refusal tells) is
    kept there (``client.server_view``), and the TPM's object contexts are carried to the
    next process in it (``Tpm.keep_contexts``)."""
    host, port = parse_host_port(state.server)
    check_log_size(event_log)
    if home is not None:
        tpm.keep_contexts(home / st.CONTEXTS_FILE)
    static = unseal_static(tpm, state)
    psk_key = KeyBlob.from_bytes(bytes.fromhex(state.psk_key))

    def session_psk(e_i: bytes, e_r: bytes) -> Psk:
        return Psk(tpm.hmac(psk_key, session_psk_message(e_i, e_r)))

    progress(f"connecting to {host}:{port}")
    server_public = bytes.fromhex(state.server_public)
    ch = retrying(lambda: open_connect(host, port, static, server_public, time.time_ns(),
                                       session_psk), progress)
    try:
        progress("attesting: quote bound to this channel")
        quote = tpm.quote(quote_nonce(ch.handshake_hash), state.selection)
        reply = ch.request(Command.ATTEST, attest=quote.attest, signature=quote.signature,
                           pcrs=_pcr_map(quote.pcrs()),
                           **({"log_size": len(event_log)} if event_log else {}))
        if reply.get("need_log") is True:
            if not event_log:
                raise AttestgateError(ErrorCode.PROTOCOL, "server asked for a log not offered")
            progress("the quote matches no approved state: sending the event log "
                     f"({len(event_log)} bytes) so the server can say what changed")
            reply = ch.reply_to(_send_log(ch, event_log))
        if home is not None:
            server_view.learned(home, state.device_id, reply)
        return ch
    except Refused as exc:
        ch.close()
        if home is not None:
            server_view.refused(home, state.device_id, exc.code, exc.body)
        raise
    except BaseException:
        ch.close()
        raise


def reattest(tpm: Tpm, state: st.ClientState, ch: Channel, server_nonce: bytes) -> None:
    """Answer the server's re-attestation request (sent without waiting for a reply)."""
    quote = tpm.quote(reattest_nonce(ch.handshake_hash, server_nonce), state.selection)
    ch.send(Command.REATTEST, attest=quote.attest, signature=quote.signature,
            pcrs=_pcr_map(quote.pcrs()))


# A pending post's timestamp older than this is signed again with a fresh one (same
# key): the board refuses timestamps further than ATTESTGATE_POST_CLOCK_SKEW (default
# 300 s) from its clock, and the key alone makes the retry idempotent.
RESIGN_AFTER = 120.0
# Refusals after which the post may still be stored, or may be retried as it is:
# keep its key for the retry.
_KEEP_PENDING = frozenset({ErrorCode.SERVICE_UNAVAILABLE, ErrorCode.STORE_UNAVAILABLE,
                           ErrorCode.RATE_LIMITED, ErrorCode.BUSY, ErrorCode.INTERNAL})


def post(tpm: Tpm, state: st.ClientState, ch: Channel, text: str,
         home: Path | None = None) -> dict[str, object]:
    """Sign and send one post (device id, timestamp, key, text); the key makes a retry
    idempotent. With ``home``, the key of a post not yet acknowledged is kept there
    (``client.pending``) and reused when the same text is posted again."""
    text = validate_text(text)
    now = time.time()
    pending = pending_post.load(home, now) if home is not None else None
    if pending is not None and pending.matches(text):
        key = pending.key
        fresh = now - pending.signed_at_ms / 1000 <= RESIGN_AFTER
        signed_at_ms = pending.signed_at_ms if fresh else int(now * 1000)
    else:
        key, signed_at_ms = os.urandom(pending_post.KEY_LEN), int(now * 1000)
    if home is not None:
        pending_post.save(home, pending_post.PendingPost(text, key, signed_at_ms))
    signature = tpm.sign(KeyBlob.from_bytes(bytes.fromhex(state.post_key)),
                         post_digest(state.device_id, signed_at_ms, key, text))
    try:
        reply = ch.request(Command.POST, text=text, ts=signed_at_ms, key=key,
                           signature=signature)
    except Refused as exc:
        if home is not None and exc.code not in _KEEP_PENDING:
            pending_post.clear(home)
        raise
    if home is not None:
        pending_post.clear(home)
    return reply


def read(ch: Channel, since: str | None, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` posts (after ``since``, or the latest), oldest first, paging with
    the board's ``next`` cursor: each reply holds only what fits in one message."""
    posts: list[dict[str, Any]] = []
    cursor = since
    last: tuple[int, int] | None = _id_order(since) if since else None
    while True:
        reply = ch.request(Command.READ, since=cursor, limit=limit - len(posts))
        page = reply.get("posts")
        if not isinstance(page, list) or len(page) > limit - len(posts):
            raise AttestgateError(ErrorCode.PROTOCOL, "read reply: posts")
        for p in page:
            order = _id_order(p.get("post_id") if isinstance(p, dict) else None)
            if last is not None and order <= last:  # out of order or repeated
                raise AttestgateError(ErrorCode.PROTOCOL, "read reply: post order")
            last = order
            posts.append(p)
        nxt = reply.get("next")
        if nxt is None or len(posts) >= limit:
            return posts
        if not page or nxt != page[-1]["post_id"]:
            raise AttestgateError(ErrorCode.PROTOCOL, "read reply: next")
        cursor = nxt


def _id_order(post_id: object) -> tuple[int, int]:
    """A post id ("ms-seq") as a sortable pair; PROTOCOL if it is not one."""
    if isinstance(post_id, str):
        a, _, b = post_id.partition("-")
        if a.isdigit() and (b.isdigit() or not b) and len(post_id) <= 64:
            return int(a), int(b or 0)
    raise AttestgateError(ErrorCode.PROTOCOL, "read reply: post id")
