"""``imprint serve MODEL --store PATH``: the click command. FastAPI and uvicorn are imported
only when it runs, so ``imprint --help`` stays fast and works without the ``serve`` extra."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from imprinting.data.images import MAX_PIXELS


@click.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--store", "store_path", required=True, metavar="PATH|URL",
              help="Where the classes taught through the service live: a SQLite file (created when missing), "
                   "or postgresql://user@host/db for several replicas over one database (pip install "
                   "'imprinting[postgres]').")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--token", envvar="IMPRINT_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' for every write (env IMPRINT_TOKEN).")
@click.option("--unknown-threshold", type=click.FloatRange(-1, 1), default=None,
              help="Flag predictions whose best cosine is below this (default: the model's own).")
@click.option("--max-request-mb", type=click.FloatRange(min=0.001), default=32.0, show_default=True,
              help="Largest request body, in MiB.")
@click.option("--max-images", type=click.IntRange(min=1), default=16, show_default=True,
              help="Most images in one request.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=MAX_PIXELS, show_default=True,
              help="Most pixels in one image (decompression bombs are refused).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
def serve(model_path, store_path, host, port, token, unknown_threshold, max_request_mb, max_images, max_pixels,
          log_level):
    """Serve MODEL over HTTP: teach classes from uploads, predict, and a web page at /.

    \b
    GET    /health                      liveness and the model's summary
    GET    /classes                     every class: name, kind, example count
    POST   /classes/{name}/examples     teach a class from images (multipart field 'files')
    DELETE /classes/{name}              delete a class taught here (base classes are protected)
    POST   /predict?k=5                 top-k classes, probabilities, cosines, 'unknown'
    GET    /docs                        the OpenAPI documentation

    Classes taught here are kept in the --store file; an upload is acknowledged only once
    it is on disk, and they are all back after a restart.
    """
    try:
        import uvicorn

        from imprinting.serve.app import create_app
        from imprinting.serve.store import StoreError
        from imprinting.serve.stores import redact
    except ImportError as exc:
        raise click.ClickException(f"the service needs its extra dependencies ({exc}): pip install 'imprinting[serve]'")
    if token is not None and not token.strip():
        raise click.ClickException("--token is empty")
    if not _is_loopback(host) and token is None:
        click.echo(f"warning: listening on {host} without --token: anyone who can reach it can add and delete classes",
                   err=True)
    try:
        app = create_app(model_path, store_path, token, max_request_bytes=int(max_request_mb * 1024 * 1024),
                         max_images=max_images, max_pixels=max_pixels, unknown_threshold=unknown_threshold)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    service = app.state.service
    click.echo(f"{model_path}: {service.model.num_classes} classes; store {redact(store_path)}; "
               f"http://{host}:{port}/ (API docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


COMMANDS = [serve]
