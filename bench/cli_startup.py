"""What a user's ``attestgate`` command costs as a fresh process (issue 10's first row).

``cli_post_ms`` (a row of the stack section): the wall time of a fresh ``attestgate post``
process against a fleet device (start-up, imports, the attested connect, the post, exit),
against the wall time of a fresh ``python -c pass`` from the same interpreter measured in
the same run, interleaved one by one: ratio = what our CLI adds to the interpreter's own
start.

Standalone, for A/B of checkouts (``git archive`` of another commit into a directory)::

    python -m bench.cli_startup [--runs N] [--only import,help,status,post,read] [--no-pyc]
                                [OTHER_CHECKOUT ...]

starts one swtpm device and the stack, then runs each command alternately with this
checkout and each OTHER_CHECKOUT first on ``PYTHONPATH`` and prints the medians (ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASS = [sys.executable, "-c", "pass"]
IMPORT_CLI = [sys.executable, "-c", "import client.cli"]


def cli(*words: str) -> list[str]:
    """``attestgate WORDS``: the venv's console script when there is one (what a user runs),
    else ``python -m client.cli``; either imports client.cli from PYTHONPATH first."""
    script = Path(sys.executable).with_name("attestgate")
    if script.exists():
        return [sys.executable, str(script), *words]
    return [sys.executable, "-m", "client.cli", *words]


def device_args(tcti: str, home: Path) -> list[str]:
    return ["--tcti", tcti, "--home", str(home), "--quiet"]


def wall_ms(argv: list[str], env: dict[str, str]) -> float:
    """One run's wall time; the command must succeed (exit 0)."""
    t0 = time.perf_counter()
    # cwd "/": `python -c` puts its cwd first on sys.path, ahead of PYTHONPATH.
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, check=False, cwd="/")
    ms = (time.perf_counter() - t0) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{argv[2:]} exited {done.returncode}: "
                           f"{done.stderr.decode(errors='replace')[-500:]}")
    return ms


def env_for(checkout: Path | None, pycache: Path) -> dict[str, str]:
    """The environment with ``checkout`` first on PYTHONPATH, and bytecode cached under
    ``pycache``: an installed package has its .pyc files, so a user's process does not
    compile our modules (with PYTHONDONTWRITEBYTECODE, as on this machine, every start
    compiled ~50 of them: ~120 ms, more than all the rest of the imports)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache / (checkout.name if checkout else "this"))
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    return env


def post_vs_pass(tcti: str, home: Path, runs: int) -> tuple[float, float]:
    """Medians (ms) of a fresh ``attestgate post`` and of ``python -c pass``, interleaved."""
    with tempfile.TemporaryDirectory(prefix="attestgate-bench-pyc-") as pycache:
        env = env_for(None, Path(pycache))
        post = cli("post", *device_args(tcti, home), "cli_post_ms")
        wall_ms(PASS, env)
        wall_ms(post, env)  # warm-up: bytecode cached, the saved TPM contexts written
        posts, passes = [], []
        for _ in range(runs):
            passes.append(wall_ms(PASS, env))
            posts.append(wall_ms(post, env))
    return statistics.median(posts), statistics.median(passes)


def _commands(tcti: str, home: Path, only: list[str]) -> dict[str, list[str]]:
    dev = device_args(tcti, home)
    every = {"pass": PASS, "import": IMPORT_CLI, "help": cli("--help"),
             "status": cli("status", *dev), "post": cli("post", *dev, "ab"),
             "read": cli("read", *dev, "--limit", "1")}
    return {k: v for k, v in every.items() if k == "pass" or k in only}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cli_startup")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--only", default="import,help,status,post")
    p.add_argument("--no-pyc", action="store_true",
                   help="no bytecode cache: every run compiles every module from source")
    p.add_argument("others", nargs="*", type=Path, metavar="OTHER_CHECKOUT")
    a = p.parse_args(argv)
    from bench.fleet import start_fleet  # noqa: PLC0415 (the fleet only when run)
    from bench.stack_bench import SETTINGS  # noqa: PLC0415

    checkouts: list[Path | None] = [None, *a.others]
    with tempfile.TemporaryDirectory(prefix="attestgate-bench-cli-") as tmp:
        fleet = start_fleet(Path(tmp), 1, SETTINGS)
        try:
            commands = _commands(fleet.tpms[0].tcti, fleet.homes[0], a.only.split(","))
            envs = [env_for(c, Path(tmp) / "pycache") for c in checkouts]
            if a.no_pyc:
                envs = [{**{k: v for k, v in e.items() if k != "PYTHONPYCACHEPREFIX"},
                         "PYTHONDONTWRITEBYTECODE": "1"} for e in envs]
            samples: dict[tuple[str, int], list[float]] = {}
            for name, argv_ in commands.items():  # warm-up, each checkout
                for i, env in enumerate(envs):
                    wall_ms(argv_, env)
                    samples[(name, i)] = []
            for _ in range(a.runs):
                for name, argv_ in commands.items():
                    for i, env in enumerate(envs):
                        samples[(name, i)].append(wall_ms(argv_, env))
        finally:
            fleet.stop()
    print(f"median of {a.runs} (ms), load {os.getloadavg()[0]:.1f}; columns: "
          + ", ".join(str(c or "this checkout") for c in checkouts))
    for name in commands:
        print(f"{name:>8}: " + "  ".join(
            f"{statistics.median(samples[(name, i)]):7.1f}" for i in range(len(checkouts))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
