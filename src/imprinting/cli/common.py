"""What every ``imprint`` command shares: the group that turns the library's user-facing
errors into one line and loads its commands on first use, the command class that does the
set-up of a run, the parameter types that check every input at the edge (a bad value is
click's one-line ``Error:`` and exit status 2, before any work), and progress bars.

Nothing here imports PyTorch, numpy or PIL at module level: ``imprint --help``, every
``--help`` and every error in the command line answer at once (``tests/test_cli_startup.py``).
What needs them is imported where a command runs (``Command.invoke``, the command bodies).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import tempfile
import unicodedata
from pathlib import Path

import click

from imprinting.errors import UserError

# The library's own error types only: anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError,)

# The command line of this process (``imprint ...``), for the provenance of result tables
# (``imprinting.report.COMMAND``, set from it where a table is written).
COMMAND_LINE: list[str] | None = None

_CHECKS = "imprinting.cli.checks"  # ctx.meta key: checks of parameters run when the command runs
_ENGINE = "imprinting.cli.engine"  # ctx.meta keys: --engine / --precision, applied when the command runs
_PRECISION = "imprinting.cli.precision"


class OneLineUsageError(click.ClickException):
    """A bad command line as one ``Error:`` line (no usage block), exit status 2."""

    exit_code = 2


class Group(click.Group):
    """Turns the library's user-facing errors into one line and exit status 1, a bad command
    line (a value out of range, a bad file) into one line and exit status 2, and records the
    command line for the provenance of result tables.

    ``lazy``: commands by name, each ``("module:attribute", summary)``, imported on first use
    (click's LazyGroup pattern), so that ``imprint X`` imports the module of X alone. A
    summary (or None: the command's own) is what ``--help`` lists without importing it.
    ``commands`` holds every command (loading them all), as in any click group."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str | None]] | None = None, **kwargs):
        self._lazy = dict(lazy or {})
        super().__init__(*args, **kwargs)

    @property
    def commands(self) -> dict[str, click.Command]:
        for name in list(self._lazy):
            self._load(name)
        return self._loaded

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._loaded = value

    def _load(self, name: str) -> click.Command:
        module, attribute = self._lazy.pop(name)[0].split(":")
        command = getattr(importlib.import_module(module), attribute)
        self._loaded[name] = command
        return command

    def list_commands(self, ctx):
        return sorted({*self._loaded, *self._lazy})

    def get_command(self, ctx, cmd_name):
        if cmd_name in self._lazy:
            return self._load(cmd_name)
        return self._loaded.get(cmd_name)

    def resolve_command(self, ctx, args):
        # click suggests from ``self.commands`` (loading every command): from the names here
        name = args[0] if args else ""
        if name and not name.startswith("-") and not ctx.resilient_parsing and self.get_command(ctx, name) is None:
            raise click.exceptions.NoSuchCommand(name, possibilities=self.list_commands(ctx), ctx=ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter):
        # click's listing, except that a command not loaded yet whose summary is in the table is
        # listed from it (a stand-in that click shortens as it would the command's own help)
        rows = []
        for name in self.list_commands(ctx):
            summary = self._lazy.get(name, (None, None))[1]
            command = click.Command(name, help=summary) if summary is not None else self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])

    def main(self, args=None, *a, **kw):
        global COMMAND_LINE

        COMMAND_LINE = ["imprint", *(sys.argv[1:] if args is None else [str(x) for x in args])]
        report = sys.modules.get("imprinting.report")  # imported (it imports torch): keep it current
        if report is not None:
            report.COMMAND = COMMAND_LINE
        return super().main(args, *a, **kw)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            raise click.ClickException(str(exc)) from None
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "imprint"
            message = " ".join(exc.format_message().split())  # one line, whatever the value held
            raise OneLineUsageError(f"{message} (see '{where} --help')") from None


class Command(click.Command):
    """Every ``imprint`` command that does work (not a group): once its command line has
    parsed, and only then, it runs the checks its parameters left for the run (a model file's
    header: ``ModelFile``), tunes the allocator (``engines.allocator.keep_freed_memory``) and
    sets the ``--engine`` / ``--precision`` defaults, all of which import PyTorch."""

    def invoke(self, ctx):
        for check in ctx.meta.pop(_CHECKS, []):
            check()
        # heavy (imports torch): only when the command runs
        from imprinting.engines.allocator import keep_freed_memory

        keep_freed_memory()  # glibc keeps freed blocks: no page faults per batch (training, extraction)
        if _ENGINE in ctx.meta or _PRECISION in ctx.meta:
            from imprinting import engines  # heavy (imports torch): only when the command runs

            engines.set_default(engine=ctx.meta.pop(_ENGINE, None), precision=ctx.meta.pop(_PRECISION, None))
        return super().invoke(ctx)


def check_when_run(ctx: click.Context | None, check) -> None:
    """Run ``check()`` when ``ctx``'s command runs (an ``imprint`` ``Command``: after the whole
    command line parsed, so a bad value elsewhere is reported without importing anything
    heavy), else now."""
    if ctx is not None and isinstance(ctx.command, Command):
        ctx.meta.setdefault(_CHECKS, []).append(check)
    else:
        check()


ENGINE_CHOICES = ["auto", "torch", "onnxruntime", "openvino"]


def _remember(key: str):
    def callback(ctx, param, value):
        ctx.meta[key] = value

    return callback


def engine_options(command):
    """``--engine`` and ``--precision``: the runtime of the frozen backbone wherever the
    command embeds images or computes features (``imprinting.engines.set_default``, called
    by ``Command.invoke`` when the command runs)."""
    command = click.option("--precision", type=click.Choice(["auto", "float32", "bfloat16"]), default=None,
                           expose_value=False, callback=_remember(_PRECISION),
                           help="Precision of the frozen backbone [default: auto = float32; bfloat16 only when "
                                "asked for].")(command)
    return click.option("--engine", type=click.Choice(ENGINE_CHOICES), default=None, expose_value=False,
                        callback=_remember(_ENGINE),
                        help="Runtime of the frozen backbone [default: auto = the fastest exact one installed, "
                             "measured once; or $IMPRINTING_ENGINE].")(command)


def embed_with_bar(model, files, views):
    """``imprinting.imprint.embed_files`` with a progress bar."""
    from imprinting.imprint import embed_files  # heavy (imports torch): only when the command runs

    with progress_bar(len(files), "embedding images") as bar:
        return embed_files(model, files, views, progress=bar.update)


def progress_bar(total, desc):
    from tqdm.auto import tqdm  # heavy (~30 ms): only when a bar is shown (imprint --help stays fast)

    return tqdm(total=total, desc=desc, unit="img" if "images" in desc else "class",
                disable=total < 2 or not sys.stderr.isatty())


# -- parameter types: every input checked before the command runs (exit 2) ------------
class Finite(click.ParamType):
    """A finite float (never NaN or infinite), optionally within [min, max] (either end open).
    click's own ``FloatRange`` lets NaN through (every comparison with NaN is false), so
    every float option of ``imprint`` uses this type instead."""

    name = "number"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low = self.min is not None and (x <= self.min if self.min_open else x < self.min)
        high = self.max is not None and (x >= self.max if self.max_open else x > self.max)
        if low or high:
            lo = "-inf" if self.min is None else f"{self.min:g}"
            hi = "inf" if self.max is None else f"{self.max:g}"
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            self.fail(f"{x:g} is not in the range {left}{lo}, {hi}{right}", param, ctx)
        return x


def unknown_threshold_option(help: str):
    """``--unknown-threshold``, the same everywhere: a cosine, so a finite number in [-1, 1]
    (NaN, infinities and anything outside are one ``Error:`` line, exit status 2); None when
    not given (the model's own threshold)."""
    return click.option("--unknown-threshold", type=Finite(-1, 1), default=None, help=help)


def rate_options(when: str = ""):
    """``--false-reject`` and ``--false-accept``: the two ways to set the unknown threshold
    when calibrating (``imprinting.calibration``); ``targets`` turns them into its arguments."""
    def decorate(command):
        command = click.option(
            "--false-accept", type=Finite(0, 1, max_open=True), default=None,
            help=f"{when}Instead: the threshold accepts at most this share of never-taught images, as estimated "
                 "by leaving each example's class out (no guarantee; the false-reject rate is then what it is)."
        )(command)
        return click.option(
            "--false-reject", type=Finite(0, 1, min_open=True, max_open=True), default=None,
            help=f"{when}At most this share of photos of taught classes are flagged unknown, guaranteed by "
                 "conformal calibration on the examples left out one at a time (needs at least 1/rate - 1 "
                 "examples; fewer: no unknown flag) [default: 0.05]."
        )(command)
    return decorate


def targets(false_reject: float | None, false_accept: float | None) -> dict:
    """The calibration's target from ``rate_options``: false reject 0.05 unless one is given."""
    if false_reject is not None and false_accept is not None:
        raise click.UsageError("give --false-reject or --false-accept, not both: one sets the unknown threshold")
    if false_accept is not None:
        return {"target_false_accept": false_accept}
    return {"target_false_reject": 0.05 if false_reject is None else false_reject}


def coverage_option(help: str):
    """``--coverage``: prediction sets that hold the true class this often (a share in (0, 1))."""
    return click.option("--coverage", type=Finite(0, 1, min_open=True, max_open=True), default=None, help=help)


MAX_EXAMPLE_ID = 2**63 - 1  # the largest SQLite INTEGER: a larger id cannot even be looked up


class ExampleId(click.ParamType):
    """An id of a stored example: a whole number in 1..2**63-1. Checked here because SQLite
    cannot bind a larger integer (an ``OverflowError`` with a traceback, not "no such
    example"), and ids start at 1."""

    name = "id"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            try:
                n = int(str(value).strip())
            except ValueError:
                self.fail(f"{str(value)[:40]!r} is not an example id (a whole number from 1 to {MAX_EXAMPLE_ID})",
                          param, ctx)
        if not 1 <= n <= MAX_EXAMPLE_ID:
            shown = str(n) if len(str(n)) <= 40 else str(n)[:20] + "..."
            self.fail(f"example id {shown} is out of range (ids are 1 to {MAX_EXAMPLE_ID})", param, ctx)
        return n


MAX_CLASS_NAME = 200


class ClassName(click.ParamType):
    """A class name: 1-200 printable characters, not only spaces (no newlines or other
    control characters, which would break every table and file that lists classes)."""

    name = "name"

    def convert(self, value, param, ctx):
        value = str(value)
        if not value.strip():
            self.fail("the class name is empty", param, ctx)
        if len(value) > MAX_CLASS_NAME:
            self.fail(f"the class name is {len(value)} characters long (limit {MAX_CLASS_NAME})", param, ctx)
        bad = next((ch for ch in value if unicodedata.category(ch)[0] == "C"), None)
        if bad is not None:
            self.fail(f"the class name has the control character {bad!r}", param, ctx)
        return value


class ModelFile(click.Path):
    """An existing imprinting model file whose header reads (the weights are checked when
    the command loads them). A missing file fails at once; the header (``checkpoint``
    imports PyTorch) is read when the command runs, before its body."""

    def __init__(self):
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        if not path.is_file():
            self.fail(f"{path}: no such model file", param, ctx)  # checkpoint.read_metadata's words

        def read_header():
            # heavy (imports torch): only when the command runs
            from imprinting.checkpoint import CheckpointError, read_metadata

            try:
                read_metadata(path)
            except CheckpointError as exc:
                self.fail(str(exc), param, ctx)

        check_when_run(ctx, read_header)
        return path


def check_writable_folder(folder: Path) -> str | None:
    """Why a new file cannot be written in ``folder`` (tried with a temporary file), or None."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot write in {existing} ({exc.strerror or exc})"
    return None


class OutputFile(click.Path):
    """A file to write: not a folder, in a folder where files can be created."""

    def __init__(self):
        super().__init__(dir_okay=False, path_type=Path)

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        problem = check_writable_folder(path.absolute().parent)
        if problem is None and path.exists() and not os.access(path, os.W_OK):
            problem = f"{path} is not writable"
        if problem:
            self.fail(f"{path}: {problem}", param, ctx)
        return path


class StoreFile(OutputFile):
    """The service's class store: writable, and if it exists, not another application's
    SQLite file (``serve.store.foreign_tables``)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
            return value  # a PostgreSQL store (imprinting.serve.store_pg): checked when it opens
        path = super().convert(value, param, ctx)
        if path.is_file():
            def not_foreign():
                # heavy (numpy, the store's SQL): only when the command runs
                from imprinting.serve.store import foreign_tables

                problem = foreign_tables(path)
                if problem:
                    self.fail(problem, param, ctx)

            check_when_run(ctx, not_foreign)
        return path
