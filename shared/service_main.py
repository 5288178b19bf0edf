"""Start-up shared by the three workers: logging, config, Redis readiness, signals."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from shared.bus.interface import Handler
from shared.config import ServerConfig
from shared.errors import AttestgateError
from shared.store.redis_store import RedisStore, wait_ready
from shared.worker import install_stop_signals, run_worker

D = TypeVar("D")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


def load_config(service: str) -> ServerConfig | None:
    """Read the environment and set up logging; None (after saying why) on a bad setting."""
    try:
        cfg = ServerConfig.from_env()
    except AttestgateError as exc:
        print(f"attestgate-{service}: configuration: {exc.detail}", file=sys.stderr)
        return None
    setup_logging(cfg.log_level)
    return cfg


def serve(service: str, handler: Handler[D], make_deps: Callable[[ServerConfig, RedisStore], D]
          ) -> int:
    """Run one worker of ``service`` until SIGTERM/SIGINT; returns the exit code."""
    cfg = load_config(service)
    if cfg is None:
        return 2
    log = logging.getLogger(f"attestgate.{service}")
    wait_ready(cfg.redis_url, timeout=30.0)
    store = RedisStore(cfg.redis_url)
    deps = make_deps(cfg, store)
    stop = threading.Event()
    install_stop_signals(stop)
    log.info("worker start service=%s bus=%s", service, ",".join(cfg.bus_endpoints))
    try:
        run_worker(service, handler, deps, bus_endpoints=cfg.bus_endpoints,
                   events_endpoints=cfg.events_endpoints, stop=stop)
    finally:
        store.close()
    log.info("worker stop service=%s", service)
    return 0
