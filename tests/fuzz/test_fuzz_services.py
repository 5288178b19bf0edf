"""Fuzz the board's and the registry's request bodies through their pure handlers.

The board parses what every device posts (text, idempotency key, signature) and
reads; the registry parses what the gateway forwards from unauthenticated peers
(token ids from enrollment message 1, keys and timestamps from reconnect message
1). Bodies are genuine requests mutated one field at a time, or as msgpack bytes.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from device_builders import NOW, VAULT_KEY, make_device
from tpm_builders import sign_digest

from services.board.handler import BoardDeps
from services.board.handler import handle as board
from services.registry.handler import RegistryDeps
from services.registry.handler import handle as registry
from shared.bus.interface import Reply, Request
from shared.errors import AttestgateError
from shared.posts import post_digest
from shared.records import Token
from shared.store.memory import MemoryStore
from shared.vault import Vault
from tests.support.fuzz import FUZZ_INPUTS, BodyMutator, check_reply, run

# A loaded CI machine may run a target several times slower than its ~10-60 s here; the
# per-input hang check (tests.support.fuzz.HANG_S) is what catches a hang.
pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(900)]

VAULT = Vault(VAULT_KEY)
TOKEN = Token("0011223344556677", b"\x42" * 32, NOW - 10, NOW + 3600)


def test_fuzz_board_and_registry_requests() -> None:
    dev = make_device("alice", vault=VAULT)
    key = b"k" * 16
    text = "hello\tworld\nsecond line \u00e9\U0001f600"
    ts = int(NOW * 1000)
    post = {"device_id": dev.device_id, "ts": ts, "text": text, "key": key,
            "signature": sign_digest(dev.post_key, post_digest(dev.device_id, ts, key, text))}
    requests: dict[tuple[str, str], dict[str, Any]] = {
        ("board", "post"): post,
        ("board", "read"): {"since": "1700000000000-0", "limit": 50},
        ("registry", "token_psk"): {"token_id": TOKEN.token_id},
        ("registry", "connect"): {"noise_public": dev.record.noise_public, "e_i": b"i" * 32,
                                  "e_r": b"r" * 32, "ts": 1234},
        ("registry", "register"): {"h": "ab" * 32, "token_id": None},
        ("registry", "status"): {"device_id": dev.device_id},
    }
    mutators = {k: BodyMutator([v]) for k, v in requests.items()}
    kinds = sorted(requests)

    def store() -> MemoryStore:
        s = MemoryStore()
        s.devices[dev.device_id] = dev.record
        s.put_token(TOKEN)
        return s

    for (service, op), body in requests.items():  # the genuine requests are served
        reply = _call(service, op, body, store())
        assert reply.ok or op == "register", (op, reply)

    def generate(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        kind = rng.choice(kinds)
        return kind[0], kind[1], mutators[kind](rng)

    def check(case: tuple[str, str, dict[str, Any]]) -> None:
        reply = _call(*case, store())
        check_reply(reply)
        if reply.error is not None:
            raise AttestgateError(reply.error)

    assert run("board + registry requests", generate, check).inputs >= FUZZ_INPUTS


def _call(service: str, op: str, body: dict[str, Any], store: MemoryStore) -> Reply:
    request = Request("r1", service, op, body, NOW + 5)
    if service == "board":
        return board(request, BoardDeps(store), NOW)
    return registry(request, RegistryDeps(store, VAULT, open_enrollment=True), NOW)
