"""A worker process for the bus integration tests: ``run_worker`` around a test handler.

    python bus_worker.py SERVICE BUS_ENDPOINTS EVENTS_ENDPOINTS
        [--interval S] [--liveness N] [--markers DIR] [--curve SERVER_PUBLIC,PUBLIC,SECRET]

Endpoint lists are comma-separated. Ops:

* ``echo``  -> ``{"pid", "body"}``
* ``slow``  -> writes ``DIR/<request id>`` holding its pid, sleeps ``body["delay"]``, then
  ``{"pid"}`` (the marker lets a test kill exactly the worker holding a request)
* ``boom``  -> raises (the worker loop must answer ``internal``)
* ``emit``  -> ``{"pid"}`` plus an event ``(body["topic"], body["event"])``
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path

from shared.bus.interface import BusEvent, Reply, Request
from shared.bus.zmq_bus import CurveClientKeys
from shared.errors import ErrorCode
from shared.worker import install_stop_signals, run_worker


class Deps:
    def __init__(self, markers: Path | None) -> None:
        self.markers = markers
        self.pid = os.getpid()


def handle(request: Request, deps: Deps, now: float) -> Reply:
    match request.op:
        case "echo":
            return Reply(request.id, {"pid": deps.pid, "body": dict(request.body)})
        case "slow":
            if deps.markers is not None:
                marker = deps.markers / request.id
                marker.with_suffix(".tmp").write_text(str(deps.pid))
                marker.with_suffix(".tmp").rename(marker)
            time.sleep(float(request.body["delay"]))
            return Reply(request.id, {"pid": deps.pid})
        case "boom":
            raise RuntimeError("secret detail that must not cross the bus")
        case "emit":
            event = BusEvent(str(request.body["topic"]), dict(request.body["event"]))
            return Reply(request.id, {"pid": deps.pid}, events=(event,))
    return Reply.failure(request.id, ErrorCode.UNKNOWN_COMMAND)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("service")
    parser.add_argument("bus")
    parser.add_argument("events")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--liveness", type=int, default=3)
    parser.add_argument("--markers", type=Path)
    parser.add_argument("--curve", help="server_public,public,secret (Z85)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"worker[{os.getpid()}] %(message)s")
    curve = None
    if args.curve:
        server_public, public, secret = (k.encode() for k in args.curve.split(","))
        curve = CurveClientKeys(server_public, public, secret)
    stop = threading.Event()
    install_stop_signals(stop)
    run_worker(
        args.service,
        handle,
        Deps(args.markers),
        bus_endpoints=args.bus.split(","),
        events_endpoints=args.events.split(",") if args.events else [],
        stop=stop,
        heartbeat_interval=args.interval,
        liveness=args.liveness,
        reconnect_initial=args.interval,
        reconnect_max=4 * args.interval,
        curve=curve,
    )


if __name__ == "__main__":
    main()
