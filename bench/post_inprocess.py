"""``python -m bench.post_inprocess [--posts N]``: the board's post pipeline in this process,
without the worker loop: real request frames through ``codec.decode``, the instrumented
handler on a real redis-server (``RedisStore``), ``codec.encode`` of the reply and of the
event. Prints the thread CPU (``time.thread_time``) per post for 4 rounds and the median
of the last 3. Run it with another checkout first on ``PYTHONPATH`` to A/B a change.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.inprocess import cpu_per_request_us
from tests.support.redis_server import RedisServer
from tests.support.stack import REPO

sys.path.insert(0, str(REPO / "tests" / "unit"))

from device_builders import make_device
from tpm_builders import sign_digest

from services.board.handler import BoardDeps, handle
from shared.board_settings import BoardSettings
from shared.bus import codec
from shared.bus.interface import Request
from shared.metrics import WorkerMetrics, instrument
from shared.posts import post_digest
from shared.store.redis_store import REG, RedisStore
from shared.store.serialize import device_to_bytes

ROUNDS = 4


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.post_inprocess")
    parser.add_argument("--posts", type=int, default=1500, help="posts per round")
    args = parser.parse_args()
    n = args.posts
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(Path(tmp)) as server:
        store = RedisStore(f"redis://127.0.0.1:{server.port}/0")
        dev = make_device("alice")
        store._r.set(REG + "dev:" + dev.device_id, device_to_bytes(dev.record))
        settings = BoardSettings.defaults()
        settings = replace(settings, quota=replace(settings.quota, rate=1e9, burst=10**9))
        deps = BoardDeps(store, settings)
        handler = instrument(handle, WorkerMetrics("board"))
        now = time.time()
        frames = []
        for i in range(n * ROUNDS):
            key, ts, text = os.urandom(16), int(now * 1000), f"bench post {i}, hello world"
            body = {"device_id": dev.device_id, "ts": ts, "text": text, "key": key,
                    "signature": sign_digest(dev.post_key,
                                             post_digest(dev.device_id, ts, key, text))}
            frames.append(codec.encode(Request(f"s-{i}", "board", "post", body, now + 600)))
        figures = cpu_per_request_us(handler, deps, frames, ROUNDS)
        store.close()
    print("board pipeline, us of CPU per post:", " ".join(f"{f:.1f}" for f in figures),
          f"median {statistics.median(figures[1:]):.1f}")


if __name__ == "__main__":
    main()
