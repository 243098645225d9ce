"""The PostgreSQL store's tables, the statement that logs a change, and the checks made at
open (``serve.store_pg`` uses them): what a database administrator reads to know what the
store keeps and how a connection is set up."""

from __future__ import annotations

import time
import uuid

from imprinting.serve.integrity import StoreError
from imprinting.serve.store import SCHEMA_VERSION

# Server-side bounds on each pooled connection (a slow statement, a row lock held by a stuck writer)
SESSION_TIMEOUTS = {"statement_timeout": "5s", "lock_timeout": "5s", "idle_in_transaction_session_timeout": "30s"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS imprint_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS imprint_classes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE,
    count integer NOT NULL CHECK (count > 0),
    sum bytea NOT NULL,
    version bigint NOT NULL DEFAULT 0,
    created double precision NOT NULL,
    updated double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS imprint_examples (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    class_id bigint NOT NULL REFERENCES imprint_classes(id) ON DELETE CASCADE,
    embedding bytea NOT NULL,
    sha256 text NOT NULL,
    filename text NOT NULL,
    created double precision NOT NULL,
    thumbnail bytea
);
CREATE INDEX IF NOT EXISTS imprint_examples_by_class ON imprint_examples(class_id);
CREATE TABLE IF NOT EXISTS imprint_clock (one boolean PRIMARY KEY DEFAULT true CHECK (one), seq bigint NOT NULL);
INSERT INTO imprint_clock (seq) VALUES (0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS imprint_changes (
    seq bigint PRIMARY KEY,
    name text NOT NULL,
    kind text NOT NULL,
    at double precision NOT NULL
)
"""

# The last step of every write, in one round trip: the next change number, the change log,
# the class's version, and the notification (delivered at the commit, in commit order).
LOG_CHANGE = """
WITH c AS (UPDATE imprint_clock SET seq = seq + 1 RETURNING seq),
     l AS (INSERT INTO imprint_changes (seq, name, kind, at) SELECT seq, %(name)s, %(kind)s, %(at)s FROM c),
     v AS (UPDATE imprint_classes SET version = (SELECT seq FROM c), updated = %(at)s WHERE id = %(id)s)
SELECT seq, pg_notify(%(channel)s, seq::text || ' ' || %(name)s) FROM c
"""


def configure(conn) -> None:
    """Each new pooled connection: a commit is acknowledged only once it is durable, and no
    statement, lock wait or idle transaction lasts longer than ``SESSION_TIMEOUTS``."""
    if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
        conn.execute("SET synchronous_commit TO on")
    for key, value in SESSION_TIMEOUTS.items():
        conn.execute(f"SET {key} = '{value}'")


def check_meta(conn, path: str, dim: int, fingerprint: str, description: str) -> str:
    """The store's id, after checking ``imprint_meta`` against the model (recorded in a new
    store): a store of another model, or of a newer schema, is a ``StoreError``."""
    meta = dict(conn.execute("SELECT key, value FROM imprint_meta").fetchall())
    if not meta:
        rows = {"schema": str(SCHEMA_VERSION), "dim": str(dim), "model": fingerprint,
                "model_description": description, "created": str(time.time()), "store_id": uuid.uuid4().hex}
        conn.cursor().executemany("INSERT INTO imprint_meta VALUES (%s, %s)", list(rows.items()))
        return rows["store_id"]
    if int(meta.get("schema", 0)) > SCHEMA_VERSION:
        raise StoreError(f"{path}: written by a newer version of imprinting (schema {meta['schema']})")
    if meta.get("model") != fingerprint or int(meta.get("dim", -1)) != dim:
        raise StoreError(
            f"{path}: this store holds classes of another model "
            f"({meta.get('model_description') or 'unknown'}, {meta.get('dim')}-d embeddings); its embeddings "
            "mean nothing to this one. Use the model it was made with, or another database."
        )
    if "store_id" not in meta:
        raise StoreError(f"{path}: imprint_meta has no store_id: not a store made by imprinting")
    return meta["store_id"]


def problems(conn, dim: int) -> list[str]:
    """What is wrong with the store, checked in the database (empty when it is whole):
    counts that differ from the examples, sums and embeddings of the wrong size, versions
    ahead of the clock. A scan of both tables (the whole open took 0.4 s with 100,000 classes
    of one example: docs/scaling.md)."""
    d = dim
    checks = [
        ("SELECT c.name, c.count, count(e.id) FROM imprint_classes c LEFT JOIN imprint_examples e "
         "ON e.class_id = c.id GROUP BY c.id HAVING c.count <> count(e.id) ORDER BY c.id LIMIT 5",
         lambda r: f"class {r[0]!r} records {r[1]} examples but has {r[2]}"),
        (f"SELECT name, octet_length(sum) FROM imprint_classes WHERE octet_length(sum) <> {8 * d} LIMIT 5",
         lambda r: f"class {r[0]!r} has a sum of {r[1]} bytes, not {8 * d}"),
        (f"SELECT count(*) FROM imprint_examples WHERE octet_length(embedding) <> {4 * d} HAVING count(*) > 0",
         lambda r: f"{r[0]} examples have an embedding of the wrong size (not {4 * d} bytes)"),
        ("SELECT name, version FROM imprint_classes WHERE version > (SELECT seq FROM imprint_clock) LIMIT 5",
         lambda r: f"class {r[0]!r} is at change {r[1]}, after the store's last change"),
        ("SELECT count(*) FROM imprint_clock HAVING count(*) <> 1",
         lambda r: f"imprint_clock has {r[0]} rows instead of 1"),
    ]
    return [say(row) for query, say in checks for row in conn.execute(query).fetchall()]
