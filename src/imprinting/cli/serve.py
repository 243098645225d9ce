"""``imprint serve MODEL --store PATH``: the click command. FastAPI, uvicorn and the service
(PyTorch) are imported only when it runs, so ``imprint serve --help`` stays fast and works
without the ``serve`` extra (the constants below import PIL, not the service)."""

from __future__ import annotations

import gc
import ipaddress

import click

from imprinting.cli.common import Command, Finite, ModelFile, StoreFile
from imprinting.data.images import MAX_PIXELS
from imprinting.serve.admission import DEFAULT_MAX_QUEUE_SECONDS, DEFAULT_MEMORY_LIMIT_MB
from imprinting.serve.urls import redact


@click.command(cls=Command)
@click.argument("model_path", metavar="MODEL", type=ModelFile())
@click.option("--store", "store_path", required=True, type=StoreFile(), metavar="PATH|URL",
              help="Where the classes taught through the service live: a SQLite file (created when missing), "
                   "or postgresql://user@host/db for several replicas over one database (pip install "
                   "'imprinting[postgres]').")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token", envvar="IMPRINT_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' for every write (env IMPRINT_TOKEN).")
@click.option("--unknown-threshold", type=Finite(-1, 1), default=None,
              help="Flag predictions whose best cosine is below this (default: the model's own).")
@click.option("--max-request-mb", type=Finite(0.001, 4096), default=32.0, show_default=True,
              help="Largest request body, in MiB.")
@click.option("--max-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most images in one request.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS, show_default=True,
              help="Most pixels in one image (decompression bombs are refused).")
@click.option("--memory-limit-mb", type=Finite(256, 2**24), default=DEFAULT_MEMORY_LIMIT_MB,
              show_default=True, help="Memory ceiling: over it new requests get 503 + Retry-After; a quarter of it "
                                      "bounds the images being decoded at once.")
@click.option("--max-queue-seconds", type=Finite(0.1, 3600), default=DEFAULT_MAX_QUEUE_SECONDS, show_default=True,
              help="Longest estimated wait a request is admitted with: the images queued ahead of it (and its own) "
                   "divided by the images/s the server measures. Longer: 503 at once, with Retry-After = the wait.")
@click.option("--max-batch-delay-ms", type=Finite(0, 1000), default=0.0, show_default=True,
              help="The photos of all concurrent requests are embedded together, in batches up to the engine's best "
                   "batch size: how long a photo arriving at an idle server may wait for others to join its batch. "
                   "Under load batches fill while the previous one runs, without waiting (0: a lone photo runs at "
                   "once, the fastest on 2 CPU cores; docs/serve.md).")
@click.option("--header-timeout", type=Finite(0.1, 600), default=10.0, show_default=True,
              help="Seconds a client has to send a request's headers (slow clients are disconnected).")
@click.option("--max-connections", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most open connections; more are answered 503.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
# replaced by the queue bounded by time (--max-queue-seconds): still accepted, so that scripts that
# pass them keep working, with a warning that they no longer do anything
@click.option("--max-images-in-flight", "old_in_flight", type=click.IntRange(min=1), default=None, hidden=True)
@click.option("--busy-wait", "old_busy_wait", type=Finite(0, 3600), default=None, hidden=True)
def serve(model_path, store_path, host, port, token, unknown_threshold, max_request_mb, max_images, max_pixels,
          memory_limit_mb, max_queue_seconds, max_batch_delay_ms, header_timeout, max_connections, log_level,
          old_in_flight, old_busy_wait):
    """Serve MODEL over HTTP: teach classes from uploads, predict, and a web page at /.

    \b
    GET    /health                      liveness and the model's summary
    GET    /classes                     every class: name, kind, example count
    POST   /classes/{name}/examples     teach a class from images (multipart field 'files')
    DELETE /classes/{name}              delete a class taught here (base classes are protected)
    POST   /predict?k=5                 top-k classes, probabilities, cosines, 'unknown'
    GET    /docs                        the OpenAPI documentation

    Classes taught here are kept in the --store file; an upload is acknowledged only once
    it is on disk, and they are all back after a restart. One inference worker embeds the
    photos of every request together, in batches. A request is admitted while its estimated
    wait is under --max-queue-seconds and memory under --memory-limit-mb; otherwise it is
    answered 503 at once, with Retry-After.
    """
    for flag, value in (("--max-images-in-flight", old_in_flight), ("--busy-wait", old_busy_wait)):
        if value is not None:
            click.echo(f"warning: {flag} no longer does anything: requests wait in a queue bounded by time "
                       "(--max-queue-seconds) and are refused at once, with Retry-After, beyond it", err=True)
    try:
        # optional: the serve extra (pip install 'imprinting[serve]'); heavy: only when the command runs
        import uvicorn

        from imprinting.engines.allocator import serve_freed_memory
        from imprinting.serve.app import create_app
        from imprinting.serve.middleware import header_timeout_protocol
        from imprinting.serve.store import StoreError
    except ImportError as exc:
        raise click.ClickException(f"the service needs its extra dependencies ({exc}): pip install 'imprinting[serve]'")
    if token is not None and (not token.strip() or not token.isprintable()):
        raise click.UsageError("--token is empty or has control characters")
    if not _is_loopback(host) and token is None:
        click.echo(f"warning: listening on {host} without --token: anyone who can reach it can add and delete classes",
                   err=True)
    serve_freed_memory()  # the memory of a large request goes back; the batches' blocks are reused
    try:
        app = create_app(model_path, store_path, token, max_request_bytes=int(max_request_mb * 1024 * 1024),
                         max_images=max_images, max_pixels=max_pixels, unknown_threshold=unknown_threshold,
                         memory_limit_mb=memory_limit_mb, max_queue_seconds=max_queue_seconds,
                         max_batch_delay_ms=max_batch_delay_ms, max_threads=max_connections)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    service = app.state.service
    set_aside_from_gc()
    click.echo(f"{model_path}: {service.model.num_classes} classes; store {redact(store_path)}; "
               f"http://{host}:{port}/ (API docs at /docs)", err=True)
    # loop "auto": uvloop (in the serve extra) where it is installed, else asyncio's: less
    # Python per request on the event loop (measured in docs/serve.md, "Load")
    uvicorn.run(app, host=host, port=port, log_level=log_level, http=header_timeout_protocol(header_timeout),
                loop="auto", limit_concurrency=max_connections, timeout_keep_alive=5)


def set_aside_from_gc() -> None:
    """Once the model, its engines and the libraries are loaded: collect once, then move every
    object there is to the collector's permanent generation (``gc.freeze``). A full collection
    otherwise walks all of them, holding the interpreter lock: every request, ``/health``
    included, then waits (231 ms a full collection, once in the last row of a
    ``benchmarks/serve_load.py`` run, measured in docs/serve.md, "Load"). Reference counting
    still frees what is frozen; only a frozen object that later becomes part of an unreachable
    cycle is never collected (a calibration loaded at start and replaced by ``/calibrate``, say):
    a leak of at most once what was loaded, not one that grows."""
    gc.collect()
    gc.freeze()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
