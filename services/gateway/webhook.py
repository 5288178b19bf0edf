"""The webhook sender: an adapter that POSTs :class:`shared.webhook.WebhookEvent` documents.

A thread of its own with a bounded queue: :meth:`WebhookSender.submit` never blocks
(a full queue drops the new event, logged at ERROR), so an attestation never waits for
a receiver. Each event is tried up to ``attempts`` times with exponential backoff
(``shared.webhook.backoff``); any answer other than 2xx, a refused connection or a
timeout is a failed try. Every delivery (INFO), failed try (WARNING) and given-up event
(ERROR) is logged with the event id; the body and the secret never are. Redirects are
not followed and no proxy is used: the event goes to the URL configured, nowhere else.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import queue
import threading
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from shared.webhook import (
    WEBHOOK_ATTEMPTS,
    WEBHOOK_BACKOFF,
    WEBHOOK_BACKOFF_MAX,
    WEBHOOK_QUEUE,
    WEBHOOK_TIMEOUT,
    WebhookEvent,
    backoff,
    headers,
)

log = logging.getLogger("attestgate.webhook")
Outcome = Callable[[str], None]  # "delivered" | "failed" | "dropped" | "retried"
_STOP: Final = object()


class WebhookSender:
    def __init__(self, url: str, secret: bytes, *, attempts: int = WEBHOOK_ATTEMPTS,
                 backoff_base: float = WEBHOOK_BACKOFF, backoff_max: float = WEBHOOK_BACKOFF_MAX,
                 timeout: float = WEBHOOK_TIMEOUT, queue_size: int = WEBHOOK_QUEUE,
                 outcome: Outcome | None = None) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("webhook URL must be http(s)://HOST[:PORT]/PATH")
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port
        self._path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self._where = f"{u.scheme}://{u.hostname}{f':{u.port}' if u.port else ''}{u.path}"
        self._secret = secret
        self._attempts = attempts
        self._base, self._max = backoff_base, backoff_max
        self._timeout = timeout
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._outcome = outcome or (lambda _: None)
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, event: WebhookEvent) -> bool:
        """Queue ``event``; False (and logged) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.error("webhook queue full, event dropped id=%s event=%s device=%s",
                      event.event_id, event.kind.value, event.device_id)
            self._outcome("dropped")
            return False
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Stop after the current try; events still queued are logged as not sent."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        left = self._queue.qsize()
        if left:
            log.error("webhook stopping with %d event(s) not sent", left)

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self._queue.get()
            if item is _STOP or not isinstance(item, WebhookEvent):
                return
            self._deliver(item)

    def _deliver(self, event: WebhookEvent) -> None:
        body = event.body()
        hdrs = headers(event, body, self._secret)
        for attempt in range(1, self._attempts + 1):
            problem = self._post(body, hdrs)
            if problem is None:
                log.info("webhook delivered id=%s event=%s device=%s attempt=%d",
                         event.event_id, event.kind.value, event.device_id, attempt)
                self._outcome("delivered")
                return
            if attempt == self._attempts:
                break
            wait = backoff(attempt, self._base, self._max)
            log.warning("webhook try failed id=%s event=%s url=%s attempt=%d problem=%s "
                        "retry_in=%.2fs", event.event_id, event.kind.value, self._where,
                        attempt, problem, wait)
            self._outcome("retried")
            if self._stop.wait(wait):
                break
        log.error("webhook delivery failed id=%s event=%s device=%s url=%s attempts=%d "
                  "problem=%s", event.event_id, event.kind.value, event.device_id, self._where,
                  attempt, problem)
        self._outcome("failed")

    def _post(self, body: bytes, hdrs: dict[str, str]) -> str | None:
        """One POST; None when the receiver answered 2xx, else what went wrong."""
        conn: http.client.HTTPConnection
        if self._https:
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request("POST", self._path, body=body, headers=hdrs)
            response = conn.getresponse()
            response.read(4096)
            if 200 <= response.status < 300:
                return None
            return f"status {response.status}"
        except (OSError, http.client.HTTPException) as exc:
            return type(exc).__name__ + (f" {exc.strerror}" if isinstance(exc, OSError)
                                         and exc.strerror else "")
        finally:
            conn.close()
