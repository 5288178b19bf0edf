"""``python -m bench.noise_engine_ab OTHER_CHECKOUT [--rounds R] [--n N]``: NoiseSession's
CPU per handshake step in this checkout and another one, interleaved.

Each round runs one child process per checkout (this one first, then the other, then
this one ...), with that checkout first on ``PYTHONPATH``; the child times N CONNECT and
N ENROLL handshakes through NoiseSession's public interface with ``time.process_time``
around each step (the session PSK is a fixed ``Psk``, not the HMAC, so only the Noise
engine is timed) and prints microseconds per step as JSON. The figures are per side:
``r_*`` the responder (the gateway), ``i_*`` the initiator (the client).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def child(n: int) -> dict[str, float]:
    from shared.framing import Mode, preamble  # noqa: PLC0415 (from the checkout under test)
    from shared.keys import Psk, StaticKey  # noqa: PLC0415
    from shared.noise_session import NoiseSession  # noqa: PLC0415

    clock = time.process_time
    client, server = StaticKey.generate(), StaticKey.generate()
    psk = Psk(os.urandom(32))
    pc, pe = preamble(Mode.CONNECT), preamble(Mode.ENROLL)
    t: dict[str, float] = dict.fromkeys(
        ("r_new", "r_msg1", "r_psk", "r_msg2", "i_new", "i_msg1", "i_psk", "i_msg2",
         "xx_r", "xx_i"), 0.0)
    for _ in range(50):  # warm-up: caches, allocator
        i = NoiseSession.initiator(pc, client, server_static=server.public)
        r = NoiseSession.responder(pc, server)
        r.read_handshake(i.write_handshake(b"12345678"))
        r.set_psk(psk)
        i.set_psk(psk)
        i.read_handshake(r.write_handshake())
    for _ in range(n):
        a = clock()
        i = NoiseSession.initiator(pc, client, server_static=server.public)
        b = clock()
        m1 = i.write_handshake(b"12345678")
        c = clock()
        r = NoiseSession.responder(pc, server)
        d = clock()
        r.read_handshake(m1)
        e = clock()
        r.set_psk(psk)
        f = clock()
        m2 = r.write_handshake()
        g = clock()
        i.set_psk(psk)
        h = clock()
        i.read_handshake(m2)
        j = clock()
        assert i.established and r.established
        t["i_new"] += b - a
        t["i_msg1"] += c - b
        t["r_new"] += d - c
        t["r_msg1"] += e - d
        t["r_psk"] += f - e
        t["r_msg2"] += g - f
        t["i_psk"] += h - g
        t["i_msg2"] += j - h
    for _ in range(n // 2):
        a = clock()
        i = NoiseSession.initiator(pe, client, psk=psk)
        m1 = i.write_handshake(b"")
        b = clock()
        r = NoiseSession.responder(pe, server)
        r.read_handshake(m1)
        r.set_psk(psk)
        m2 = r.write_handshake()
        c = clock()
        i.read_handshake(m2)
        m3 = i.write_handshake()
        d = clock()
        r.read_handshake(m3)
        e = clock()
        t["xx_i"] += (b - a) + (d - c)
        t["xx_r"] += (c - b) + (e - d)
    out = {k: v / (n if not k.startswith("xx") else n // 2) * 1e6 for k, v in t.items()}
    out["r_total"] = out["r_new"] + out["r_msg1"] + out["r_psk"] + out["r_msg2"]
    out["i_total"] = out["i_new"] + out["i_msg1"] + out["i_psk"] + out["i_msg2"]
    return out


def _run_child(checkout: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    proc = subprocess.run([sys.executable, __file__, "--child", str(n)], env=env,
                          capture_output=True, text=True, check=True, cwd=checkout)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.noise_engine_ab")
    parser.add_argument("other", nargs="?", type=Path)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--child", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return
    checkouts = {"head": HERE, "other": args.other.resolve()}
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in checkouts}
    for rnd in range(args.rounds):
        order = list(checkouts) if rnd % 2 == 0 else list(reversed(checkouts))
        for name in order:
            rows[name].append(_run_child(checkouts[name], args.n))
        print(f"round {rnd + 1}: " + ", ".join(
            f"{k} r {rows[k][-1]['r_total']:.0f} i {rows[k][-1]['i_total']:.0f} us"
            for k in checkouts), flush=True)
    keys = list(rows["head"][0])
    print(f"{'us per step (median of rounds)':34} {'other':>8} {'head':>8} {'ratio':>6}  "
          "per-round ratios")
    for k in keys:
        o = statistics.median(r[k] for r in rows["other"])
        h = statistics.median(r[k] for r in rows["head"])
        ratios = [hr[k] / orow[k] if orow[k] else float("nan")
                  for hr, orow in zip(rows["head"], rows["other"], strict=True)]
        print(f"{k:34} {o:8.1f} {h:8.1f} {h / o if o else float('nan'):6.2f}  "
              + " ".join(f"{x:.2f}" for x in ratios))


if __name__ == "__main__":
    main()
