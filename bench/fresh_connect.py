"""``python -m bench.fresh_connect [N] [--bind-pcrs]``: what the first connect of a new process
asks of the TPM.

One swtpm, the stack, one enrolled device; then N times: a fresh ``Tpm`` (as a new
``attestgate post`` process has) and ``flows.connect`` with the client's home, ESAPI
calls timed one by one (wall clock, medians over the N connects; per call name the
sum within one connect; commands sent as bytes show as ``transmit`` + ``receive``). Then the
same from a ``Tpm`` that connected before (warm).
"""

from __future__ import annotations

import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client import flows
from client.tpm import KeyBlob, Tpm
from tests.support.stack import Stack
from tests.support.swtpm import SwtpmProcess, provision_template


def _quiet(_: str) -> None:
    pass


class _Timing:
    """Wraps an ESAPI context: times every method call, by name."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.ms: collections.defaultdict[str, list[float]] = collections.defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("tr_"):
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.ms[name].append((time.perf_counter() - t0) * 1000)
        return timed


def main(runs: int, bind_pcrs: bool) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        template = provision_template(tmp / "template")
        with SwtpmProcess.start(tmp / "tpm", template) as swtpm, Stack.start(
                tmp / "stack", ca_dir=template.trust_dir,
                settings={"ATTESTGATE_LOG_LEVEL": "WARNING"}) as stack:
            home = tmp / "home"
            with Tpm(swtpm.tcti) as tpm:
                state = flows.enroll(tpm, home, stack.server, "prof", None,
                                     flows.ServerPin(None, True), bind_pcrs, _quiet)
            totals: collections.defaultdict[str, list[float]] = collections.defaultdict(list)
            counts: collections.Counter[str] = collections.Counter()
            walls, opens, tpm_ms, signs = [], [], [], []
            post_key = KeyBlob.from_bytes(bytes.fromhex(state.post_key))
            for _ in range(runs):
                t0 = time.perf_counter()
                with Tpm(swtpm.tcti) as tpm:
                    t1 = time.perf_counter()
                    tpm._objs._ectx = timing = _Timing(tpm._objs._ectx)
                    # Commands sent as bytes (client/tpm/rawcmd.py) go through the TCTI.
                    raw = tpm._objs._tcti_obj = _Timing(tpm._objs._tcti_obj)
                    raw.ms = timing.ms
                    flows.connect(tpm, state, _quiet, home).close()
                    t2 = time.perf_counter()
                    for name, ms in timing.ms.items():
                        totals[name].append(sum(ms))
                        counts[name] += len(ms)
                    tpm_ms.append(sum(sum(ms) for ms in timing.ms.values()))
                    tpm.sign(post_key, bytes(32))  # what `attestgate post` asks next
                    t3 = time.perf_counter()
                walls.append((t2 - t0 + time.perf_counter() - t3) * 1000)  # without the sign
                opens.append((t1 - t0) * 1000)
                signs.append((t3 - t2) * 1000)
            print(f"fresh connect: median {statistics.median(walls):.2f} ms "
                  f"(Tpm() {statistics.median(opens):.2f} ms, TPM calls "
                  f"{statistics.median(tpm_ms):.2f} ms); then the post's Tpm.sign "
                  f"{statistics.median(signs):.2f} ms")
            for name, ms in sorted(totals.items(), key=lambda kv: -statistics.median(kv[1])):
                print(f"  {name:22s} {statistics.median(ms):6.3f} ms  x{counts[name] / runs:.1f}")
            with Tpm(swtpm.tcti) as tpm:
                flows.connect(tpm, state, _quiet, home).close()
                warm = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    flows.connect(tpm, state, _quiet, home).close()
                    warm.append((time.perf_counter() - t0) * 1000)
            print(f"warm connect: median {statistics.median(warm):.2f} ms")


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if a.isdigit()]
    main(int(numbers[0]) if numbers else 20, "--bind-pcrs" in sys.argv[1:])
