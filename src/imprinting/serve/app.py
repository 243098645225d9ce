"""The HTTP service: FastAPI over an ``ImprintModel`` and a durable ``Store``.

Thin by design: images are embedded with ``model.embed_images``, classes are taught with
``model.add_class`` / ``model.add_examples``, answers come from ``model.predict_embeddings``,
and classes are restored at start with ``model.add_class_from_sum``.

Concurrency: requests run in FastAPI's thread pool. Decoding and embedding (the slow part)
run in parallel; one lock covers the classifier and the store, so the in-memory classes
change in commit order and a prediction never sees a half-added class or an upload whose
transaction has not committed.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import sqlite3
import threading
import time
import unicodedata
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, File, Path as PathParam, Query, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException

from imprinting import checkpoint
from imprinting.data.images import MAX_PIXELS
from imprinting.serve.store import Store, StoreError, model_fingerprint

STATIC = Path(__file__).parent / "static"

# Decoders allowed for uploads, chosen by content (PIL sniffs the bytes), never by file name.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

MAX_NAME_LENGTH = 100
# A letter, digit or underscore first; then those, spaces and . , ' ( ) + & -
NAME_PATTERN = re.compile(r"\w[\w .,'()+&-]*")

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


class ApiError(Exception):
    """A client error: HTTP status, a short machine-readable code and a sentence."""

    def __init__(self, status: int, error: str, detail: str):
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def check_class_name(name: str) -> str:
    """Class names: 1-100 characters, letters/digits/_ first, then also . , ' ( ) + & - and
    spaces; no slashes, no control characters, no leading or trailing space."""
    if not name:
        raise ApiError(422, "invalid_class_name", "the class name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise ApiError(422, "invalid_class_name", f"the class name is {len(name)} characters long (limit {MAX_NAME_LENGTH})")
    if not NAME_PATTERN.fullmatch(name) or name.endswith(" ") or unicodedata.normalize("NFC", name) != name:
        raise ApiError(
            422,
            "invalid_class_name",
            f"class name {name[:MAX_NAME_LENGTH]!r} is not allowed: use letters, digits, spaces and _ . , ' ( ) + & -, "
            "starting with a letter, digit or _ (no slashes)",
        )
    return name


def _display_name(filename: str | None, index: int) -> str:
    """The upload's file name for messages and the store: last path part, printable, short."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:100]
    return base or f"image {index + 1}"


def decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes fully; too many pixels, non-images and damaged files are ApiErrors."""
    if not data:
        raise ApiError(422, "empty_image", f"{name}: the file is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
        if img.width * img.height > max_pixels:
            raise ApiError(
                413, "too_many_pixels", f"{name}: {img.width}x{img.height} pixels is more than the limit of {max_pixels}"
            )
        img.load()
        return img
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "too_many_pixels", f"{name}: more pixels than the limit of {max_pixels} ({exc})") from None
    except UnidentifiedImageError:
        raise ApiError(
            422, "not_an_image", f"{name}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ApiError(422, "unreadable_image", f"{name}: damaged or truncated image ({exc})") from None


class _Guard:
    """ASGI middleware, before any body is read: the token for writes, then the body size."""

    def __init__(self, app, max_body_bytes: int, token: str | None):
        self.app, self.max_body_bytes, self.token = app, max_body_bytes, token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None and _is_write(scope["method"], scope["path"]):
            problem = _token_problem(headers.get("authorization"), self.token)
            if problem:
                return await _send_error(send, 401, "unauthorized", problem, {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await _send_error(
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


def _is_write(method: str, path: str) -> bool:
    return method not in ("GET", "HEAD", "OPTIONS") and path != "/predict"


def _token_problem(authorization: str | None, token: str) -> str | None:
    if not authorization:
        return "this server requires a token for writes: send 'Authorization: Bearer <token>'"
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "wrong token"
    return None


async def _send_error(send, status: int, error: str, detail: str, headers: dict | None = None) -> None:
    body = JSONResponse({"error": error, "detail": detail}).body
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Service:
    """The model, its store, the limits, and the lock that keeps them in step."""

    def __init__(self, model, store: Store, model_classes, max_images: int, max_pixels: int):
        self.model = model
        self.store = store
        self.model_classes = frozenset(model_classes)  # from the model file: read-only here
        self.max_images = max_images
        self.max_pixels = max_pixels
        self.lock = threading.Lock()

    def read_images(self, files: list[UploadFile]) -> tuple[list[Image.Image], list[str], list[str]]:
        if not files:
            raise ApiError(422, "no_images", "send one or more images in the multipart field 'files'")
        if len(files) > self.max_images:
            raise ApiError(413, "too_many_images", f"{len(files)} images in one request; the limit is {self.max_images}")
        images, shas, names = [], [], []
        for i, f in enumerate(files):
            name = _display_name(f.filename, i)
            data = f.file.read()
            images.append(decode_image(data, name, self.max_pixels))
            shas.append(hashlib.sha256(data).hexdigest())
            names.append(name)
        return images, shas, names

    def describe(self, name: str, count: int | None = None) -> dict:
        """One class as the API shows it (``count``: its example count, when the caller has it)."""
        if count is None:
            count = int(self.model.sums.counts[self.model.index_of(name)])
        return {
            "name": name,
            "kind": "imprinted" if count else "base",
            "examples": count,
            "source": "model" if name in self.model_classes else "store",
        }

    def add_examples(self, name: str, embeddings: torch.Tensor, shas: list[str], names: list[str]) -> dict:
        """Teach ``name`` in memory and commit the upload (undoing the memory on a store error).
        Returns the class as it is after this upload, with ``created`` and ``example_ids``."""
        model = self.model
        with self.lock:
            created = not model.has_class(name)
            if created:
                model.add_class(name, embeddings)
            else:
                old = model.index_of(name)
                old_sum, old_count = model.sums.sums[old].clone(), int(model.sums.counts[old])
                model.add_examples(name, embeddings)
            index = model.index_of(name)
            try:
                ids = self.store.add_examples(
                    name, embeddings.numpy(), model.sums.sums[index].numpy(), int(model.sums.counts[index]), shas, names
                )
            except BaseException as exc:
                model.remove_class(name)
                if not created:
                    model.add_class_from_sum(name, old_sum, old_count)
                if isinstance(exc, (sqlite3.Error, StoreError)):
                    raise ApiError(503, "store_error", f"the upload was not saved, nothing changed ({exc})") from exc
                raise
            return {**self.describe(name), "created": created, "added": len(ids), "example_ids": ids}


def create_app(
    model_path,
    store_path,
    token: str | None = None,
    *,
    max_request_bytes: int = 32 * 1024 * 1024,
    max_images: int = 16,
    max_pixels: int = MAX_PIXELS,
    unknown_threshold: float | None = None,
) -> FastAPI:
    """Load the model, open (or create) the store, restore its classes, and build the app.

    ``token``: when set, every write (adding examples, deleting a class) needs
    ``Authorization: Bearer <token>``. ``unknown_threshold`` overrides the model's.
    Raises ``CheckpointError`` for a bad model file and ``StoreError`` for a store that
    belongs to another model, is damaged, or is in use by another process.
    """
    model = checkpoint.load(model_path)
    if model.config.get("classifier") != "cosine":
        raise ValueError(f"{model_path}: the service needs a cosine classifier, not {model.config.get('classifier')!r}")
    if unknown_threshold is not None:
        model.unknown_threshold = unknown_threshold
    description = f"{model.config['backbone']}, image size {model.preprocess.image_size}"
    store = Store(store_path, model.embedder.dim, model_fingerprint(model), description)
    model_classes = list(model.class_names)
    try:
        for c in store.classes():
            if model.has_class(c.name):
                raise StoreError(f"{store_path}: class {c.name!r} is in both the store and the model file")
            model.add_class_from_sum(c.name, torch.from_numpy(c.sum), c.count)
    except BaseException:
        store.close()
        raise
    service = Service(model, store, model_classes, max_images, max_pixels)
    size = model.preprocess.image_size
    model.embed_images([Image.new("RGB", (size, size))])  # warm up, so the first request is not slow

    @asynccontextmanager
    async def lifespan(app):
        yield
        store.close()

    app = FastAPI(
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
    app.add_middleware(_Guard, max_body_bytes=max_request_bytes, token=token)

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code, "bad_request")
        detail = str(exc.detail)
        if exc.status_code in (404, 405):
            detail = f"{detail}: {request.method} {request.url.path!r} (see /docs for the endpoints)"
        return JSONResponse({"error": code, "detail": detail}, status_code=exc.status_code, headers=exc.headers)

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

    @app.get("/health", summary="Liveness and a summary of the model")
    def health():
        with service.lock:
            n = model.num_classes
        return {
            "status": "ok",
            "classes": n,
            "backbone": model.config["backbone"],
            "embedding_dim": model.embedder.dim,
            "image_size": model.preprocess.image_size,
            "unknown_threshold": model.unknown_threshold,
            "writes_need_token": token is not None,
            "limits": {"max_request_bytes": max_request_bytes, "max_images": max_images, "max_pixels": max_pixels},
        }

    @app.get("/classes", summary="Every class: name, kind (base or imprinted), example count, source")
    def list_classes():
        with service.lock:
            counts = model.sums.counts.tolist()  # one read, not one tensor index per class
            return {"classes": [service.describe(n, int(c)) for n, c in zip(model.class_names, counts)]}

    def require_class(name: str) -> None:
        """404 for a class the model does not have (the caller holds the lock)."""
        if not model.has_class(name):
            raise ApiError(404, "unknown_class", f"no class named {name!r}")

    @app.get("/classes/{name:anytext}", summary="One class, with its stored examples")
    def get_class(name: str = PathParam(description="Class name")):
        check_class_name(name)
        with service.lock:
            require_class(name)
            out = service.describe(name)
            examples = store.examples(name) if out["source"] == "store" else []
        out["stored_examples"] = [{"id": e.id, "sha256": e.sha256, "filename": e.filename} for e in examples]
        return out

    @app.post(
        "/classes/{name:anytext}/examples",
        summary="Teach a class from one or more images (creates it, or adds to it)",
        status_code=200,
        responses={201: {"description": "The class was created"}},
    )
    def add_examples(
        name: str = PathParam(description="Class name: 1-100 letters, digits, spaces, _ . , ' ( ) + & -"),
        files: list[UploadFile] = File(description="One or more images (JPEG, PNG, WebP, GIF, BMP, TIFF)"),
    ):
        start = time.perf_counter()
        check_class_name(name)
        if name in service.model_classes:
            raise ApiError(409, "read_only_class", f"class {name!r} comes from the model file; "
                                                   "the service adds examples only to classes it created")
        images, shas, names = service.read_images(files)
        embeddings = model.embed_images(images)
        embedded = time.perf_counter()
        body = service.add_examples(name, embeddings, shas, names)
        # seconds: from the parsed request to the commit; embed_seconds: decoding and embedding
        body["seconds"] = round(time.perf_counter() - start, 4)
        body["embed_seconds"] = round(embedded - start, 4)
        return JSONResponse(body, status_code=201 if body["created"] else 200)

    @app.delete("/classes/{name:anytext}", summary="Delete a class taught through the service")
    def delete_class(name: str = PathParam(description="Class name")):
        check_class_name(name)
        with service.lock:
            require_class(name)
            if name in service.model_classes:
                kind = "an imprinted class of the model file" if model.is_imprinted(name) else "a base class"
                raise ApiError(409, "protected_class", f"class {name!r} is {kind} and cannot be deleted here")
            store.remove_class(name)  # durable first, then memory
            model.remove_class(name)
            left = model.num_classes
        return {"deleted": name, "classes": left}

    @app.post("/predict", summary="Top-k classes of one or more images, with probabilities and cosines")
    def predict(
        files: list[UploadFile] = File(description="One or more images"),
        k: int = Query(5, ge=1, le=100, description="How many classes to return per image"),
        unknown_threshold: float | None = Query(
            None, ge=-1.0, le=1.0, description="Flag 'unknown' when the best cosine is below this (default: the model's)"
        ),
    ):
        start = time.perf_counter()
        images, _, names = service.read_images(files)
        embeddings = model.embed_images(images)
        with service.lock:
            if model.num_classes == 0:
                raise ApiError(409, "no_classes", "the model has no classes yet: teach one first")
            predictions = model.predict_embeddings(embeddings, k, unknown_threshold)
            threshold = model.unknown_threshold if unknown_threshold is None else unknown_threshold
        results = [
            {
                "file": fname,
                "unknown": p.unknown,
                "top": [{"class": c, "probability": pr, "cosine": cos}
                        for c, pr, cos in zip(p.classes, p.probabilities, p.cosines)],
            }
            for fname, p in zip(names, predictions)
        ]
        return {"predictions": results, "unknown_threshold": threshold, "seconds": round(time.perf_counter() - start, 4)}

    return app
