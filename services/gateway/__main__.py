"""python -m services.gateway — the Noise gateway and bus broker."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import sys
from urllib.parse import urlsplit

from services.gateway.admission import AdmissionLimits
from services.gateway.eventloop import loop_factory, loop_kind
from services.gateway.limits import GatewayLimits
from services.gateway.observe import GatewayMetrics, MeteredBus, Notifier, Observer, take_snapshot
from services.gateway.server import Gateway
from services.gateway.session import unfollowed_posts
from services.gateway.webhook import WebhookSender
from shared.bus.zmq_bus import ZmqBus
from shared.config import ConfigError, ServerConfig
from shared.errors import AttestgateError
from shared.keys import StaticKey, fingerprint
from shared.ops_settings import OpsSettings
from shared.service_main import (
    EXIT_CONFIG,
    StartError,
    ensure_server_keys,
    load_config,
    say,
    start_metrics,
)
from shared.timing import REATTEST_GRACE
from shared.vault import ServerKeyError, server_static

log = logging.getLogger("attestgate.gateway")


class PortInUse(Exception):
    """The listen or bus address cannot be bound; ``str()`` is one line."""


async def run(cfg: ServerConfig, static: StaticKey, ops: OpsSettings | None = None) -> None:
    ops = ops or OpsSettings()
    try:
        bus = ZmqBus(cfg.bus_endpoints[0], cfg.events_endpoints[0])
    except AttestgateError as exc:
        raise PortInUse(f"ATTESTGATE_BUS={cfg.bus_endpoints[0]} / ATTESTGATE_EVENTS="
                        f"{cfg.events_endpoints[0]}: {exc.detail}") from None
    await bus.start()
    metrics = GatewayMetrics()
    sender: WebhookSender | None = None
    notifier: Notifier | None = None
    if ops.webhook_url:
        sender = WebhookSender(ops.webhook_url, ops.webhook_secret,
                               outcome=lambda o: metrics.webhook.labels(o).inc())
        sender.start()
        notifier = Notifier(bus, sender)
        notifier.start()
        log.info("webhook events go to %s", _url_for_log(ops.webhook_url))
    metered = MeteredBus(bus, metrics, notifier)
    # A device gets REATTEST_GRACE to answer, but never more than one interval (at least 1 s).
    grace = min(REATTEST_GRACE, max(1.0, cfg.reattest_interval))
    gateway = Gateway(metered, static, cfg.pcr_selection,
                      GatewayLimits(reattest_interval=cfg.reattest_interval, reattest_grace=grace,
                                    max_sessions_per_device=cfg.max_sessions_per_device),
                      AdmissionLimits(rate=cfg.handshake_rate, burst=cfg.handshake_burst))
    bus.skip_event = unfollowed_posts(gateway.followers)  # no decoding of unfollowed posts
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start(cfg.listen_host, cfg.listen_port)
    except OSError as exc:
        await bus.close()
        raise PortInUse(f"ATTESTGATE_LISTEN={cfg.listen_host}:{cfg.listen_port}: cannot listen "
                        f"({exc.strerror or exc})") from None
    observer = Observer(metrics, loop, lambda: take_snapshot(
        bus, gateway.listening, gateway.session_count, gateway.counters))
    server = start_metrics("gateway", ops, metrics.registry, observer.health, observer.refresh)
    log.info("gateway up listen=%s:%d bus=%s events=%s server-key=%s", cfg.listen_host,
             cfg.listen_port, bus.bus_endpoint, bus.events_endpoint, fingerprint(static.public))
    try:
        await stop.wait()
    finally:
        log.info("gateway stopping")
        if server is not None:
            await asyncio.to_thread(server.close)
        if notifier is not None:
            await notifier.stop()
        await gateway.stop()
        await bus.close()
        if sender is not None:
            await asyncio.to_thread(sender.close)


def _url_for_log(url: str) -> str:
    """The webhook URL without credentials or query (which may hold a token)."""
    u = urlsplit(url)
    return f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}{u.path}"


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every connection, even one still
    sending its message 1, is a file descriptor, and admission control (not the default
    soft limit of 1024) must be what bounds them. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.warning("could not raise the open files limit from %d", soft)
    return soft


def main() -> int:
    cfg = load_config("gateway")
    if cfg is None:
        return EXIT_CONFIG
    try:
        factory, kind = loop_factory(loop_kind(os.environ))
    except ConfigError as exc:
        say("gateway", f"configuration: {exc}")
        return EXIT_CONFIG
    try:
        # First start: create the server keys (only while the store holds nothing they protect).
        ensure_server_keys(cfg, None)
        static = server_static(cfg.server_home)
    except StartError as exc:
        say("gateway", str(exc))
        return EXIT_CONFIG
    except ServerKeyError as exc:
        say("gateway", exc.message)
        return EXIT_CONFIG
    log.info("open files limit %d; event loop %s", raise_open_files_limit(), kind.value)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run(cfg, static, OpsSettings.from_env()))
    except PortInUse as exc:
        say("gateway", str(exc))
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
