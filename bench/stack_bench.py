"""The whole stack as processes (tests.support.stack) with one swtpm client device.

Concurrent channels belong to the one enrolled device and share its one TPM, as
on a real machine: TPM commands are serialized, the rest (Noise, gateway, bus,
board, Redis) overlaps.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._common import Result, Settings
from bench.noise_bench import bare_handshake_ms, bare_xx_ms
from bench.store_bench import raw_xadd_rate
from client import flows
from client.tpm import Tpm
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, provision_template

CHANNELS = 4
THREAD_JOIN_S = 60.0


def _quiet(_: str) -> None:
    pass


class _LockedTpm:
    """One Tpm shared by threads: every TPM command runs under one lock (one TPM per machine)."""

    def __init__(self, tpm: Tpm) -> None:
        self._tpm = tpm
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._tpm, name)
        if not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)

        return locked


def _posts_rate(tpm: Tpm, state: Any, channels: int, seconds: float) -> float:
    """Posts/s through the stack from ``channels`` threads, one channel each, one shared TPM.

    Channels are opened one after the other first: the attestor refuses a quote whose
    TPM clock is older than the last one it accepted, so concurrent connects could race.
    """
    shared: Any = _LockedTpm(tpm)
    chans = [flows.connect(tpm, state, _quiet) for _ in range(channels)]
    counts = [0] * channels
    errors: list[BaseException] = []
    barrier = threading.Barrier(channels + 1)
    times: dict[str, float] = {}

    def worker(index: int) -> None:
        try:
            ch = chans[index]
            flows.post(shared, state, ch, "warm-up")
            barrier.wait()
            barrier.wait()
            end = times["end"]
            n = 0
            while time.perf_counter() < end:
                flows.post(shared, state, ch, f"bench post {index}/{n}")
                n += 1
            counts[index] = n
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(channels)]
    start = time.perf_counter()
    try:
        for t in threads:
            t.start()
        try:
            barrier.wait()  # all warmed up
            start = time.perf_counter()
            times["end"] = start + seconds
            barrier.wait()  # go
        except threading.BrokenBarrierError:
            pass
        for t in threads:
            t.join(THREAD_JOIN_S)
    finally:
        for ch in chans:
            ch.close()
    if errors:
        raise errors[0]
    return sum(counts) / (time.perf_counter() - start)


def run(s: Settings) -> list[Result]:
    connects = 5 if s.quick else 20
    seconds = s.seconds * 2
    out = []
    with tempfile.TemporaryDirectory(prefix="attestgate-bench-stack-") as tmp_name:
        tmp = Path(tmp_name)
        template = provision_template(tmp / "template")
        tpm_proc: SwtpmProcess | None = None
        stack: Stack | None = None
        try:
            tpm_proc = SwtpmProcess.start(tmp / "tpm", template)
            stack = Stack.start(tmp / "stack", ca_dir=template.trust_dir, settings={
                "ATTESTGATE_ENROLL_POLICY": "require-ek-cert",
                "ATTESTGATE_LOG_LEVEL": "INFO",
                # Measures throughput, not the per-device post limit (default 5/s, burst 20).
                "ATTESTGATE_POST_RATE": "1000000", "ATTESTGATE_POST_BURST": "1000000",
            })
            with Tpm(tpm_proc.tcti) as tpm:
                t0 = time.perf_counter()
                state = flows.enroll(tpm, tmp / "home", stack.server, "bench", None,
                                     flows.ServerPin(None, True), False, _quiet)
                enroll_ms = (time.perf_counter() - t0) * 1000
                out.append(Result("stack", "enroll (EK cert, credential, quote)", enroll_ms,
                                  "ms", "bare XXpsk3 handshake", bare_xx_ms()))

                samples = []
                for _ in range(connects + 1):  # the first one warms up
                    t0 = time.perf_counter()
                    flows.connect(tpm, state, _quiet).close()
                    samples.append((time.perf_counter() - t0) * 1000)
                samples = sorted(samples[1:])
                out.append(Result("stack", f"attested connect (median of {connects})",
                                  samples[len(samples) // 2], "ms",
                                  "bare IKpsk2 handshake", bare_handshake_ms()))

                xadd = raw_xadd_rate(stack.redis.url, s.seconds)
                for n in (1, CHANNELS):
                    posts = _posts_rate(tpm, state, n, seconds)
                    out.append(Result("stack", f"posts through the stack, {n} channel(s)", posts,
                                      "ops/s", "raw XADD (stack redis, AOF off)", xadd))
        except BaseException:
            if stack is not None:
                for service in ("gateway", "registry", "attestor", "board"):
                    print(f"== {service} log\n{stack.log(service)[-1500:]}", file=sys.stderr)
            raise
        finally:
            if stack is not None:
                stack.stop()
            if tpm_proc is not None:
                tpm_proc.stop()
    return out
