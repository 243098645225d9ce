"""The HTTP service: FastAPI routes over a ``Service`` (``serve.service``).

Only HTTP lives here: the routes and their documentation, the error handlers that give every
error a ``{"error", "detail"}`` JSON body, the web page, and the ``Guard`` middleware (token
for writes, body size). What a route does is one ``Service`` method; client errors are
``ApiError`` (``serve.validation``). Routes run the service in FastAPI's thread pool, and the
service's lock keeps them in step; ``/predict`` waits for the inference worker on the event loop
instead (``Service.predict_async``), so a queued prediction holds no thread. The two that queue
images for the worker (``/predict`` and teaching) are watched for their client's disconnecting
(``middleware.await_watched``, ``run_watched``): a request whose client has gone is dropped
from the queue.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import Body, FastAPI, File, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline  # /docs and /redoc from the package's files, no CDN
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException

from imprinting.data.images import MAX_PIXELS
from imprinting.serve.admission import DEFAULT_MAX_QUEUE_SECONDS, Admission
from imprinting.serve.batcher import DEFAULT_MAX_BATCH_DELAY_MS
from imprinting.serve.middleware import Guard, Options, allowed_methods, await_watched, run_watched
from imprinting.serve.service import Service
from imprinting.serve.validation import MAX_NAME_LENGTH, ApiError, Upload, unexpected_error

STATIC = Path(__file__).parent / "static"
MULTIPART_HEADER_BYTES = 4096 + 128  # python-multipart's limit on one header line of a part

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _AnyText(Convertor):
    """Path parameter matching anything, slashes and newlines too, so that every class name
    reaches ``check_class_name`` and gets its own error instead of a bare 404."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", _AnyText())


class ErrorBody(BaseModel):
    """The body of every error the service sends."""

    error: str
    detail: str


_WHEN = {
    401: "No token, or a wrong one, for a write (when the server has a token)",
    400: "A multipart body the server cannot parse (invalid_multipart): not multipart/form-data, or a part's header "
         "line (such as its file name) over 4,224 bytes, or more than 8 headers in a part",
    404: "No such class, no such example, or no such endpoint",
    409: "A class of the model file (read-only here), a class at its example limit, a name taken or confusable "
         "with an existing class's, no classes yet, or prediction sets asked of a service never calibrated",
    413: "The body, the number of images, or an image's pixels over the server's limits",
    422: "A bad class name or example id, an upload that is not a readable image, or a bad query or form field",
    503: "The server is at its bounds (busy: the queue ahead would take longer than the server's limit, or the memory "
         "ceiling), the model failed on the batch the request was in (engine_error), or the store refused or cannot be "
         "reached (store_error): retry after Retry-After seconds",
}


# What check_class_name accepts, for the documentation only (the route checks it itself, so
# that a bad name gets its own error, invalid_class_name): letters, digits or _ first, then
# also spaces and . , ' ( ) + & -, no trailing space, at most 100 characters.
NAME_SCHEMA = {"pattern": r"^\w(?:[\w .,'()+&-]*[\w.,'()+&-])?$", "maxLength": MAX_NAME_LENGTH, "minLength": 1}


def _name(description: str):
    return PathParam(description=description, json_schema_extra=NAME_SCHEMA)


def errors(*codes: int) -> dict:
    """OpenAPI ``responses`` for the error statuses a route sends, with their JSON body."""
    out = {code: {"model": ErrorBody, "description": _WHEN[code]} for code in codes}
    if 503 in out:
        out[503]["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying",
                                               "schema": {"type": "integer"}}}
    return out


def parse_example_id(text: str) -> int | str:
    """The id in the path as an int when it is one (the service checks its range), else the
    text itself (the service refuses it with 422 invalid_example_id)."""
    return int(text) if text.isascii() and text.lstrip("-").isdigit() and len(text) < 40 else text


def _uploads(files: list[UploadFile]) -> list[Upload]:
    """The multipart files as (file name, file) pairs: the service reads the bytes only once
    it has admitted the request (``serve.admission``)."""
    return [(f.filename, f.file) for f in files]


def create_app(
    model_path,
    store_path,
    token: str | None = None,
    *,
    max_request_bytes: int = 32 * 1024 * 1024,
    max_images: int = 16,
    max_pixels: int = MAX_PIXELS,
    unknown_threshold: float | None = None,
    memory_limit_mb: float | None = None,
    max_queue_seconds: float = DEFAULT_MAX_QUEUE_SECONDS,
    max_batch_delay_ms: float = DEFAULT_MAX_BATCH_DELAY_MS,
    max_batch: int | None = None,
    max_threads: int = 256,
    body_timeout: float = 30.0,
) -> FastAPI:
    """Load the model, open (or create) the store, restore its classes, and build the app.

    ``token``: when set, every write (adding examples, deleting a class) needs
    ``Authorization: Bearer <token>``. ``unknown_threshold`` overrides the model's.
    ``memory_limit_mb`` (the process's ceiling; ``imprint serve`` sets 3072, ``None``: none)
    and ``max_queue_seconds`` (the longest estimated wait admitted): the bounds across all
    requests (``serve.admission``); over them a request is answered 503 with ``Retry-After``.
    ``max_batch`` (default: the engine's best) and ``max_batch_delay_ms``: the inference
    worker's batches (``serve.batcher``). ``max_threads``: FastAPI's thread pool (a queued
    teaching upload holds a thread while it waits, a prediction does not; ``imprint serve``
    sets its connection limit).
    ``body_timeout``: seconds a client may pause while sending a body (408 after).
    Raises ``CheckpointError`` for a bad model file and ``StoreError`` for a store that
    belongs to another model, is damaged, or is in use by another process.
    The ``Service`` is ``app.state.service``.
    """
    admission = Admission(max_queue_seconds=max_queue_seconds, memory_limit_mb=memory_limit_mb)
    service = Service.open(model_path, store_path, unknown_threshold=unknown_threshold,
                           max_images=max_images, max_pixels=max_pixels, admission=admission,
                           max_batch=max_batch, max_delay_ms=max_batch_delay_ms)

    @asynccontextmanager
    async def lifespan(app):
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(40, max_threads)
        yield
        service.close()

    app = FastAPIOffline(
        title="imprinting",
        summary="Teach a trained image classifier new classes from a few pictures (imprinted weights).",
        description=(
            "Classes taught here are stored durably: an upload is acknowledged only after its transaction commits. "
            + ("Writes (adding examples, deleting classes) need `Authorization: Bearer <token>`." if token else
               "This server takes writes without a token.")
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(Guard, max_body_bytes=max_request_bytes, token=token, body_timeout=body_timeout,
                       busy=admission.full)
    app.add_middleware(Options, routes=lambda: app.routes)
    writes = (401,) if token else ()

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
                413: "request_too_large"}.get(exc.status_code, "bad_request")
        detail, headers = str(exc.detail), dict(exc.headers or {})
        if exc.status_code in (404, 405):
            detail = f"{detail}: {request.method} {request.url.path!r} (see /docs for the endpoints)"
        if exc.status_code == 400 and "multipart" in detail.lower():  # python-multipart's refusal, as it says it
            code, detail = "invalid_multipart", (
                "the multipart body could not be parsed: it is not multipart/form-data, or a part's header line (such "
                f"as its file name) is over {MULTIPART_HEADER_BYTES:,} bytes, or a part has more than 8 headers")
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(app.routes, request.scope))
        return JSONResponse({"error": code, "detail": detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # never a bare 500: the same JSON body as every error
        return JSONResponse({"error": "internal_error", "detail": unexpected_error(exc, request.url.path)},
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            hint = " (send images as multipart/form-data in the field 'files')" if where.startswith("files") else ""
            parts.append(f"{where or 'request'}: {e.get('msg', 'invalid')}{hint}")
        return JSONResponse({"error": "invalid_request", "detail": "; ".join(parts)}, status_code=422)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health", summary="Liveness (200 while the process answers), readiness and the store's state, "
                                "a summary of the model, the limits, the load and the inference queue now")
    async def health():  # async: answered on the event loop, never queued behind inference
        body = service.health()
        limits = body.pop("limits")
        body["writes_need_token"] = token is not None
        body["limits"] = {"max_request_bytes": max_request_bytes, **limits}
        return body

    @app.get("/ready", summary="Readiness for a load balancer: 200 while the store takes writes, 503 while it is "
                               "degraded (predictions still work)", responses=errors(503))
    async def ready():
        store = service.store_state()
        if store["state"] != "ok":
            return JSONResponse({"error": "store_degraded", "detail": store.get("detail", store["state"])},
                                status_code=503, headers={"Retry-After": "2"})
        return {"ready": True, "store": store}

    @app.get("/classes", summary="Every class: name, kind (base or imprinted), example count, source")
    def list_classes():
        return service.classes()

    @app.get("/classes/{name:anytext}", summary="One class, with its stored examples", responses=errors(404, 422, 503))
    def get_class(name: str = _name("Class name")):
        return service.get_class(name)

    @app.post(
        "/classes/{name:anytext}/examples",
        summary="Teach a class from one or more images (creates it, or adds to it)",
        status_code=200,
        responses={201: {"description": "The class was created"}, **errors(400, *writes, 409, 413, 422, 503)},
    )
    async def add_examples(
        request: Request,
        name: str = _name("Class name: 1-100 letters, digits, spaces, _ . , ' ( ) + & -"),
        files: list[UploadFile] = File(description="One or more images (JPEG, PNG, WebP, GIF, BMP, TIFF)",
                                       json_schema_extra={"minItems": 1, "maxItems": max_images}),
    ):
        body = await run_watched(request, service.teach, name, _uploads(files))
        return JSONResponse(body, status_code=201 if body["created"] else 200)

    @app.delete("/classes/{name:anytext}", summary="Delete a class taught through the service",
                responses=errors(*writes, 404, 409, 422, 503))
    def delete_class(name: str = _name("Class name")):
        return service.delete(name)

    @app.post("/predict", summary="Top-k classes of one or more images, with probabilities and cosines",
              responses=errors(400, 409, 413, 422, 503))
    async def predict(
        request: Request,
        files: list[UploadFile] = File(description="One or more images",
                                       json_schema_extra={"minItems": 1, "maxItems": max_images}),
        k: int = Query(5, ge=1, le=100, description="How many classes to return per image"),
        unknown_threshold: float | None = Query(
            None, ge=-1.0, le=1.0, description="Flag 'unknown' when the best cosine is below this (default: the model's)"
        ),
        coverage: float | None = Query(
            None, gt=0.0, lt=1.0, description="Also return each image's prediction set: the classes it could be, "
                                              "holding its true class this often (e.g. 0.9); an empty set: not one of "
                                              "the model's classes. Needs POST /calibrate first (409 otherwise)"
        ),
    ):
        # a ready JSONResponse: the answer is plain JSON already, FastAPI need not walk it again
        return JSONResponse(await await_watched(request, service.predict_async, _uploads(files), k, unknown_threshold,
                                                coverage))

    _add_example_routes(app, service, writes)
    # the route nearly every request takes is tried first (routes are matched in order)
    app.router.routes.sort(key=lambda r: getattr(r, "path", None) != "/predict")
    return app


def _add_example_routes(app: FastAPI, service: Service, writes: tuple = ()) -> None:
    """Example-level edits (issue 15): list a class's examples, remove one, rename a class.

    ``/classes/{name:anytext}`` above matches any path below ``/classes/``, so these routes
    are moved in front of the others: the more specific path is tried first."""
    before = list(app.router.routes)

    @app.get("/classes/{name:anytext}/examples", summary="A class's stored examples, with thumbnails",
             responses=errors(404, 409, 422, 503))
    def list_examples(name: str = _name("Class name")):
        return service.examples(name)

    # the id is taken as text and checked by the service, so that any id (-1, 2**64, "x") gets
    # its own 422 invalid_example_id instead of falling through to another route
    @app.delete("/classes/{name:anytext}/examples/{example_id:anytext}",
                summary="Remove one example; the class is recomputed from the others (deleted with its last)",
                responses=errors(*writes, 404, 409, 422, 503))
    def remove_example(name: str = _name("Class name"),
                       example_id: str = PathParam(description="The example's id, a whole number from 1 to 2^63-1 "
                                                               "(from the list of examples)",
                                                   json_schema_extra={"pattern": r"^[1-9][0-9]{0,18}$"})):
        return service.remove_example(name, parse_example_id(example_id))

    @app.post("/classes/{name:anytext}/rename", summary="Rename a class taught through the service",
              responses=errors(*writes, 404, 409, 422, 503))
    def rename_class(name: str = _name("Class name"),
                     new_name: str = Body(..., embed=True, description="The new name", json_schema_extra=NAME_SCHEMA)):
        return service.rename(name, new_name)

    @app.post("/calibrate", summary="Fit the scale and the unknown threshold from the examples taught here (a "
                                    "threshold given at start with --unknown-threshold stays in force: see "
                                    "unknown_threshold_applied)",
              responses=errors(*writes, 409, 422, 503))
    def calibrate(false_reject: float | None = Query(
                      None, gt=0.0, lt=1.0, description="At most this share of photos of taught classes flagged "
                                                        "unknown, guaranteed (default 0.05; needs 1/rate - 1 examples)"),
                  false_accept: float | None = Query(
                      None, ge=0.0, lt=1.0, description="Instead: the estimated share of never-taught images accepted "
                                                        "as known (not guaranteed)")):
        if false_reject is not None and false_accept is not None:
            raise ApiError(422, "invalid_request", "give false_reject or false_accept, not both")
        return service.calibrate(false_accept, false_reject)

    added = [r for r in app.router.routes if r not in before]
    app.router.routes[:] = added + before
