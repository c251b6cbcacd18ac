"""The daemon's HTTP endpoint (127.0.0.1 by default): ``/healthz``, ``/metrics`` (Prometheus text),
a read-only JSON API, and token-protected write endpoints.

A deliberately small HTTP/1.1 server on asyncio streams: one request per connection, bounded
header and body sizes, every malformed request answered with a 4xx, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from buildingd.errors import BuildingdError

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 8192
MAX_BODY_BYTES = 65536
READ_TIMEOUT_S = 10.0


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


class HttpServer:
    def __init__(self, bind: str, port: int, token: str | None) -> None:
        self.bind = bind
        self.port = port
        self.token = token
        self.routes: list[Route] = []
        self._server: asyncio.Server | None = None
        self.requests = 0
        self.errors = 0

    def route(self, method: str, path: str, handler: Handler, *, write: bool = False) -> None:
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[A-Za-z0-9_.\\-]+)", path) + "$"
        self.routes.append(Route(method, re.compile(regex), handler, write))

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.bind, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("HTTP endpoint on http://%s:%d", self.bind, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests += 1
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                request = await self._read(reader)
            response = await self._dispatch(request)
        except HttpError as err:
            self.errors += 1
            response = Response.json({"error": err.message}, err.status)
        except TimeoutError:
            response = Response.json({"error": "request timeout"}, HTTPStatus.REQUEST_TIMEOUT)
        except Exception:  # a bug in a handler must not take the endpoint down
            log.exception("HTTP handler failed")
            response = Response.json({"error": "internal error"}, 500)
        with contextlib.suppress(ConnectionError):
            reason = HTTPStatus(response.status).phrase
            head = (
                f"HTTP/1.1 {response.status} {reason}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + response.body)
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    async def _read(self, reader: asyncio.StreamReader) -> Request:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as err:
            raise HttpError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large"
            ) from err
        except asyncio.IncompleteReadError as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, "incomplete request") from err
        if len(raw) > MAX_HEADER_BYTES:
            raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers too large")
        try:
            lines = raw.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
        except ValueError as err:
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed request line") from err
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise HttpError(HTTPStatus.BAD_REQUEST, "HTTP/1.0 or HTTP/1.1 only")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(HTTPStatus.BAD_REQUEST, "malformed header")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError as err:
                raise HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from err
            if length < 0 or length > MAX_BODY_BYTES:
                raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large")
            try:
                body = await reader.readexactly(length)
            except asyncio.IncompleteReadError as err:
                raise HttpError(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length") from err
        elif headers.get("transfer-encoding"):
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted")
        path = target.split("?", 1)[0]
        return Request(method.upper(), path, headers, body)

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
