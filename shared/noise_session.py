"""The Noise session of attestgate, sans-IO: bytes in, bytes out, no sockets, no clock.

Two handshakes (``shared.wire``):

* enrollment, ``Noise_XXpsk3``: the PSK comes from the enrollment token; the
  initiator's first message carries the token id in clear (it names a token, it is
  not a secret) so that the responder can pick the PSK before message 2;
* reconnect, ``Noise_IKpsk2``: the initiator knows the server key. The responder
  learns the initiator's static key from message 1 and only then chooses that
  device's session PSK, which is ``HMAC(device psk, label || e_i || e_r)``. The
  responder's ephemeral ``e_r`` is drawn before message 2 so that it can go into
  the PSK; the initiator reads it from the first 32 bytes of message 2 (sent in
  clear by the pattern) and has its TPM compute the same HMAC. Mixing in ``e_r``
  means no session PSK can be computed before the server's fresh value exists, so
  a device PSK holder that is later locked out cannot have stockpiled PSKs.

One table (:data:`_TRANSITIONS`) owns the handshake state machine; any illegal
call, or any failure, moves the session to ``FAILED``, which is final.

After the handshake, both directions rekey (``REKEY(k)``) every ``rekey_every``
messages. Over TCP both sides count the same messages, so no in-band signal is
needed. A session refuses to go past ``max_messages`` in either direction.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, auto
from typing import Final

from shared.errors import AttestgateError, ErrorCode
from shared.framing import Mode, Preamble
from shared.keys import Psk, StaticKey
from shared.noise_handshake import IKPSK2, XXPSK3, CipherState, HandshakeState, NoiseError
from shared.wire import (
    DH_LEN,
    MAX_HANDSHAKE_PAYLOAD,
    MAX_NOISE_MESSAGE,
    MAX_PLAINTEXT,
)

REKEY_EVERY: Final = 1 << 20  # transport messages per direction between REKEY(k)
MAX_MESSAGES: Final = 1 << 40  # per direction; far below the 2^64 nonce limit

class Role(Enum):
    INITIATOR = auto()
    RESPONDER = auto()


class State(Enum):
    INITIAL = auto()
    NEED_PSK = auto()  # caller must set_psk() before the next step
    AWAIT_READ = auto()  # waiting for the peer's handshake message
    READY_WRITE = auto()  # our handshake message is due
    ESTABLISHED = auto()
    FAILED = auto()  # final


class Action(Enum):
    WRITE = auto()
    READ = auto()
    SET_PSK = auto()


_T = dict[tuple[State, Action], State]
_TRANSITIONS: Final[dict[tuple[Mode, Role], _T]] = {
    (Mode.ENROLL, Role.INITIATOR): {
        (State.INITIAL, Action.WRITE): State.AWAIT_READ,
        (State.AWAIT_READ, Action.READ): State.READY_WRITE,  # caller checks the server key here
        (State.READY_WRITE, Action.WRITE): State.ESTABLISHED,
    },
    (Mode.ENROLL, Role.RESPONDER): {
        (State.INITIAL, Action.READ): State.NEED_PSK,  # payload names the token
        (State.NEED_PSK, Action.SET_PSK): State.READY_WRITE,
        (State.READY_WRITE, Action.WRITE): State.AWAIT_READ,
        (State.AWAIT_READ, Action.READ): State.ESTABLISHED,
    },
    (Mode.CONNECT, Role.INITIATOR): {
        (State.INITIAL, Action.WRITE): State.NEED_PSK,  # PSK needs e_r from message 2
        (State.NEED_PSK, Action.SET_PSK): State.AWAIT_READ,
        (State.AWAIT_READ, Action.READ): State.ESTABLISHED,
    },
    (Mode.CONNECT, Role.RESPONDER): {
        (State.INITIAL, Action.READ): State.NEED_PSK,  # remote static now known
        (State.NEED_PSK, Action.SET_PSK): State.READY_WRITE,
        (State.READY_WRITE, Action.WRITE): State.ESTABLISHED,
    },
}

def responder_ephemeral(message2: bytes) -> bytes:
    """The responder's ephemeral key: the first 32 bytes of IKpsk2 message 2, in clear."""
    if len(message2) < DH_LEN:
        raise AttestgateError(ErrorCode.PROTOCOL, "message 2 too short")
    return bytes(message2[:DH_LEN])


class NoiseSession:
    """One side of one attestgate Noise session.

    Build it with :meth:`initiator` or :meth:`responder`; drive the handshake with
    :meth:`write_handshake` / :meth:`read_handshake` / :meth:`set_psk` in the order
    the table allows (``state`` says what is due), then :meth:`encrypt` and
    :meth:`decrypt`. Every failure raises :class:`AttestgateError` (PROTOCOL) and
    leaves the session FAILED.
    """

    # One per live connection on the gateway: slots, not a dict (session memory).
    __slots__ = ("_ephemerals", "_hash", "_hs", "_max_messages", "_received", "_rekey_every",
                 "_remote_static", "_rx", "_sent", "_table", "_tx", "mode", "role", "state")

    def __init__(
        self,
        mode: Mode,
        role: Role,
        static: StaticKey,
        prologue: bytes,
        *,
        remote_static: bytes | None = None,
        psk: Psk | None = None,
        rekey_every: int = REKEY_EVERY,
        max_messages: int = MAX_MESSAGES,
    ) -> None:
        self.mode = mode
        self.role = role
        self._table = _TRANSITIONS[(mode, role)]
        self.state = State.INITIAL
        self._rekey_every = rekey_every
        self._max_messages = max_messages
        self._sent = 0
        self._received = 0
        self._remote_static: bytes | None = remote_static
        self._hash: bytes | None = None
        # The handshake (None once established), then our sending and receiving cipher
        # states: an established session keeps only these, the hash and the public keys.
        try:
            self._hs: HandshakeState | None = HandshakeState(
                XXPSK3 if mode is Mode.ENROLL else IKPSK2, initiator=role is Role.INITIATOR,
                prologue=prologue, static=static.private, remote_static=remote_static,
                psk=psk.value if psk is not None else None)
        except NoiseError as exc:
            raise AttestgateError(ErrorCode.BAD_REQUEST, f"noise: {exc}") from None
        self._tx: CipherState | None = None
        self._rx: CipherState | None = None
        self._ephemerals: tuple[bytes, bytes] | None = None  # (local, remote), once established

    # -- construction --------------------------------------------------------------
    @staticmethod
    def initiator(
        preamble: Preamble,
        static: StaticKey,
        *,
        server_static: bytes | None = None,
        psk: Psk | None = None,
        rekey_every: int = REKEY_EVERY,
    ) -> NoiseSession:
        """Client side. ENROLL needs ``psk`` (from the token); CONNECT needs ``server_static``."""
        if preamble.mode is Mode.ENROLL and psk is None:
            raise AttestgateError(ErrorCode.BAD_REQUEST, "enrollment needs the token psk")
        if preamble.mode is Mode.CONNECT and server_static is None:
            raise AttestgateError(ErrorCode.BAD_REQUEST, "reconnect needs the server key")
        return NoiseSession(
            preamble.mode,
            Role.INITIATOR,
            static,
            preamble.prologue,
            remote_static=server_static if preamble.mode is Mode.CONNECT else None,
            psk=psk,
            rekey_every=rekey_every,
        )

    @staticmethod
    def responder(
        preamble: Preamble, static: StaticKey, *, rekey_every: int = REKEY_EVERY
    ) -> NoiseSession:
        """Gateway side; the PSK is chosen after message 1 with :meth:`set_psk`."""
        return NoiseSession(
            preamble.mode, Role.RESPONDER, static, preamble.prologue, rekey_every=rekey_every
        )

    # -- state machine -------------------------------------------------------------
    def _step(self, action: Action) -> State:
        nxt = self._table.get((self.state, action))
        if nxt is None:
            bad = self.state
            self.state = State.FAILED
            raise AttestgateError(ErrorCode.PROTOCOL, f"{action.name} not allowed in {bad.name}")
        return nxt

    def _fail(self, exc: NoiseError) -> AttestgateError:
        self.state = State.FAILED
        self._hs = self._tx = self._rx = None
        return AttestgateError(ErrorCode.PROTOCOL, f"noise: {exc}")

    def _handshake(self) -> HandshakeState:
        # The table only allows handshake steps while the handshake exists.
        assert self._hs is not None
        return self._hs

    def write_handshake(self, payload: bytes = b"") -> bytes:
        """Our next handshake message (unframed)."""
        nxt = self._step(Action.WRITE)
        if len(payload) > MAX_HANDSHAKE_PAYLOAD:
            self.state = State.FAILED
            raise AttestgateError(ErrorCode.TOO_LARGE, "handshake payload")
        try:
            message = self._handshake().write_message(payload)
        except NoiseError as exc:
            raise self._fail(exc) from None
        self._enter(nxt)
        return message

    def read_handshake(self, message: bytes) -> bytes:
        """Process the peer's handshake message; returns its payload."""
        nxt = self._step(Action.READ)
        if len(message) > MAX_NOISE_MESSAGE:
            self.state = State.FAILED
            raise AttestgateError(ErrorCode.TOO_LARGE, "handshake message")
        try:
            payload = self._handshake().read_message(message)
        except NoiseError as exc:
            raise self._fail(exc) from None
        if len(payload) > MAX_HANDSHAKE_PAYLOAD:
            self.state = State.FAILED
            raise AttestgateError(ErrorCode.TOO_LARGE, "handshake payload")
        self._enter(nxt)
        return payload

    def set_psk(self, psk: Psk) -> None:
        """Set the PSK when ``state`` is NEED_PSK."""
        nxt = self._step(Action.SET_PSK)
        self._handshake().set_psk(psk.value)
        self._enter(nxt)

    def _enter(self, nxt: State) -> None:
        hs = self._handshake()
        if self._remote_static is None and hs.rs is not None:
            self._remote_static = hs.rs
        try:
            if nxt is State.NEED_PSK and self.role is Role.RESPONDER and self.mode is Mode.CONNECT:
                hs.draw_ephemeral()  # now, so that it can go into the session PSK
            if nxt is State.ESTABLISHED:
                # Keep the two cipher states, the hash and the public values; the handshake
                # (its chaining key, ephemeral private key, pattern) goes.
                self._hash = hs.handshake_hash
                self._tx, self._rx = hs.split()
                self._ephemerals = (hs.e_public or b"", hs.re or b"")
                self._hs = None
        except NoiseError as exc:
            raise self._fail(exc) from None
        self.state = nxt

    # -- what the caller may learn -------------------------------------------------
    @property
    def remote_static(self) -> bytes | None:
        """The peer's static key, once the handshake revealed it."""
        return self._remote_static

    @property
    def local_ephemeral(self) -> bytes:
        if self._ephemerals is not None:
            key: bytes | None = self._ephemerals[0]
        else:
            key = None if self._hs is None else self._hs.e_public
        if not key:
            raise AttestgateError(ErrorCode.PROTOCOL, "no local ephemeral yet")
        return key

    @property
    def remote_ephemeral(self) -> bytes:
        if self._ephemerals is not None:
            key: bytes | None = self._ephemerals[1]
        else:
            key = None if self._hs is None else self._hs.re
        if not key:
            raise AttestgateError(ErrorCode.PROTOCOL, "no remote ephemeral yet")
        return key

    @property
    def handshake_hash(self) -> bytes:
        """``h``, for channel binding; only after the handshake."""
        if self._hash is None:
            raise AttestgateError(ErrorCode.PROTOCOL, "handshake not finished")
        return self._hash

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    # -- transport -------------------------------------------------------------------
    def encrypt(self, plaintext: bytes) -> bytes:
        tx = self._tx
        if tx is None or self.state is not State.ESTABLISHED:
            raise AttestgateError(ErrorCode.PROTOCOL, f"not established ({self.state.name})")
        if len(plaintext) > MAX_PLAINTEXT:
            raise AttestgateError(ErrorCode.TOO_LARGE, f"{len(plaintext)} bytes")
        if self._sent >= self._max_messages:
            self.state = State.FAILED
            raise AttestgateError(ErrorCode.PROTOCOL, "session message limit")
        try:
            out = tx.encrypt(bytes(plaintext))
        except NoiseError as exc:
            raise self._fail(exc) from None
        self._sent += 1
        if self._sent % self._rekey_every == 0:
            tx.rekey()
        return out

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt one transport message; any failure is final (replay, reorder, tamper)."""
        rx = self._rx
        if rx is None or self.state is not State.ESTABLISHED:
            raise AttestgateError(ErrorCode.PROTOCOL, f"not established ({self.state.name})")
        if len(ciphertext) > MAX_NOISE_MESSAGE:
            self.state = State.FAILED
            raise AttestgateError(ErrorCode.TOO_LARGE, "transport message")
        if self._received >= self._max_messages:
            self.state = State.FAILED
            raise AttestgateError(ErrorCode.PROTOCOL, "session message limit")
        try:
            out = rx.decrypt(bytes(ciphertext))
        except NoiseError as exc:
            raise self._fail(exc) from None
        self._received += 1
        if self._received % self._rekey_every == 0:
            rx.rekey()
        return out


PskFunction = Callable[[bytes, bytes], Psk]
