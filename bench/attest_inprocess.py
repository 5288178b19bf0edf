"""``python -m bench.attest_inprocess [--attests N]``: the attestor's ``attest`` pipeline in
this process, without the worker loop: real request frames through ``codec.decode``, the
instrumented handler on a real redis-server (``RedisStore`` with the audit key and a real
``CheckpointFile``, fsync'd, in a temporary directory), ``codec.encode`` of the reply.
Prints the thread CPU (``time.thread_time``: user and kernel) per attest for 4 rounds and
the median of the last 3, with and without the checkpoint file (its fsync is most of the
kernel time). ``--checkpoints yes|no`` runs one of the two (under callgrind, the difference
of two runs with different ``--attests`` gives instructions per attest). Run it with
another checkout first on ``PYTHONPATH`` to A/B a change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.inprocess import cpu_per_request_us
from tests.support.redis_server import RedisServer
from tests.support.stack import REPO

sys.path.insert(0, str(REPO / "tests" / "unit"))

from device_builders import SELECTION, VAULT_KEY, make_device
from tpm_builders import quote_attest, sign_data, tpm_name

from services.attestor.enroll import EnrollSettings
from services.attestor.handler import AttestorDeps, handle
from services.attestor.policy import AttestPolicy
from shared.audit import AuditKey
from shared.audit_anchor import CheckpointFile
from shared.binding import quote_nonce
from shared.bus import codec
from shared.bus.interface import Request
from shared.config import Consequence, EnrollPolicy
from shared.metrics import WorkerMetrics, instrument
from shared.store.redis_store import REG, RedisStore
from shared.store.serialize import device_to_bytes
from shared.vault import Vault

ROUNDS = 4


def _run(port: int, tmp: Path, n: int, checkpoints: bool) -> list[float]:
    sink = CheckpointFile(tmp / "audit-checkpoints.jsonl") if checkpoints else None
    store = RedisStore(f"redis://127.0.0.1:{port}/0", audit_key=AuditKey(b"\x07" * 32),
                       checkpoints=sink)
    dev = make_device("alice")
    store._r.set(REG + "dev:" + dev.device_id, device_to_bytes(dev.record))
    deps = AttestorDeps(store, Vault(VAULT_KEY),
                        EnrollSettings(EnrollPolicy.TOFU, None, frozenset(), SELECTION),
                        AttestPolicy(SELECTION, 3, Consequence.LOCK, None))
    handler = instrument(handle, WorkerMetrics("attestor"))
    now = time.time()
    frames = []
    pcrs = {str(i): v for i, v in dev.pcrs.items()}
    for i in range(n * ROUNDS):
        h = i.to_bytes(4, "big") * 8
        attest = quote_attest(dev.pcrs, extra_data=quote_nonce(h), clock=1_000_000 + i,
                              signer=tpm_name(dev.record.ak_public))
        body: dict[str, Any] = {"device_id": dev.device_id, "h": h,
                                "ts": int((now + i * 1e-6) * 1e9), "attest": attest,
                                "signature": sign_data(dev.ak, attest), "pcrs": pcrs}
        frames.append(codec.encode(Request(f"a-{i}", "attestor", "attest", body, now + 600)))
    figures = cpu_per_request_us(handler, deps, frames, ROUNDS)
    store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.attest_inprocess")
    parser.add_argument("--attests", type=int, default=1000, help="attests per round")
    parser.add_argument("--checkpoints", choices=("both", "yes", "no"), default="both",
                        help="with the checkpoint file, without, or both (default)")
    args = parser.parse_args()
    variants = {"both": (True, False), "yes": (True,), "no": (False,)}[args.checkpoints]
    with tempfile.TemporaryDirectory() as tmp, RedisServer.start(Path(tmp)) as server:
        for checkpoints in variants:
            figures = _run(server.port, Path(tmp), args.attests, checkpoints)
            print(f"attest pipeline{'' if checkpoints else ' (no checkpoint file)'}, "
                  "us of CPU per attest:", " ".join(f"{f:.1f}" for f in figures),
                  f"median {statistics.median(figures[1:]):.1f}")


if __name__ == "__main__":
    main()
