"""Choosing the class store from ``--store``: a file path is the embedded SQLite store
(``serve.store``, one server per file), a ``postgresql://`` URL the PostgreSQL store
(``serve.store_pg``, any number of replicas over one database)."""

from __future__ import annotations

import os

from imprinting.serve.urls import POSTGRES_SCHEMES, is_postgres, redact  # noqa: F401  (this module's API too)


def open_store(target: str | os.PathLike, dim: int, fingerprint: str, description: str = "", **options):
    """The store at ``target`` for a model with ``dim``-d embeddings and this fingerprint,
    created when missing: a ``PgStore`` for ``postgresql://...``, else a SQLite ``Store``
    on the file. ``options`` go to ``PgStore`` (the SQLite store takes none). Raises
    ``StoreError`` for a store of another model, a damaged one, or one that cannot be opened."""
    # each store is imported when it is opened: a process loads only the store (and the database
    # driver) it uses, and the service depends on serve.contract alone
    if is_postgres(target):
        from imprinting.serve.store_pg import PgStore

        return PgStore(str(target), dim, fingerprint, description, **options)
    if options:
        raise TypeError(f"the SQLite store takes no options, got {sorted(options)}")
    from imprinting.serve.store import Store

    return Store(target, dim, fingerprint, description)
