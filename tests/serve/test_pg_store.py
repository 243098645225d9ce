"""The class store suite, run on both stores (SQLite file, PostgreSQL database), then what only
the PostgreSQL store promises: integrity checks at open, concurrent writers on one class that
neither lose nor double an example, the change log and its notifications, a clear error for an
unreachable server. Expectations are computed here with numpy and read back with plain
sqlite3 / psycopg, independently of the stores' code."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest

from imprinting.serve.integrity import ClassTaken
from imprinting.serve.store import Store, StoreError
from imprinting.serve.stores import is_postgres, open_store, redact
from serve.pg_server import pg_url, postgres  # noqa: F401  (fixtures)

DIM = 8


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where a store lives: a file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "store.sqlite"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(target):
    s = open_store(target, DIM, "model-a", "test model")
    yield s
    s.close()


def vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def unit_sum(e: np.ndarray) -> np.ndarray:
    e = e.astype(np.float64)
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).sum(axis=0)


def raw(target) -> dict:
    """{class: (count, sum, [example ids])}, read without the store classes."""
    if is_postgres(target):
        import psycopg

        with psycopg.connect(target) as conn:
            rows = conn.execute("SELECT c.name, c.count, c.sum, array_remove(array_agg(e.id ORDER BY e.id), NULL) "
                                "FROM imprint_classes c LEFT JOIN imprint_examples e ON e.class_id = c.id "
                                "GROUP BY c.id").fetchall()
    else:
        db = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
        rows = [(n, c, s, [i for (i,) in db.execute("SELECT id FROM examples WHERE class_id = ? ORDER BY id", (cid,))])
                for cid, n, c, s in db.execute("SELECT id, name, count, sum FROM classes").fetchall()]
        db.close()
    return {n: (c, np.frombuffer(bytes(s), "<f8"), list(ids)) for n, c, s, ids in rows}


# -- the suite: both stores ---------------------------------------------------------
def test_open_picks_the_store_by_target(target, store):
    assert isinstance(store, Store) != is_postgres(target)
    assert store.classes() == [] and store.examples("nothing") == []


def test_teach_extend_and_read_back(store, target):
    a, b = vectors(1, 3), vectors(2, 2)
    ids = store.add_examples("cat", a, unit_sum(a), 3, ["s1", "s2", "s3"], ["1.png", "2.png", "3.png"])
    more = store.add_examples("cat", b, unit_sum(a) + unit_sum(b), 5, ["s4", "s5"], ["4.png", "5.png"])
    other = store.add_examples("dog", b[:1], unit_sum(b[:1]), 1, ["s6"], ["6.png"])
    assert len(set(ids + more + other)) == 6 and ids == sorted(ids) and more[0] > ids[-1]
    classes = store.classes()
    assert [(c.name, c.count) for c in classes] == [("cat", 5), ("dog", 1)]  # order of creation
    np.testing.assert_array_equal(classes[0].sum, unit_sum(a) + unit_sum(b))  # what was given, bit for bit
    examples = store.examples("cat")
    assert [e.id for e in examples] == ids + more
    assert [(e.sha256, e.filename) for e in examples] == [(f"s{i}", f"{i}.png") for i in range(1, 6)]
    np.testing.assert_array_equal(np.stack([e.embedding for e in examples]), np.concatenate([a, b]))
    # acknowledged means committed: another connection sees it all
    seen = raw(target)
    assert {n: (c, ids_) for n, (c, _, ids_) in seen.items()} == {"cat": (5, ids + more), "dog": (1, other)}


def test_a_count_that_disagrees_writes_nothing(store, target):
    a = vectors(3, 2)
    store.add_examples("cat", a, unit_sum(a), 2, ["x", "y"], ["x", "y"])
    with pytest.raises(StoreError, match="the store has 2 examples, expected 4"):
        store.add_examples("cat", a, unit_sum(a) * 2, 6, ["x", "y"], ["x", "y"])
    with pytest.raises(StoreError, match="has 0 examples, expected 1"):
        store.add_examples("new", a, unit_sum(a), 3, ["x", "y"], ["x", "y"])
    assert {n: c for n, (c, _, _) in raw(target).items()} == {"cat": 2}


def test_bad_shapes_are_refused(store):
    with pytest.raises(ValueError, match=r"expected \(n >= 1, 8\) embeddings"):
        store.add_examples("cat", np.zeros((2, 3), np.float32), np.zeros(3), 2, ["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="one sha256 and one file name per embedding"):
        store.add_examples("cat", vectors(0, 2), np.zeros(DIM), 2, ["a"], ["a", "b"])


def test_both_stores_keep_the_one_contract(store, target):
    """``serve.contract``: every method the service calls, on both stores; only PostgreSQL is
    a shared store (replicas), and the service never needs to know which it has."""
    from imprinting.serve.contract import ClassStore, SharedClassStore

    assert isinstance(store, ClassStore)
    assert isinstance(store, SharedClassStore) == is_postgres(target) == store.shared
    assert store.state() == {"state": "ok"}


def test_an_upload_that_breaks_the_contract_writes_nothing(store, target):
    """The same checks in both stores (PostgreSQL's add_examples used to skip the last two)."""
    from imprinting.serve.contract import MAX_COUNT

    a = vectors(3, 2)
    store.add_examples("cat", a, unit_sum(a), 2, ["x", "y"], ["x", "y"])
    bad = a.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        store.add_examples("dog", bad, unit_sum(a), 2, ["x", "y"], ["x", "y"])
    with pytest.raises(StoreError, match="limit"):
        store.add_examples("cat", a[:1], unit_sum(a), MAX_COUNT + 1, ["z"], ["z"])
    with pytest.raises(ValueError, match="finite"):
        store.add_examples("cat", a[:1], np.full(DIM, np.inf), 3, ["z"], ["z"])
    for missing in (0, -1, 2**63, 10**30):  # ids no stored example can have: no driver overflow
        with pytest.raises(KeyError):
            store.remove_example("cat", missing)
    assert {n: c for n, (c, _, _) in raw(target).items()} == {"cat": 2}


def test_remove_class_takes_its_examples(store, target):
    a = vectors(4, 2)
    store.add_examples("cat", a, unit_sum(a), 2, ["x", "y"], ["x", "y"])
    store.add_examples("dog", a, unit_sum(a), 2, ["x", "y"], ["x", "y"])
    assert store.remove_class("cat") is True and store.remove_class("cat") is False
    assert [c.name for c in store.classes()] == ["dog"] and store.examples("cat") == []
    assert list(raw(target)) == ["dog"]
    ids = store.add_examples("cat", a[:1], unit_sum(a[:1]), 1, ["z"], ["z"])  # the name can be taught again
    assert store.classes()[-1].name == "cat" and [e.id for e in store.examples("cat")] == ids


def test_reopen_keeps_everything_and_refuses_another_model(target):
    a = vectors(5, 4)
    with_store = open_store(target, DIM, "model-a", "test model")
    with_store.add_examples("cat", a, unit_sum(a), 4, list("abcd"), list("abcd"))
    with_store.close()
    again = open_store(target, DIM, "model-a", "test model")
    try:
        [c] = again.classes()
        assert (c.name, c.count) == ("cat", 4)
        np.testing.assert_array_equal(c.sum, unit_sum(a))
    finally:
        again.close()
    with pytest.raises(StoreError, match=r"another model \(test model, 8-d embeddings\)"):
        open_store(target, DIM, "model-b", "other")
    with pytest.raises(StoreError, match="another model"):
        open_store(target, DIM + 1, "model-a", "test model")


# -- PostgreSQL only ------------------------------------------------------------------
def sql(url: str, statement: str, *params):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else None


@pytest.mark.parametrize("damage, message", [
    ("UPDATE imprint_classes SET count = 3 WHERE name = 'cat'", "class 'cat' records 3 examples but has 2"),
    ("UPDATE imprint_classes SET sum = '\\x0102'::bytea", "class 'cat' has a sum of 2 bytes, not 64"),
    ("UPDATE imprint_examples SET embedding = '\\x01'::bytea", "2 examples have an embedding of the wrong size"),
    ("UPDATE imprint_clock SET seq = 0", "class 'cat' is at change 1, after the store's last change"),
])
def test_a_damaged_store_is_refused_at_open(pg_url, damage, message):
    store = open_store(pg_url, DIM, "model-a")
    a = vectors(6, 2)
    store.add_examples("cat", a, unit_sum(a), 2, ["x", "y"], ["x", "y"])
    store.close()
    sql(pg_url, damage)
    with pytest.raises(StoreError, match="the store is damaged: " + message.replace("(", r"\(")):
        open_store(pg_url, DIM, "model-a")


def test_concurrent_writers_on_one_class_lose_and_double_nothing(pg_url):
    """4 writers, each with its own store (as on 4 replicas), add to the same class at once:
    every example is there once, the count is their number, the sum their normalized sum,
    and the change numbers are 1..N without a gap, in the order of the commits."""
    stores = [open_store(pg_url, DIM, "model-a") for _ in range(4)]
    uploads = {w: [vectors(100 * w + i, 1 + i % 3) for i in range(8)] for w in range(4)}
    got: dict[int, list] = {w: [] for w in range(4)}
    start = threading.Barrier(4)

    def write(w):
        start.wait()
        for i, e in enumerate(uploads[w]):
            got[w].append(stores[w].add_to_class("shared", e, [f"{w}-{i}"] * len(e), ["f"] * len(e)))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        everything = np.concatenate([e for w in range(4) for e in uploads[w]])
        [c] = stores[0].classes()
        assert c.count == len(everything) == sum(len(ids) for w in range(4) for ids, _, _ in got[w])
        np.testing.assert_allclose(c.sum, unit_sum(everything), rtol=1e-12, atol=1e-12)
        stored = stores[0].examples("shared")
        assert sorted(e.id for e in stored) == sorted(i for w in range(4) for ids, _, _ in got[w] for i in ids)
        assert sorted(e.sha256 for e in stored) == sorted(f"{w}-{i}" for w in range(4) for i, e in enumerate(uploads[w])
                                                          for _ in range(len(e)))
        assert sum(created for w in range(4) for _, _, created in got[w]) == 1
        seqs = [row[0] for row in sql(pg_url, "SELECT seq FROM imprint_changes ORDER BY seq")]
        assert seqs == list(range(1, 33)) and c.version == 32
        counts = sorted((s.version, s.count) for w in range(4) for _, s, _ in got[w])
        assert [n for _, n in counts] == sorted(n for _, n in counts)  # later change, more examples
    finally:
        for s in stores:
            s.close()


def test_changes_are_logged_and_notified(pg_url):
    import psycopg

    store = open_store(pg_url, DIM, "model-a")
    try:
        with psycopg.connect(pg_url, autocommit=True) as listener:
            listener.execute(f'LISTEN "{store.channel}"')
            a = vectors(7, 2)
            store.add_to_class("cat", a, ["x", "y"], ["x", "y"])
            store.add_examples("dog", a[:1], unit_sum(a[:1]), 1, ["z"], ["z"])
            store.remove_class("cat")
            notes = [n.payload for n in listener.notifies(timeout=5, stop_after=3)]
        assert notes == ["1 cat", "2 dog", "3 cat"]
        assert store.changes_since(1) == [(2, "dog"), (3, "cat")]
        assert store.sequence() == 3 and store.versions() == (3, {"dog": 2})
    finally:
        store.close()


def test_an_unreachable_server_is_a_clear_error(postgres):
    url = postgres.url("postgres").replace(f":{postgres.port}/", ":1/")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1/postgres: cannot connect to PostgreSQL"):
        open_store(url, DIM, "model-a")
    with pytest.raises(StoreError, match="does not exist"):
        open_store(postgres.url("no_such_database"), DIM, "model-a")


def test_passwords_are_not_shown(pg_url):
    url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    assert redact(url) == pg_url.replace("postgres@", "postgres:***@")
    store = open_store(url, DIM, "model-a")  # trust authentication: the password is not needed
    try:
        assert "hunter2" not in store.path and "***" in store.path
    finally:
        store.close()


# -- example-level edits (issue 15): both stores, where the store has them ----------------
@pytest.fixture
def editable(store):
    if not hasattr(store, "remove_example"):
        pytest.skip(f"{type(store).__name__} has no example-level edits on this branch (issue 15)")
    return store


def test_remove_one_example_recomputes_the_class(editable):
    a, b = vectors(8, 3), vectors(9, 1)
    ids = editable.add_examples("cat", a, unit_sum(a), 3, ["x", "y", "z"], ["1", "2", "3"])
    [other] = editable.add_examples("dog", b, unit_sum(b), 1, ["w"], ["4"])
    total, count = editable.remove_example("cat", ids[1])
    assert count == 2
    np.testing.assert_allclose(total, unit_sum(a[[0, 2]]), rtol=1e-12, atol=1e-15)
    [cat, _] = editable.classes()
    assert cat.count == 2 and np.array_equal(cat.sum, total)
    assert [e.id for e in editable.examples("cat")] == [ids[0], ids[2]]
    with pytest.raises(KeyError):
        editable.remove_example("cat", ids[1])  # gone already
    with pytest.raises(KeyError):
        editable.remove_example("cat", other)  # another class's
    assert editable.remove_example("cat", ids[0])[1] == 1
    assert editable.remove_example("cat", ids[2]) is None  # the last one takes the class
    assert [c.name for c in editable.classes()] == ["dog"]


def test_rename_and_thumbnails(editable):
    a = vectors(10, 2)
    ids = editable.add_examples("cat", a, unit_sum(a), 2, ["x", "y"], ["1.png", "2.png"])
    editable.add_examples("dog", a[:1], unit_sum(a[:1]), 1, ["z"], ["3.png"])
    editable.add_thumbnails(ids[:1], [b"\xff\xd8tiny jpeg"])
    assert editable.rename_class("cat", "kitten") is True and editable.rename_class("cat", "x") is False
    records = editable.example_records("kitten")
    assert [(r["id"], r["sha256"], r["filename"], r["thumbnail"]) for r in records] == [
        (ids[0], "x", "1.png", b"\xff\xd8tiny jpeg"), (ids[1], "y", "2.png", None)]
    assert all(abs(r["added"] - time.time()) < 60 for r in records)
    with pytest.raises(ClassTaken):  # both stores: the driver's error is the library's
        editable.rename_class("kitten", "dog")  # taken
    assert [(c.name, c.count) for c in editable.classes()] == [("kitten", 2), ("dog", 1)]


def test_edits_are_logged_for_the_other_replicas(pg_url):
    store = open_store(pg_url, DIM, "model-a")
    try:
        a = vectors(11, 2)
        ids, _, _ = store.add_to_class("cat", a, ["x", "y"], ["1", "2"])
        store.remove_example("cat", ids[0])
        store.rename_class("cat", "kitten")
        store.remove_example("kitten", ids[1])
        assert store.changes_since(0) == [(1, "cat"), (2, "cat"), (3, "cat"), (4, "kitten"), (5, "kitten")]
        assert store.classes() == []
    finally:
        store.close()


def test_labelled_embeddings_and_settings(editable):
    a, b = vectors(12, 2), vectors(13, 1)
    editable.add_examples("cat", a, unit_sum(a), 2, ["x", "y"], ["1", "2"])
    editable.add_examples("dog", b, unit_sum(b), 1, ["z"], ["3"])
    names, e = editable.labelled_embeddings()
    assert names == ["cat", "cat", "dog"]
    np.testing.assert_array_equal(e, np.concatenate([a, b]))
    assert editable.setting("calibration") is None
    editable.set_setting("calibration", '{"scale": 12.5}')
    editable.set_setting("calibration", '{"scale": 13.0}')  # replaced
    assert editable.setting("calibration") == '{"scale": 13.0}'
    assert [(c.name, c.count) for c in editable.classes()] == [("cat", 2), ("dog", 1)]  # settings are no classes


def test_the_service_depends_on_the_contract_alone():
    """Importing the service loads neither store module nor a database driver: it talks to
    ``serve.contract.ClassStore``, and ``serve.stores.open_store`` picks the store."""
    import subprocess
    import sys

    code = ("import sys, imprinting.serve.service, imprinting.serve.edits, imprinting.serve.follow; "
            "print(sorted(m for m in ('sqlite3', 'psycopg', 'imprinting.serve.store', 'imprinting.serve.store_pg') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
