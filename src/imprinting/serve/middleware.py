"""The ASGI guard in front of the app: the token for writes, then the body size; and the
watch on a queued request's client (``run_watched``, ``await_watched``).

The guard runs before any body is read, so an unauthorized or oversized upload is refused
without spending memory or time on it. Its errors have the same ``{"error", "detail"}`` JSON
body as every other error of the service.
"""

from __future__ import annotations

import asyncio
import hmac

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.routing import Match, Mount

from imprinting.serve.tickets import Ticket


class Guard:
    """ASGI middleware, before any body is read: the token for writes, then the body size.

    ``token``: when set, every write (any method but GET, HEAD and OPTIONS, except POST
    /predict) needs ``Authorization: Bearer <token>``. ``max_body_bytes``: checked against
    Content-Length when there is one, and counted while reading when there is not.
    ``body_timeout``: the longest pause while the body arrives (408 after; the headers'
    own timeout is the server's, ``cli.serve``). ``busy()``: (detail, retry-after seconds)
    when the service has no room at all for an upload, which is then refused with a 503
    before its body is read or parsed; else None.
    """

    def __init__(self, app, max_body_bytes: int, token: str | None, body_timeout: float = 30.0, busy=None):
        self.app, self.max_body_bytes, self.token, self.body_timeout = app, max_body_bytes, token, body_timeout
        self.busy = busy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None and is_write(scope["method"], scope["path"]):
            problem = token_problem(headers.get("authorization"), self.token)
            if problem:
                return await send_error(send, 401, "unauthorized", problem, {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await send_error(
                send, 413, "request_too_large",
                f"the request body is {length} bytes; the limit is {self.max_body_bytes} bytes",
            )
        if self.busy is not None and scope["method"] == "POST":
            refusal = self.busy()  # every image slot taken: refuse before parsing the body
            if refusal is not None:
                return await send_error(send, 503, "busy", refusal[0], {"Retry-After": str(refusal[1])})
        received, whole = 0, False

        async def limited_receive():
            nonlocal received, whole
            if whole:  # the body is in: what comes next is the disconnect, whenever it comes
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout):  # a timer, not a task, per chunk
                    message = await receive()
            except TimeoutError:  # a client that stopped sending mid-body
                raise HTTPException(408, f"the request body stalled for {self.body_timeout:g} s") from None
            whole = message.get("type") != "http.request" or not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:  # a body sent without Content-Length
                raise HTTPException(413, f"the request body is over the limit of {self.max_body_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


async def run_watched(request, fn, *args):
    """``fn(*args)`` in the thread pool, for a request whose images wait in the inference
    queue: if its client disconnects first, the request's ``Ticket`` is cancelled and the
    batcher drops its queued images (the call then ends with ``tickets.Gone``, answered to
    no one). The body has been read by then, so the next ASGI message is the disconnect."""
    ticket = Ticket()
    watch = asyncio.ensure_future(_until_disconnected(request.receive, ticket))
    try:
        return await run_in_threadpool(ticket.run, fn, *args)
    finally:
        watch.cancel()


async def await_watched(request, fn, *args):
    """``await fn(*args)`` (a coroutine function that waits in the inference queue on the event
    loop, ``Service.predict_async``), watched as ``run_watched`` watches: a client that
    disconnects first cancels the request's ``Ticket``, and its queued images are dropped."""
    ticket = Ticket()
    watch = asyncio.ensure_future(_until_disconnected(request.receive, ticket))
    try:
        return await ticket.run_async(fn, *args)
    finally:
        watch.cancel()


async def _until_disconnected(receive, ticket: Ticket) -> None:
    try:
        message = await receive()  # the body has been read: the next message is the disconnect
    except HTTPException:  # Guard's timeout on a body still arriving (never, once read): no disconnect seen
        return
    if message.get("type") == "http.disconnect":
        ticket.cancel()


def is_write(method: str, path: str) -> bool:
    """Whether a request changes the classes (predictions are reads, though they are POSTs)."""
    return method not in ("GET", "HEAD", "OPTIONS") and path != "/predict"


def token_problem(authorization: str | None, token: str) -> str | None:
    """What is wrong with an Authorization header (compared in constant time), or None."""
    if not authorization:
        return "this server requires a token for writes: send 'Authorization: Bearer <token>'"
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "wrong token"
    return None


async def send_error(send, status: int, error: str, detail: str, headers: dict | None = None) -> None:
    """Answer with a JSON error and close the connection (the body was not read)."""
    body = JSONResponse({"error": error, "detail": detail}).body
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a timeout on the request line and headers: a connection
    that has not sent a whole request head within ``seconds`` of connecting (or of its last
    answer) is closed, so half-sent requests cannot hold connections open forever.
    (uvicorn's own ``timeout_keep_alive`` covers only idle connections between requests.)"""
    # optional: uvicorn, only to run the server (the app itself runs under any ASGI server)
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutProtocol(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first bytes of a next request on a kept-alive connection
            super().data_received(data)

        def connection_lost(self, exc) -> None:
            if getattr(self, "_head_timer", None) is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(seconds, self._head_late, self.cycle)

        def _head_late(self, cycle) -> None:
            self._head_timer = None
            if self.cycle is cycle and not self.transport.is_closing():  # no new request began
                self.transport.close()

    return HeaderTimeoutProtocol


def allowed_methods(routes, scope) -> list[str]:
    """Every method the app's routes take at ``scope``'s path (for Allow), OPTIONS included;
    empty when no route has the path."""
    # the path as the app's routes see it (inside a Mount, root_path has grown: undo that)
    probe = {"type": "http", "method": "GET", "path": scope["path"],
             "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(probe)
        if match == Match.NONE:
            continue
        if isinstance(route, Mount):
            methods |= {"GET", "HEAD"}
        else:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods | {"OPTIONS"}) if methods else []


class Options:
    """ASGI middleware: answers OPTIONS for every path with 204 and the methods its routes
    really take in ``Allow`` (all routes of the path, not only the first that matches)."""

    def __init__(self, app, routes):
        self.app, self.routes = app, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            return await self.app(scope, receive, send)
        methods = allowed_methods(self.routes(), scope)
        if not methods:
            return await send_error(send, 404, "not_found", f"no endpoint at {scope['path']!r} (see /docs)")
        await send({"type": "http.response.start", "status": 204,
                    "headers": [(b"allow", ", ".join(methods).encode()), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
