"""python -m services.console — the read-only web console (see services/console/__init__.py).

Binds ``ATTESTGATE_CONSOLE_LISTEN`` (HTTP, default 127.0.0.1:8470) and its own bus
endpoints; reads (or first creates, 0600) ``console.key`` in ATTESTGATE_SERVER_HOME.
A setting that is not valid, a port in use or an unwritable home: one line, exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

from aiohttp import web

from services.console.app import Console
from shared.bus.zmq_bus import ZmqBus
from shared.config import ConfigError, ServerConfig
from shared.console_settings import ConsoleSettings
from shared.console_token import load_or_create_key
from shared.errors import AttestgateError
from shared.ops_settings import OpsSettings
from shared.service_main import EXIT_CONFIG, say, setup_logging

SERVICE = "console"
log = logging.getLogger("attestgate.console")


async def _serve(settings: ConsoleSettings, cfg: ServerConfig) -> int:
    try:
        key = load_or_create_key(cfg.server_home)
    except (OSError, ValueError) as exc:
        say(SERVICE, f"ATTESTGATE_SERVER_HOME={str(cfg.server_home)!r}: console key: "
                     f"{getattr(exc, 'strerror', None) or exc}")
        return EXIT_CONFIG
    try:
        bus = ZmqBus(settings.bus_endpoint, settings.events_endpoint)
    except AttestgateError as exc:
        say(SERVICE, f"ATTESTGATE_CONSOLE_BUS / ATTESTGATE_CONSOLE_EVENTS: {exc.detail}")
        return EXIT_CONFIG
    await bus.start()
    console = Console(bus, key, secure_cookie=settings.secure_cookie,
                      workers=bus.live_workers)
    runner = web.AppRunner(console.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.listen_host, settings.listen_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await bus.close()
        say(SERVICE, f"ATTESTGATE_CONSOLE_LISTEN={settings.listen_host}:"
                     f"{settings.listen_port}: {exc.strerror}")
        return EXIT_CONFIG
    log.info("console listening on http://%s:%d bus=%s events=%s", settings.listen_host,
             settings.listen_port, bus.bus_endpoint, bus.events_endpoint)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("console stopping")
    with contextlib.suppress(Exception):
        await runner.cleanup()
    await bus.close()
    return 0


def main() -> int:
    try:
        cfg = ServerConfig.from_env()
        settings = ConsoleSettings.from_env()
        ops = OpsSettings.from_env()
    except ConfigError as exc:
        say(SERVICE, f"configuration: {exc}")
        return EXIT_CONFIG
    setup_logging(cfg.log_level, ops.log_format)
    return asyncio.run(_serve(settings, cfg))


if __name__ == "__main__":
    sys.exit(main())
