"""Break-glass webhook: HTTP POST of an alert as JSON to the URLs in the policies' ``escalation``.

One worker task, owned by the sender (``start``/``stop``, the coordinator runs it for as long as
it runs), posts from a bounded queue, so a slow or dead receiver never blocks the coordinator:
``submit`` only enqueues. Each post has a deadline (``timeout_s``, event-loop seconds) and is
retried with backoff; failures are logged and counted (``buildingd_webhook_posts_total``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

from buildingd.errors import BuildingdError
from buildingd.metrics import Metrics

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0  # per attempt: connect, send, status line
ATTEMPTS = 3
BACKOFF_S = 2.0  # before the second attempt, doubled for each further one
MAX_PENDING = 100  # posts waiting; past this the oldest is dropped (and counted)


class WebhookError(BuildingdError):
    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(f"webhook {url}: {message}")


def _redacted(url: str) -> str:
    """The URL without its password, for the journal."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


async def post_json(url: str, body: bytes, timeout_s: float) -> int:
    """POST ``body`` (JSON) to ``url`` (http or https, optional ``user:password@`` for basic
    auth); returns the status code. Raises ``WebhookError`` on a network failure or timeout."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(_redacted(url), "not an http(s) URL")
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "User-Agent: buildingd",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if parts.username is not None:
        user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        head.append(f"Authorization: Basic {base64.b64encode(user.encode()).decode()}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                parts.hostname, port, ssl=ssl.create_default_context() if https else None
            )
            try:
                writer.write(request)
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
    except TimeoutError as err:
        raise WebhookError(_redacted(url), f"no answer within {timeout_s:g} s") from err
    except (OSError, ssl.SSLError) as err:
        raise WebhookError(_redacted(url), str(err) or type(err).__name__) from err
    fields = status_line.decode("latin-1").split()
    if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
        raise WebhookError(_redacted(url), f"not an HTTP answer: {status_line[:60]!r}")
    return int(fields[1])


class WebhookSender:
    """Posts alerts to webhooks in the background; see the module docstring."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        timeout_s: float = TIMEOUT_S,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.metrics = metrics
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, attempts, backoff_s
        self.max_pending = max_pending
        self._pending: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def submit(self, url: str, body: dict[str, Any]) -> None:
        """Queue one post; never waits. Past ``max_pending`` the oldest post is dropped."""
        if len(self._pending) >= self.max_pending:
            dropped, _ = self._pending.popleft()
            self._count("dropped")
            log.warning("webhook %s: queue full, oldest alert post dropped", _redacted(dropped))
        self._pending.append((url, json.dumps(body).encode()))
        self._idle.clear()
        self._wake.set()

    def start(self) -> None:
        """Start the worker task (needs a running loop); it lives until ``stop``."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._worker(), name="coordinator.webhook"
            )

    async def stop(self) -> None:
        """Stop the worker; posts still queued are dropped, counted and logged."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._pending:
            log.warning("webhook: stopping with %d alert posts not sent", len(self._pending))
            for _ in range(len(self._pending)):
                self._count("dropped")
            self._pending.clear()
        self._idle.set()

    async def drained(self) -> None:
        """Wait until every queued post was delivered or given up (tests, a graceful stop)."""
        await self._idle.wait()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _count(self, result: str) -> None:
        self.metrics.inc("buildingd_webhook_posts_total", result=result)

    async def _worker(self) -> None:
        while True:
            while not self._pending:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            url, body = self._pending.popleft()
            await self._deliver(url, body)

    async def _deliver(self, url: str, body: bytes) -> None:
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            retry = True
            try:
                status = await post_json(url, body, self.timeout_s)
            except WebhookError as err:
                why = str(err)
            else:
                if 200 <= status < 300:
                    self._count("ok")
                    return
                why = f"webhook {_redacted(url)}: HTTP {status}"
                # A 4xx refuses this very post: sending it again will not help.
                retry = status >= 500 or status in (408, 429)
            if not retry or attempt == self.attempts:
                self._count("failed")
                log.warning("%s; alert post given up after %d attempts", why, attempt)
                return
            log.info("%s; retrying in %g s", why, delay)
            await asyncio.sleep(delay)
            delay *= 2
