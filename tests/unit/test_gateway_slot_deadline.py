"""The time a connection waits for a handshake slot counts against its one deadline (issue 7, 1).

docs/security.md §2.15 claims it; the flood test shows only the sum of everything. Here
the real ``Gateway`` listens on a loopback port, over the in-memory bus with the real
registry handler, with ONE handshake slot and a slot wait far longer than the handshake
deadline. B connects first and stays silent; A connects, sends an enrollment message 1,
takes the only slot and then holds it silently until *its* deadline (minus the reserve
for counting a wrong token). B then sends its message 1 and has to wait for the slot.
B's deadline ends before A lets go of the slot, so B must be told "busy" at its own
deadline. Were the wait not charged to the deadline, B would wait for the slot (up to
SLOT_WAIT) and then get message 2.
"""

from __future__ import annotations

import asyncio

from device_builders import VAULT_KEY

from services.gateway.admission import AdmissionLimits
from services.gateway.limits import GatewayLimits
from services.gateway.server import Gateway
from services.registry.handler import RegistryDeps
from services.registry.handler import handle as registry_handle
from shared.bus.memory import MemoryBus
from shared.framing import FrameDecoder, Mode, encode_frame, preamble
from shared.hint import HintReason, parse_hint
from shared.keys import StaticKey, enroll_psk
from shared.noise_session import NoiseSession
from shared.store.memory import MemoryStore
from shared.timing import TOKEN_FAILURE_RESERVE
from shared.vault import Vault
from shared.wire import Service

# -- timing (one commented block): the order of events, with a second's margin each way --
DEADLINE_S = 6.0  # the gateway's handshake deadline for every connection
SLOT_WAIT_S = 60.0  # the longest slot wait on its own: far beyond the deadline
A_AFTER_S = 2.5  # A connects this long after B: A holds the slot until 2.5 + 6 - 1 = 7.5 s
B_MESSAGE1_AFTER_S = 3.0  # B's message 1 (B's deadline: 6 s; A's release: 7.5 s)
READ_LIMIT_S = 30.0  # a bound for reading one frame, so a failure cannot hang the test


def _message1() -> bytes:
    pre = preamble(Mode.ENROLL)
    noise = NoiseSession.initiator(pre, StaticKey.generate(), psk=enroll_psk(b""))
    return pre.encode() + encode_frame(noise.write_handshake(b""))


async def _frame(reader: asyncio.StreamReader) -> bytes | None:
    """The first frame the gateway sends, or None when it closes without one."""
    decoder = FrameDecoder()
    while (frame := decoder.next_frame()) is None:
        data = await asyncio.wait_for(reader.read(65536), READ_LIMIT_S)
        if not data:
            return None
        decoder.feed(data)
    return frame


def test_a_slot_wait_ends_at_the_connections_deadline() -> None:
    assert A_AFTER_S + DEADLINE_S - TOKEN_FAILURE_RESERVE > DEADLINE_S + 1.0  # A outlives B

    async def scenario() -> tuple[bytes | None, bytes | None, dict[str, int]]:
        bus = MemoryBus()
        bus.register(Service.REGISTRY.value, registry_handle,
                     RegistryDeps(MemoryStore(), Vault(VAULT_KEY), True))
        gateway = Gateway(
            bus, StaticKey.generate(), "sha256:0,1,2,3,4,5,6,7",
            limits=GatewayLimits(handshake_timeout=DEADLINE_S, message1_timeout=DEADLINE_S,
                                 slot_wait_max=SLOT_WAIT_S),
            admission=AdmissionLimits(max_slots=1, max_anonymous_slots=1,
                                      max_anonymous_per_address=1))
        port = await gateway.start("127.0.0.1", 0)
        try:
            b_reader, b_writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(A_AFTER_S)
            a_reader, a_writer = await asyncio.open_connection("127.0.0.1", port)
            a_writer.write(_message1())
            await a_writer.drain()
            a_first = await _frame(a_reader)  # message 2: A holds the slot, then says nothing
            await asyncio.sleep(B_MESSAGE1_AFTER_S - A_AFTER_S)
            b_writer.write(_message1())
            await b_writer.drain()
            b_first = await _frame(b_reader)
            counters = dict(gateway.counters)
            for w in (a_writer, b_writer):
                w.close()
            return a_first, b_first, counters
        finally:
            await gateway.stop()

    a_first, b_first, counters = asyncio.run(scenario())
    assert a_first is not None and parse_hint(a_first) is None  # A got message 2
    assert b_first is not None
    hint = parse_hint(b_first)
    assert hint is not None and hint.reason is HintReason.BUSY, b_first
    assert counters.get("slot_wait_timeout") == 1, counters
