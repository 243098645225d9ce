"""What every ``imprint`` command shares: the group that turns the library's user-facing
errors into one line, and progress bars."""

from __future__ import annotations

import sys

import click

from imprinting.backbones import BackboneError
from imprinting.checkpoint import CheckpointError
from imprinting.data import DatasetError
from imprinting.data.images import ImageError
from imprinting.model import UnknownClassError

USER_ERRORS = (ImageError, CheckpointError, DatasetError, BackboneError, UnknownClassError, ValueError)


class Group(click.Group):
    """Turns the library's user-facing errors into one line and exit status 1, and records the
    command line for the provenance of result tables."""

    def main(self, args=None, *a, **kw):
        from imprinting import report

        report.COMMAND = ["imprint", *(sys.argv[1:] if args is None else [str(x) for x in args])]
        return super().main(args, *a, **kw)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None



def embed_with_bar(model, files, views):
    import torch

    out = []
    batch = 16
    with progress_bar(len(files), "embedding images") as bar:
        for i in range(0, len(files), batch):
            out.append(model.embed_images(files[i : i + batch], views=views))
            bar.update(len(files[i : i + batch]))
    return torch.cat(out)


def progress_bar(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img" if "images" in desc else "class",
                disable=total < 2 or not sys.stderr.isatty())

