"""Start-up shared by the services: settings, logging, server keys, Redis readiness, signals.

A service that cannot start as configured exits 2 after one line on stderr that
says why (``attestgate-<service>: ...``): a setting that is not valid, a server
home it cannot write, a server key that is missing while the store depends on it.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from shared import logfmt
from shared.audit import AuditKey
from shared.audit_anchor import CHECKPOINT_FILE, CheckpointFile
from shared.bus.interface import Handler
from shared.config import ConfigError, ServerConfig
from shared.errors import AttestgateError
from shared.metrics import Health, MetricsServer, WorkerMetrics, instrument
from shared.ops_settings import LogFormat, OpsSettings
from shared.store.redis_store import RedisStore, wait_ready
from shared.vault import (
    STORAGE_KEY_FILE,
    ServerKeyError,
    StoreUsage,
    Vault,
    audit_key,
    init_server_home,
)
from shared.worker import install_stop_signals, run_worker

D = TypeVar("D")
EXIT_CONFIG = 2
REDIS_READY_TIMEOUT = 30.0


class StartError(Exception):
    """The service cannot start; ``str()`` is the one line to print; exit 2."""


def setup_logging(level: str, fmt: LogFormat = LogFormat.LOGFMT) -> None:
    """One line per record on stderr: logfmt, or JSON (ATTESTGATE_LOG_FORMAT=json)."""
    logfmt.setup_logging(level, fmt)


def say(service: str, message: str) -> None:
    print(f"attestgate-{service}: {message}", file=sys.stderr)


def load_config(service: str) -> ServerConfig | None:
    """Read and check every setting and set up logging; None (after one line) if not valid."""
    try:
        cfg = ServerConfig.from_env()
        ops = OpsSettings.from_env()
        cfg.check_files()
    except ConfigError as exc:
        say(service, f"configuration: {exc}")
        return None
    except OSError as exc:  # an EK CA directory or allowlist that cannot be read
        say(service, f"configuration: {exc.filename}: {exc.strerror}")
        return None
    setup_logging(cfg.log_level, ops.log_format)
    return cfg


def store_usage(store: RedisStore) -> StoreUsage:
    devices, entries = store.usage()
    return StoreUsage(devices, entries)


def ensure_server_keys(cfg: ServerConfig, store: RedisStore | None) -> tuple[str, ...]:
    """Create the server keys on a first start; raises StartError when they cannot be had.

    ``store`` is asked what depends on the keys only when one is missing (then Redis
    must answer); a missing key is never re-created while the store depends on it.
    """
    home = cfg.server_home

    def usage() -> StoreUsage:
        if store is None:
            wait_ready(cfg.redis_url, timeout=REDIS_READY_TIMEOUT)
            probe = RedisStore(cfg.redis_url)
            try:
                return store_usage(probe)
            finally:
                probe.close()
        return store_usage(store)

    try:
        created = init_server_home(home, usage)
    except ServerKeyError as exc:
        raise StartError(exc.message) from None
    except OSError as exc:
        raise StartError(f"ATTESTGATE_SERVER_HOME={str(home)!r}: cannot create the server "
                         f"keys there ({exc.strerror}): {exc.filename}") from None
    except AttestgateError as exc:
        raise StartError(f"store {_safe(cfg.redis_url)} unreachable: {exc.detail}") from None
    if created:
        logging.getLogger("attestgate.keys").warning(
            "first start: created %s in %s", ", ".join(created), home)
    return created


@dataclass(frozen=True)
class WorkerKeys:
    vault: Vault
    audit_key: AuditKey
    checkpoints: CheckpointFile


def open_worker_keys(cfg: ServerConfig, store: RedisStore) -> WorkerKeys:
    """The storage and audit keys and the checkpoint file; raises StartError."""
    ensure_server_keys(cfg, store)
    checkpoints = CheckpointFile(cfg.server_home / CHECKPOINT_FILE)
    try:
        keys = WorkerKeys(Vault.open(cfg.server_home), audit_key(cfg.server_home), checkpoints)
        checkpoints.check_writable()
        _check_storage_key(cfg, keys.vault, store)
    except ServerKeyError as exc:
        raise StartError(exc.message) from None
    except OSError as exc:
        raise StartError(f"ATTESTGATE_SERVER_HOME={str(cfg.server_home)!r}: cannot write the "
                         f"audit checkpoints ({exc.strerror}): {checkpoints.path}") from None
    return keys


def _check_storage_key(cfg: ServerConfig, vault: Vault, store: RedisStore) -> None:
    """A storage key that does not open the stored devices is the wrong one (another home)."""
    try:
        device = store.any_device()
    except AttestgateError as exc:
        raise StartError(f"store {_safe(cfg.redis_url)} unreachable: {exc.detail}") from None
    if device is None:
        return
    try:
        vault.unseal(device.psk_sealed, device.device_id)
    except AttestgateError:
        raise StartError(
            f"{cfg.server_home / STORAGE_KEY_FILE} (ATTESTGATE_SERVER_HOME) does not decrypt the "
            f"devices in the store {_safe(cfg.redis_url)}: it is not the key they were enrolled "
            "under; check ATTESTGATE_SERVER_HOME, or restore the original storage.key from "
            "backup") from None


def _safe(url: str) -> str:
    """The Redis URL without credentials, for messages."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname or ''}{f':{u.port}' if u.port else ''}{u.path}"


def serve(service: str, handler: Handler[D],
          make_deps: Callable[[ServerConfig, RedisStore, WorkerKeys], D]) -> int:
    """Run one worker of ``service`` until SIGTERM/SIGINT; returns the exit code.

    The worker gets the storage and audit keys from the server home (created on a
    first start), and its store appends audit entries with checkpoints.
    """
    def build(cfg: ServerConfig) -> tuple[RedisStore, D]:
        probe = RedisStore(cfg.redis_url)
        try:
            keys = open_worker_keys(cfg, probe)
            moved = probe.migrate_name_index()
        except AttestgateError as exc:
            raise StartError(f"store {_safe(cfg.redis_url)}: {exc.detail}") from None
        finally:
            probe.close()
        if moved:
            logging.getLogger("attestgate.store").info("name index: %d name(s) casefolded", moved)
        store = RedisStore(cfg.redis_url, audit_key=keys.audit_key, checkpoints=keys.checkpoints)
        return store, make_deps(cfg, store, keys)

    return _run(service, handler, build)


def serve_without_keys(service: str, handler: Handler[D],
                       make_deps: Callable[[ServerConfig, RedisStore], D]) -> int:
    """:func:`serve` for a worker that needs no server key and writes no audit entry."""
    def build(cfg: ServerConfig) -> tuple[RedisStore, D]:
        store = RedisStore(cfg.redis_url)
        return store, make_deps(cfg, store)

    return _run(service, handler, build)


def start_metrics(process: str, ops: OpsSettings, registry: CollectorRegistry,
                  health: Health | None = None,
                  refresh: Callable[[], None] | None = None) -> MetricsServer | None:
    """Serve /metrics and /healthz on the process's port (ATTESTGATE_METRICS_LISTEN + its
    offset); None when off. A port already taken (a second worker of the same service on
    this host) is logged at ERROR and the process runs on without metrics: monitoring
    must not stop a worker. Give such a worker its own ATTESTGATE_METRICS_LISTEN."""
    address = ops.metrics_address(process)
    if address is None:
        return None
    server = MetricsServer(registry, *address, refresh=refresh,
                           health=health or (lambda: {"ok": True, "process": process}))
    try:
        server.start()
    except OSError as exc:
        logging.getLogger("attestgate.metrics").error(
            "metrics not served: %s:%d (ATTESTGATE_METRICS_LISTEN + %s offset): %s",
            address[0], address[1], process, exc.strerror or exc)
        return None
    return server


def _run(service: str, handler: Handler[D],
         build: Callable[[ServerConfig], tuple[RedisStore, D]]) -> int:
    cfg = load_config(service)
    if cfg is None:
        return EXIT_CONFIG
    log = logging.getLogger(f"attestgate.{service}")
    try:
        wait_ready(cfg.redis_url, timeout=REDIS_READY_TIMEOUT)
    except AttestgateError:
        say(service, f"store {_safe(cfg.redis_url)} not reachable within "
                     f"{REDIS_READY_TIMEOUT:g} s (ATTESTGATE_REDIS_URL)")
        return 1
    try:
        store, deps = build(cfg)
    except StartError as exc:
        say(service, str(exc))
        return EXIT_CONFIG
    stop = threading.Event()
    install_stop_signals(stop)
    metrics = WorkerMetrics(service)
    server = start_metrics(service, OpsSettings.from_env(), metrics.registry)
    log.info("worker start service=%s bus=%s", service, ",".join(cfg.bus_endpoints))
    try:
        run_worker(service, instrument(handler, metrics), deps, bus_endpoints=cfg.bus_endpoints,
                   events_endpoints=cfg.events_endpoints, stop=stop)
    finally:
        if server is not None:
            server.close()
        store.close()
    log.info("worker stop service=%s", service)
    return 0
