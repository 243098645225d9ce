"""Choosing the class store from ``--store``: a file path is the embedded SQLite store
(``serve.store``, one server per file), a ``postgresql://`` URL the PostgreSQL store
(``serve.store_pg``, any number of replicas over one database)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(target) -> bool:
    """Whether ``target`` names a PostgreSQL database (a URL), not a file."""
    return isinstance(target, str) and target.lower().startswith(POSTGRES_SCHEMES)


def open_store(target: str | os.PathLike, dim: int, fingerprint: str, description: str = "", **options):
    """The store at ``target`` for a model with ``dim``-d embeddings and this fingerprint,
    created when missing: a ``PgStore`` for ``postgresql://...``, else a SQLite ``Store``
    on the file. ``options`` go to ``PgStore`` (the SQLite store takes none). Raises
    ``StoreError`` for a store of another model, a damaged one, or one that cannot be opened."""
    if is_postgres(target):
        from imprinting.serve.store_pg import PgStore

        return PgStore(str(target), dim, fingerprint, description, **options)
    if options:
        raise TypeError(f"the SQLite store takes no options, got {sorted(options)}")
    from imprinting.serve.store import Store

    return Store(target, dim, fingerprint, description)


def redact(target) -> str:
    """``target`` as it may be printed or logged: a URL's password replaced by ``***``."""
    text = str(target)
    if not is_postgres(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = "&".join("password=***" if q.lower().startswith("password=") else q for q in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return text
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
