"""``python -m bench.gateway_harness [--connects N] [--clients C] [--profile] [--log-level L]``:
the gateway's own connect path in one process, without TPMs, registry or attestor code.

This process runs the real gateway (``Gateway`` over ``MeteredBus`` over ``ZmqBus``, on
uvloop unless ``--loop asyncio``); canned workers in processes of their own answer the
registry's ``connect`` (a device id and a fixed PSK) and the attestor's ``attest``; client
processes run the IKpsk2 initiator and send an ATTEST (no TPM: the canned attestor accepts
it) and close, back to back. The figure is the gateway's main-thread CPU per connect
(``time.thread_time``; ZeroMQ's I/O thread apart), so neither the clients nor the workers
count. ``--profile`` runs it under cProfile (thread-time clock): read shares, not totals.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import multiprocessing
import os
import pstats
import resource
import struct
import threading
import time
from multiprocessing.synchronize import Event
from typing import Any

from services.gateway import handshake
from services.gateway.eventloop import loop_factory, loop_kind
from services.gateway.observe import GatewayMetrics, MeteredBus
from services.gateway.server import Gateway
from shared.bus.interface import Reply, Request
from shared.bus.zmq_bus import ZmqBus
from shared.errors import AttestgateError
from shared.framing import FrameDecoder, Mode, encode_frame, parse_preamble, preamble
from shared.keys import Psk, StaticKey, device_id_for
from shared.logfmt import setup_logging
from shared.messages import decode_server_message, encode_reply, encode_request
from shared.noise_session import NoiseSession
from shared.wire import PREAMBLE_LEN, Command

CTX = multiprocessing.get_context("spawn")
PSK = b"\x17" * 32
SELECTION = "sha256:0,1,2,3,4,5,6,7"


def _registry(request: Request, deps: Any, now: float) -> Reply:
    key = bytes(request.body["noise_public"])
    return Reply(request.id, {"device_id": device_id_for(key), "psk": PSK})


def _attestor(request: Request, deps: Any, now: float) -> Reply:
    return Reply(request.id, {"name": "harness", "status": "active", "baselines": []})


def worker_main(service: str, bus: str, events: str, stop: Event) -> None:
    from shared.worker import run_worker  # noqa: PLC0415 (the worker processes only)
    handler = _registry if service == "registry" else _attestor
    flag = threading.Event()

    def relay() -> None:
        stop.wait()
        flag.set()

    threading.Thread(target=relay, daemon=True).start()
    run_worker(service, handler, None, bus_endpoints=[bus], events_endpoints=[events],
               stop=flag)


async def _one_connect(port: int, server: bytes, key: StaticKey) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pre = preamble(Mode.CONNECT)
    noise = NoiseSession.initiator(pre, key, server_static=server)
    writer.write(pre.encode() + encode_frame(noise.write_handshake(
        struct.pack(">Q", time.time_ns()))))
    decoder = FrameDecoder()

    async def frame() -> bytes:
        while (f := decoder.next_frame()) is None:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("closed")
            decoder.feed(data)
        return f

    message2 = await frame()
    noise.set_psk(Psk(PSK))
    noise.read_handshake(message2)
    writer.write(encode_frame(noise.encrypt(encode_request(
        1, Command.ATTEST, attest=b"a" * 120, signature=b"s" * 72, pcrs={}))))
    reply = decode_server_message(noise.decrypt(await frame()))
    if not reply.ok:
        raise RuntimeError(f"refused: {reply.code}")
    writer.close()


def client_main(port: int, server: bytes, count: int, go: Event, done: Any) -> None:
    key = StaticKey.generate()

    async def run() -> int:
        n = 0
        for _ in range(count):
            try:
                await _one_connect(port, server, key)
                n += 1
            except (ConnectionError, RuntimeError, AttestgateError):
                pass
        return n

    go.wait()
    done.put(asyncio.run(run()))


async def _bare_server(kind: str, bus: MeteredBus, static: StaticKey) -> int:
    """A floor for the gateway's connect path: the same socket exchanges with the same
    Noise responder (``io``), plus the same two bus requests (``bus``); no admission,
    deadlines, ``Peer``, session or log lines."""
    n = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pre = parse_preamble(await reader.readexactly(PREAMBLE_LEN))
        (length,) = struct.unpack(">H", await reader.readexactly(2))
        first = handshake.read_connect_message1(pre, static, await reader.readexactly(length))
        n[0] += 1
        k = n[0]
        if kind == "bus":
            await bus.request("registry", "connect", {"noise_public": first.client_key,
                              "e_i": b"e" * 32, "e_r": b"r" * 32, "ts": 1},
                              request_id=f"b{k}-c", timeout=5.0)
        first.noise.set_psk(Psk(PSK))
        writer.write(encode_frame(first.noise.write_handshake()))
        (length,) = struct.unpack(">H", await reader.readexactly(2))
        first.noise.decrypt(await reader.readexactly(length))
        if kind == "bus":
            await bus.request("attestor", "attest", {"device_id": "d", "h": b"h" * 32},
                              request_id=f"b{k}-a", timeout=5.0, idempotent=False)
        writer.write(encode_frame(first.noise.encrypt(encode_reply(1, device_id="d",
                                                                    name="harness"))))
        await reader.read(65536)  # EOF
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return int(server.sockets[0].getsockname()[1])


async def _gateway(args: argparse.Namespace) -> None:
    bus = ZmqBus("tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    await bus.start()
    static = StaticKey.generate()
    metered = MeteredBus(bus, GatewayMetrics())
    gateway = Gateway(metered, static, SELECTION)
    if args.bare:
        port = await _bare_server(args.bare, metered, static)
    else:
        port = await gateway.start("127.0.0.1", 0)
    stop, go = CTX.Event(), CTX.Event()
    workers = [CTX.Process(target=worker_main, args=(s, bus.bus_endpoint, bus.events_endpoint,
                                                     stop)) for s in ("registry", "attestor")]
    done = CTX.Queue()
    clients = [CTX.Process(target=client_main, args=(port, static.public, args.connects, go,
                                                      done)) for _ in range(args.clients)]
    for p in workers + clients:
        p.start()
    try:
        await _measure(args, gateway, port, static, go, done, len(clients))
    finally:
        stop.set()
        go.set()
        for p in clients + workers:
            p.join(10)
            if p.is_alive():
                p.kill()
        await gateway.stop()
        await bus.close()


async def _measure(args: argparse.Namespace, gateway: Gateway, port: int, static: StaticKey,
                   go: Event, done: Any, clients: int) -> None:
    await asyncio.sleep(3.0)  # workers register
    warm = StaticKey.generate()  # a known key after its first connect, as the clients' are
    for _ in range(20):
        await _one_connect(port, static.public, warm)
    profiler = cProfile.Profile(time.thread_time) if args.profile else None
    t0, w0 = time.thread_time(), time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_THREAD)
    if profiler is not None:
        profiler.enable()
    go.set()
    total = 0
    for _ in range(clients):
        total += await asyncio.to_thread(done.get)
    if profiler is not None:
        profiler.disable()
    cpu, wall = time.thread_time() - t0, time.perf_counter() - w0
    r1 = resource.getrusage(resource.RUSAGE_THREAD)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    print(f"connects {total} in {wall:.2f} s ({total / wall:.0f}/s); gateway main thread "
          f"{cpu / total * 1e6:.0f} us per connect (user {user / total * 1e6:.0f}, sys "
          f"{system / total * 1e6:.0f}); counters {dict(gateway.counters)}",
          flush=True)
    if profiler is not None:
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(args.profile)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_harness")
    parser.add_argument("--connects", type=int, default=1000, help="per client")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--log-level", default="WARNING", help="the gateway's lines below "
                        "WARNING go to $HARNESS_LOG (default /dev/null)")
    parser.add_argument("--profile", metavar="FILE.prof")
    parser.add_argument("--bare", choices=("io", "bus"),
                        help="not the gateway: the same exchanges (io), plus its two bus "
                        "requests (bus), with Noise")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    # The services' own log lines (logfmt), to HARNESS_LOG or /dev/null below WARNING.
    setup_logging(args.log_level)
    if args.log_level != "WARNING":
        handler = logging.getLogger().handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(open(os.environ.get("HARNESS_LOG", os.devnull), "a"))  # noqa: SIM115
    factory, _ = loop_factory(loop_kind({"ATTESTGATE_EVENT_LOOP": args.loop}))
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_gateway(args))


if __name__ == "__main__":
    main()
