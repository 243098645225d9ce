"""The library's error types (no torch: the lite runtime shares them).

Every error that a user can cause with a bad input (a file, a name, an option) is a
``UserError``; the command line shows those as one line and exits 1. Anything else is a bug
and keeps its traceback. ``UserError`` is a ``ValueError``, so code that caught ValueError
before still does.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input, stated in one sentence that names it."""


class ClassError(UserError):
    """A class operation that cannot be done: a duplicate name, a base class given examples,
    embeddings of the wrong shape, a protected class removed."""


class UnknownClassError(UserError, KeyError):
    """A class name the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class ExportFormatError(UserError):
    """An export folder or classes file that is missing, truncated, corrupt, or not one of ours."""
