"""A stolen Noise key cannot fill the PRIORITY lane (docs/security.md, the stolen key's cost).

Message 1 of IKpsk2 proves only the static key. A thief holding an enrolled device's key
(but not its TPM) sends message 1s with fresh timestamps from many addresses; the
registry knows the key, so each would go to the PRIORITY lane and hold a slot until its
deadline (the thief never sends the quote). The real ``Gateway`` over the in-memory bus
with the real registry handler, 6 slots, 1 of them for anonymous work: at most
MAX_PRIORITY_PER_KEY of the thief's handshakes are PRIORITY at once, the rest compete as
anonymous ones, and another device still gets message 2 at once. Without the cap the
thief holds all 6 slots and the other device is told "busy" at its deadline.
"""

from __future__ import annotations

import asyncio
import struct
import time

from device_builders import VAULT_KEY, TestDevice, make_device

from services.gateway.admission import AdmissionLimits
from services.gateway.limits import MAX_PRIORITY_PER_KEY, GatewayLimits
from services.gateway.server import Gateway
from services.registry.handler import RegistryDeps
from services.registry.handler import handle as registry_handle
from shared.bus.memory import MemoryBus
from shared.framing import FrameDecoder, Mode, encode_frame, preamble
from shared.hint import parse_hint
from shared.keys import StaticKey
from shared.noise_session import NoiseSession
from shared.store.memory import MemoryStore
from shared.vault import Vault
from shared.wire import Service

DEADLINE_S = 8.0  # the gateway's handshake deadline; the thief's connections hold it all
THIEF_CONNECTIONS = 8  # > MAX_PRIORITY_PER_KEY + the one anonymous slot
READ_LIMIT_S = 30.0  # a bound for reading one frame, so a failure cannot hang the test


def _message1(server: bytes, dev: TestDevice, ts: int) -> bytes:
    pre = preamble(Mode.CONNECT)
    noise = NoiseSession.initiator(pre, dev.noise, server_static=server)
    return pre.encode() + encode_frame(noise.write_handshake(struct.pack(">Q", ts)))


async def _first_frame(reader: asyncio.StreamReader) -> bytes | None:
    decoder = FrameDecoder()
    while (frame := decoder.next_frame()) is None:
        data = await asyncio.wait_for(reader.read(65536), READ_LIMIT_S)
        if not data:
            return None
        decoder.feed(data)
    return frame


def test_a_stolen_key_holds_at_most_its_share_of_the_priority_lane() -> None:
    assert THIEF_CONNECTIONS > MAX_PRIORITY_PER_KEY + 1

    async def scenario() -> tuple[list[bytes | None], bytes | None, dict[str, int]]:
        store = MemoryStore()
        stolen, other = make_device("victim"), make_device("other")
        for dev in (stolen, other):
            store.devices[dev.device_id] = dev.record
        bus = MemoryBus()
        bus.register(Service.REGISTRY.value, registry_handle,
                     RegistryDeps(store, Vault(VAULT_KEY), False))
        static = StaticKey.generate()
        gateway = Gateway(
            bus, static, "sha256:0,1,2,3,4,5,6,7",
            limits=GatewayLimits(handshake_timeout=DEADLINE_S, message1_timeout=DEADLINE_S),
            admission=AdmissionLimits(max_slots=MAX_PRIORITY_PER_KEY + 2, max_anonymous_slots=1))
        port = await gateway.start("127.0.0.1", 0)
        writers: list[asyncio.StreamWriter] = []
        try:
            thief: list[bytes | None] = []
            now_ns = time.time_ns()
            for i in range(THIEF_CONNECTIONS):  # one address each: no per-address limit helps
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, local_addr=(f"127.0.0.{10 + i}", 0))
                writers.append(writer)
                writer.write(_message1(static.public, stolen, now_ns + i))
                await writer.drain()
                thief.append(await _first_frame(reader))  # then silent until the deadline
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=("127.0.0.99", 0))
            writers.append(writer)
            writer.write(_message1(static.public, other, now_ns))
            await writer.drain()
            answer = await _first_frame(reader)
            return thief, answer, dict(gateway.counters)
        finally:
            for w in writers:
                w.close()
            await gateway.stop()

    thief, answer, counters = asyncio.run(scenario())
    # The other device: message 2 (not a hint), while the thief still holds its slots.
    assert answer is not None and parse_hint(answer) is None, answer
    assert counters["priority_demoted"] == THIEF_CONNECTIONS - MAX_PRIORITY_PER_KEY, counters
    # The thief got message 2 on its share (PRIORITY + the anonymous slot), "busy" beyond it.
    got_message2 = [f for f in thief if f is not None and parse_hint(f) is None]
    assert len(got_message2) == MAX_PRIORITY_PER_KEY + 1, counters
