"""``python -m bench.profile``: where an attested connect and a post spend their time.

Starts the stack (tests.support.stack) and one swtpm, enrolls a device, then

* counts the TPM commands of one connect and one post (ESAPI calls, by name, and the
  commands sent as bytes, by code);
* profiles ``connects`` connects and ``posts`` posts on the client with pyinstrument
  (top frames printed, the full HTML written to bench/results/profile-*.html);
* reads each service's CPU (``/proc/PID/stat``) over those operations;
* with ``--services``, runs registry, attestor and board under cProfile (a second worker
  of each, the first one stopped) and prints where their CPU went.

The findings are written down in bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from pyinstrument import Profiler

from bench.cpu import cpu_seconds
from client import flows
from client.tpm import Tpm
from tests.support.stack import REPO, Stack
from tests.support.swtpm import SwtpmProcess, provision_template

RESULTS = Path(__file__).with_name("results")


class _Counting:
    """Wraps an ESAPI context: counts every method call by name."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr) or name.startswith("tr_"):
            return attr

        def counted(*a: Any, **k: Any) -> Any:
            self.calls[name] += 1
            return attr(*a, **k)

        return counted


class _CountingTransport:
    """Wraps the TCTI: counts the commands sent as bytes (client/tpm/rawcmd.py) by code."""

    NAMES: ClassVar[dict[int, str]] = {
        0x173: "read_public", 0x155: "hmac", 0x158: "quote", 0x15E: "unseal",
        0x176: "start_auth_session", 0x17F: "policy_pcr", 0x165: "flush_context"}

    def __init__(self, inner: Any, calls: collections.Counter[str]) -> None:
        self._inner = inner
        self.calls = calls

    def transmit(self, data: bytes) -> None:
        code = int.from_bytes(data[6:10], "big")
        self.calls[f"{self.NAMES.get(code, hex(code))} (raw)"] += 1
        self._inner.transmit(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _quiet(_: str) -> None:
    pass


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--connects", type=int, default=100)
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--services", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="attestgate-profile-") as tmp_name:
        tmp = Path(tmp_name)
        template = provision_template(tmp / "template")
        with SwtpmProcess.start(tmp / "tpm", template) as tpm_proc, Stack.start(
            tmp / "stack", ca_dir=template.trust_dir,
            settings={"ATTESTGATE_POST_RATE": "1000000", "ATTESTGATE_POST_BURST": "1000000",
                      "ATTESTGATE_LOG_LEVEL": "WARNING"},
        ) as stack, Tpm(tpm_proc.tcti) as tpm:
            state = flows.enroll(tpm, tmp / "home", stack.server, "prof", None,
                                 flows.ServerPin(None, True), False, _quiet)
            profiled = _profiled_workers(stack, tmp) if args.services else {}
            try:
                flows.connect(tpm, state, _quiet).close()  # warm
                counter = _Counting(tpm._objs._ectx)  # bench only: count what reaches the TPM
                tpm._objs._ectx = counter
                tpm._objs._tcti_obj = _CountingTransport(tpm._objs._tcti_obj, counter.calls)
                ch = flows.connect(tpm, state, _quiet)
                print("TPM commands, one connect:", sum(counter.calls.values()),
                      dict(counter.calls))
                counter.calls.clear()
                flows.post(tpm, state, ch, "count")
                print("TPM commands, one post:", sum(counter.calls.values()), dict(counter.calls))
                tpm._objs._ectx = counter._inner
                pids = {name: [p.pid for p in procs if p.poll() is None]
                        for name, procs in stack.procs.items()}
                for name, (proc, _) in profiled.items():
                    pids[name].append(proc.pid)
                before = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
                prof = Profiler(interval=0.0002)
                t0 = time.perf_counter()
                prof.start()
                for _ in range(args.connects):
                    flows.connect(tpm, state, _quiet).close()
                prof.stop()
                wall = time.perf_counter() - t0
                after = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
                print(f"\n== {args.connects} connects: {wall / args.connects * 1000:.2f} ms each")
                for name, cpu in before.items():
                    print(f"   {name}: {(after[name] - cpu) / args.connects * 1000:.3f} ms "
                          "CPU per connect")
                (RESULTS / "profile-connect.html").write_text(prof.output_html())
                print(prof.output_text(unicode=False, color=False, show_all=False)[:6000])
                before = after
                prof = Profiler(interval=0.0002)
                t0 = time.perf_counter()
                prof.start()
                for i in range(args.posts):
                    flows.post(tpm, state, ch, f"p{i}")
                prof.stop()
                wall = time.perf_counter() - t0
                after = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
                ch.close()
                print(f"\n== {args.posts} posts: {wall / args.posts * 1000:.2f} ms each")
                for name, cpu in before.items():
                    print(f"   {name}: {(after[name] - cpu) / args.posts * 1000:.3f} ms "
                          "CPU per post")
                (RESULTS / "profile-post.html").write_text(prof.output_html())
                print(prof.output_text(unicode=False, color=False, show_all=False)[:6000])
                for name, (proc, out) in profiled.items():
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(10)
                    print(f"\n== {name} (cProfile, connects and posts above): "
                          "the handler's callees")
                    stats = pstats.Stats(str(out)).sort_stats("cumulative")
                    stats.print_callees(r"handler.py:\d+\((_attest|_connect|_post)\)")
                    stats.print_callees(r"redis_store.py:\d+\((append_audit|update_device)\)")
            finally:
                for proc, _ in profiled.values():  # stopped above, or after an error here
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait(10)


def _profiled_workers(stack: Stack, tmp: Path) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    """Replace each worker by one running under cProfile (stopped by SIGTERM, so it writes)."""
    out = {}
    for name in ("registry", "attestor", "board"):
        prof = tmp / f"{name}.prof"
        log = open(tmp / f"{name}-prof.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", str(prof), "-m",
                                 f"services.{name}"], cwd=REPO, env=stack.env, stdout=log,
                                stderr=subprocess.STDOUT)
        log.close()
        out[name] = (proc, prof)
    time.sleep(2.0)  # registered with the gateway
    for name in out:
        stack.kill(name, 0, signal.SIGTERM)
    return out


if __name__ == "__main__":
    main()
