"""The daemon's HTTP endpoint (127.0.0.1 by default): ``/healthz``, ``/metrics`` (Prometheus text),
a read-only JSON API, and token-protected write endpoints.

Served by ``aiohttp.web`` (HTTP parsing, connections); the routes stay a small table of
handlers with the bearer-token rule for writes. Bounded header and body sizes, every malformed
request answered with a 4xx, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import HttpVersion10, HttpVersion11, web

from buildingd.errors import BuildingdError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8192  # per request or header line; longer ones get 400 from aiohttp's parser
MAX_BODY_BYTES = 65536
READ_TIMEOUT_S = 10.0  # to read a body, once the headers are in
# From accepting a connection to having its request line and headers: a client trickling
# headers (or sending nothing) is disconnected after this, instead of holding a connection.
HEADER_TIMEOUT_S = 10.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {err}") from err


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, (json.dumps(data, default=str) + "\n").encode())

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


class HttpError(BuildingdError):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    write: bool  # needs the bearer token


class _ParserLog:
    """Given to aiohttp as its request handler's logger: a request it cannot parse (a client's
    error, answered 400) is one debug line and counted, not an ERROR with a traceback."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server

    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        log.debug(msg, *args)

    def exception(self, msg: str, *args: Any, exc_info: object = None, **kwargs: Any) -> None:
        self.server.errors += 1
        log.debug("%s: %s", msg % args if args else msg, exc_info)


class HttpServer:
    def __init__(
        self, bind: str, port: int, token: str | None, header_timeout_s: float = HEADER_TIMEOUT_S
    ) -> None:
        self.bind = bind
        self.header_timeout_s = header_timeout_s
        self.port = port
        self.token = token
        self.routes: list[Route] = []
        self._runner: web.AppRunner | None = None
        self.requests = 0
        self.errors = 0

    def route(self, method: str, path: str, handler: Handler, *, write: bool = False) -> None:
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[A-Za-z0-9_.\\-]+)", path) + "$"
        self.routes.append(Route(method, re.compile(regex), handler, write))

    async def start(self) -> int:
        """Listen; raises OSError when the port cannot be bound."""
        app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            handler_args={
                "max_line_size": MAX_HEADER_BYTES,
                "max_field_size": MAX_HEADER_BYTES,
                "logger": _ParserLog(self),
                # aiohttp has no header-read timeout, but its keep-alive timer starts when a
                # connection is accepted and closes it if no complete request (line and
                # headers) has arrived by then; bytes trickling in do not move it. Every
                # response closes its connection, so it bounds nothing else.
                "keepalive_timeout": self.header_timeout_s,
            },
        )
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.bind, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("HTTP endpoint on http://%s:%d", self.bind, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, raw: web.Request) -> web.Response:
        self.requests += 1
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request = await self._read(raw)
            response = await self._dispatch(request)
        except HttpError as err:
            self.errors += 1
            response = Response.json({"error": err.message}, err.status)
        except TimeoutError:
            response = Response.json({"error": "request timeout"}, HTTPStatus.REQUEST_TIMEOUT)
        except Exception:  # a bug in a handler must not take the endpoint down
            log.exception("HTTP handler failed")
            response = Response.json({"error": "internal error"}, 500)
        answer = web.Response(
            status=response.status,
            body=response.body,
            headers={"Content-Type": response.content_type},
        )
        answer.force_close()  # one request per connection, as before
        return answer

    async def _read(self, raw: web.Request) -> Request:
        if raw.version not in (HttpVersion10, HttpVersion11):
            raise HttpError(HTTPStatus.BAD_REQUEST, "HTTP/1.0 or HTTP/1.1 only")
        length = raw.content_length
        if length is not None and length > MAX_BODY_BYTES:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
        if length is None and raw.headers.get("Transfer-Encoding"):
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted")
        try:
            body = await raw.read()
        except web.HTTPRequestEntityTooLarge as err:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large") from err
        headers = {name.lower(): value for name, value in raw.headers.items()}
        return Request(raw.method.upper(), raw.path, headers, body)

    async def _dispatch(self, request: Request) -> Response:
        allowed = []
        for route in self.routes:
            match = route.pattern.match(request.path)
            if match is None:
                continue
            if route.method != request.method:
                allowed.append(route.method)
                continue
            if route.write:
                self._authorise(request)
            request.params = match.groupdict()
            return await route.handler(request)
        if allowed:
            raise HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"use {', '.join(allowed)}")
        raise HttpError(HTTPStatus.NOT_FOUND, f"no such endpoint: {request.path}")

    def _authorise(self, request: Request) -> None:
        if self.token is None:
            raise HttpError(HTTPStatus.FORBIDDEN, "write endpoints are off: no token file set")
        given = request.headers.get("authorization", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise HttpError(HTTPStatus.UNAUTHORIZED, "a bearer token is required")
        # Constant-time comparison: the token must not leak through response timing.
        if not hmac.compare_digest(credential.encode(), self.token.encode()):
            raise HttpError(HTTPStatus.FORBIDDEN, "wrong token")
