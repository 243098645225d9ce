"""``imprint examples``: the examples of the classes a service taught, edited in its store
without HTTP (stop the server first: one process owns a store)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imprinting.cli.common import Command, ExampleId


def _open(model_path, store_path):
    # heavy: only when the command runs
    from imprinting.serve.service import Service
    from imprinting.serve.contract import StoreError

    try:
        return Service.open(model_path, store_path)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _call(method, *args):
    # heavy: only when the command runs
    from imprinting.serve.validation import ApiError

    try:
        return method(*args)
    except ApiError as exc:
        raise click.ClickException(exc.detail) from None


def _store_option(command):
    return click.option("--store", "store_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                        help="The service's SQLite store (as given to imprint serve).")(command)


@click.group()
def examples() -> None:
    """List, remove and rename what a service was taught (MODEL and --store as for imprint serve)."""


@examples.command("list", cls=Command)
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("name")
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON (thumbnails as data URLs).")
def list_examples(model_path, name, store_path, as_json):
    """The examples of class NAME: id, when added, upload name, SHA-256 of the image."""
    with _open(model_path, store_path) as service:
        body = _call(service.examples, name)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    for e in body["examples"]:
        click.echo(f"{e['id']:>6}  {e['added']}  {e['filename']:<30} {e['sha256'][:16]}")
    click.echo(f"{name}: {len(body['examples'])} examples")


@examples.command("remove", cls=Command)
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("name")
@click.argument("example_id", type=ExampleId())
@_store_option
def remove_example(model_path, name, example_id, store_path):
    """Remove example EXAMPLE_ID from class NAME; the class is recomputed from the others."""
    with _open(model_path, store_path) as service:
        body = _call(service.remove_example, name, example_id)
    click.echo(f"removed example {example_id}: " + (f"{name} had no other example and is gone" if body["class_deleted"]
                                                    else f"{name} now has {body['examples']} examples"))


@examples.command("rename", cls=Command)
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("name")
@click.argument("new_name")
@_store_option
def rename_class(model_path, name, new_name, store_path):
    """Rename class NAME to NEW_NAME."""
    with _open(model_path, store_path) as service:
        body = _call(service.rename, name, new_name)
    click.echo(f"renamed {name} to {body['name']} ({body['examples']} examples)")
