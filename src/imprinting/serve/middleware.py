"""The ASGI guard in front of the app: the token for writes, then the body size.

It runs before any body is read, so an unauthorized or oversized upload is refused without
spending memory or time on it. Its errors have the same ``{"error", "detail"}`` JSON body
as every other error of the service.
"""

from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class Guard:
    """ASGI middleware, before any body is read: the token for writes, then the body size.

    ``token``: when set, every write (any method but GET, HEAD and OPTIONS, except POST
    /predict) needs ``Authorization: Bearer <token>``. ``max_body_bytes``: checked against
    Content-Length when there is one, and counted while reading when there is not.
    """

    def __init__(self, app, max_body_bytes: int, token: str | None):
        self.app, self.max_body_bytes, self.token = app, max_body_bytes, token

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
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:  # a body sent without Content-Length
                raise HTTPException(413, f"the request body is over the limit of {self.max_body_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)


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
