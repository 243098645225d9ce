"""What every ``imprint`` command shares: the group that turns the library's user-facing
errors into one line, and progress bars."""

from __future__ import annotations

import sys

import click

from imprinting.errors import UserError

# The library's own error types only: anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError,)


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
    """``imprinting.imprint.embed_files`` with a progress bar."""
    from imprinting.imprint import embed_files

    with progress_bar(len(files), "embedding images") as bar:
        return embed_files(model, files, views, progress=bar.update)


def progress_bar(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img" if "images" in desc else "class",
                disable=total < 2 or not sys.stderr.isatty())

