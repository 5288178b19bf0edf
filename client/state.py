"""The client's state on disk (``--home`` / ``ATTESTGATE_HOME``): one JSON file, mode 0600.

Nothing in it is useful on another machine: the Noise static private key is
stored only encrypted (AES-256-GCM) under a secret sealed by this TPM (optionally
to the PCR state), and the key blobs are wrapped by this TPM's SRK.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.cli_conventions import state_dir
from shared.errors import AttestgateError, ErrorCode
from shared.keys import StaticKey
from shared.wire import LABEL_KEY_SEAL

STATE_FILE = "state.json"
# TPM object contexts saved by one process for the next (client.tpm.saved): a cache that
# only this TPM can use, until its next reset; deleting it only costs time.
CONTEXTS_FILE = "tpm-contexts.bin"
STATE_VERSION = 1


@dataclass(frozen=True)
class ClientState:
    version: int
    server: str  # HOST:PORT
    server_public: str  # hex
    device_id: str
    name: str
    selection: str
    baseline: dict[str, str]  # PCR index -> hex value at enrollment
    bind_pcrs: bool
    noise_sealed: str  # hex KeyBlob: the sealed secret that encrypts the Noise key
    noise_encrypted: str  # hex nonce || AES-GCM ciphertext of the Noise private key
    noise_public: str  # hex
    psk_key: str  # hex KeyBlob: the device PSK, an HMAC key inside the TPM
    post_key: str  # hex KeyBlob: the post-signing key
    enrolled_at: float


LEGACY_HOME = "~/.attestgate"


def home_dir(explicit: str | None) -> Path:
    """--home, else $ATTESTGATE_HOME, else ~/.attestgate when it exists (installs before the
    XDG layout keep working), else $XDG_STATE_HOME/attestgate (~/.local/state/attestgate)."""
    chosen = explicit or os.environ.get("ATTESTGATE_HOME")
    if chosen:
        return Path(chosen).expanduser()
    legacy = Path(LEGACY_HOME).expanduser()
    return legacy if legacy.exists() else state_dir(os.environ)


def load(home: Path) -> ClientState:
    path = home / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        state = ClientState(**raw)
    except FileNotFoundError:
        raise AttestgateError(ErrorCode.UNKNOWN_DEVICE, f"not enrolled: no {path}") from None
    except (ValueError, TypeError) as exc:
        raise AttestgateError(ErrorCode.BAD_REQUEST, f"{path} is damaged: {exc}") from None
    if state.version != STATE_VERSION:
        raise AttestgateError(ErrorCode.VERSION, f"{path} has version {state.version}")
    return state


def save(home: Path, state: ClientState) -> None:
    """Write atomically (temp file + rename), 0600 in a 0700 directory."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = home / (STATE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(state), f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, home / STATE_FILE)


def encrypt_static(static: StaticKey, secret: bytes, nonce: bytes) -> bytes:
    return nonce + AESGCM(secret).encrypt(nonce, static.private, LABEL_KEY_SEAL)


def decrypt_static(blob: bytes, secret: bytes) -> StaticKey:
    try:
        private = AESGCM(secret).decrypt(blob[:12], blob[12:], LABEL_KEY_SEAL)
    except (InvalidTag, ValueError):
        raise AttestgateError(ErrorCode.TPM_ERROR, "the Noise key does not decrypt") from None
    return StaticKey.from_private(private)
