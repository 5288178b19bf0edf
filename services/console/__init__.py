"""The operator console: the board, the fleet and the audit log as read-only web pages.

**Framework: aiohttp.** One asyncio process, like the gateway: the ZeroMQ bus
(``zmq.asyncio``) and the HTTP server share one event loop with no thread or ASGI
server between them; server-sent events are a plain ``StreamResponse``; it is one
PyPI dependency with no optional extras (Starlette would need uvicorn besides, and an
ASGI layer whose lifespan we would have to tie to the bus's). Metrics use
``prometheus-client``'s text format.

**How it reaches the services.** Over the bus, like the gateway, and never to Redis:
the ``ZmqBus`` is a Majordomo *broker* (the gateway binds a ROUTER that workers
connect to), so a second process cannot be a client of the gateway's broker. The
smallest sound design uses what several gateways already use: the console binds a
broker of its own (``ATTESTGATE_CONSOLE_BUS`` and ``ATTESTGATE_CONSOLE_EVENTS``,
default ports 7452/7453), and every worker connects to it because those endpoints
are listed in ``ATTESTGATE_BUS`` / ``ATTESTGATE_EVENTS`` next to the gateway's
(the defaults list both). To the workers the console is one more gateway: they
heartbeat it, serve its requests one at a time, and publish their events (new post,
revoked, locked) to it; a console that is down costs them nothing but a reconnect
now and then. It asks only read-only ops: registry ``list_devices``/``show_device``,
board ``read``, attestor ``read_audit``/``verify_audit``.

See :mod:`services.console.app` for the routes and access rules and
:mod:`services.console.pages` for the HTML.
"""
