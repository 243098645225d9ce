"""The class store under attack: the lock through hard links, symlinks and another process;
damaged files refused at open with a message naming the damage; a full disk and a read-only
mount answered with a 503 that changes nothing.

Stores are filled through ``Store.add_examples`` with random unit embeddings whose sums are
computed here with numpy, so the files are valid by construction before the test damages them
with plain sqlite3 or by writing bytes.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from imprinting.serve.store import Store, StoreError

DIM = 16
FP = "fingerprint-of-a-test-model"


def unit(rng, n: int) -> np.ndarray:
    e = rng.standard_normal((n, DIM)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def fill(path: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> None:
    """A valid store: ``classes`` classes of ``per_class`` examples, sums computed here."""
    rng = np.random.default_rng(seed)
    store = Store(path, DIM, FP, "test")
    try:
        for c in range(classes):
            e = unit(rng, per_class)
            total = (e.astype(np.float64) / np.linalg.norm(e.astype(np.float64), axis=1, keepdims=True)).sum(0)
            store.add_examples(f"class {c}", e, total, per_class, ["0" * 64] * per_class, ["x.png"] * per_class)
    finally:
        store.close()


def refused(path: Path, *words: str) -> str:
    with pytest.raises(StoreError) as info:
        Store(path, DIM, FP).close()
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    return message


def sql(path: Path, statement: str, *args) -> None:
    db = sqlite3.connect(path)
    db.execute(statement, args)
    db.commit()
    db.close()


# -- the lock ------------------------------------------------------------------
def test_a_hard_link_or_symlink_cannot_open_a_second_writer(tmp_path):
    path = tmp_path / "store.sqlite"
    fill(path)
    os.link(path, tmp_path / "hard.sqlite")
    (tmp_path / "soft.sqlite").symlink_to(path)
    (tmp_path / "sub").mkdir()
    first = Store(path, DIM, FP)
    try:
        for other in (tmp_path / "hard.sqlite", tmp_path / "soft.sqlite", tmp_path / "sub" / ".." / "store.sqlite"):
            refused(other, "in use by another", f"process {os.getpid()}")
    finally:
        first.close()
    store = Store(tmp_path / "hard.sqlite", DIM, FP)  # free again once the first is closed
    assert [c.name for c in store.classes()] == ["class 0", "class 1", "class 2"]
    store.close()
    assert not list(tmp_path.glob("*.lock"))  # no lock file beside the store: the lock is on the file


def test_the_error_names_the_process_holding_the_store(tmp_path):
    path = tmp_path / "store.sqlite"
    fill(path)
    os.link(path, tmp_path / "hard.sqlite")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from imprinting.serve.store import Store; "
         f"s = Store(sys.argv[1], {DIM}, {FP!r}); print('open', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "open"
        refused(tmp_path / "hard.sqlite", "in use by another", f"process {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    Store(tmp_path / "hard.sqlite", DIM, FP).close()  # the kernel dropped the lock with the process


# -- damaged stores ------------------------------------------------------------
def test_garbage_in_the_middle_of_the_file_is_refused(tmp_path):
    path = tmp_path / "store.sqlite"
    fill(path, classes=40, per_class=8)  # ~100 pages, nearly all in use
    size = path.stat().st_size
    assert size > 64 * 1024
    with open(path, "r+b") as f:
        f.seek((size // 2) // 4096 * 4096)
        f.write(np.random.default_rng(1).bytes(8192))
    refused(path, str(path), "damaged")


@pytest.mark.parametrize("damage, words", [
    ("DELETE FROM meta", ["meta table is empty", "holds classes"]),
    ("DELETE FROM meta WHERE key = 'model'", ["no model fingerprint"]),
    ("UPDATE classes SET sum = ? WHERE name = 'class 1'", ["'class 1'", "NaN or infinite sum"]),
    ("UPDATE classes SET count = 9223372036854775807 WHERE name = 'class 2'", ["'class 2'", "example count"]),
    ("UPDATE classes SET count = 5 WHERE name = 'class 0'", ["'class 0'", "records 5 examples", "holds 4"]),
    ("UPDATE classes SET sum = ? WHERE name = 'class 0'", ["'class 0'", "differs from the sum of its examples"]),
    ("DELETE FROM classes WHERE name = 'class 0'", ["belong to no class"]),
])
def test_damaged_rows_are_refused(tmp_path, damage, words):
    path = tmp_path / "store.sqlite"
    fill(path)
    if "sum = ?" in damage:
        bad = np.full(DIM, np.nan) if "class 1" in damage else np.ones(DIM)
        sql(path, damage, bad.astype("<f8").tobytes())
    else:  # (foreign keys are off in plain sqlite3: a deleted class's examples stay)
        sql(path, damage)
    refused(path, str(path), *words)


def test_another_applications_sqlite_file_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "app.sqlite"
    sql(path, "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
    refused(path, "not a class store", "users")
    db = sqlite3.connect(path)
    assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["users"]
    db.close()


def test_an_empty_new_store_is_created_and_reopened(tmp_path):
    path = tmp_path / "new.sqlite"
    Store(path, DIM, FP).close()
    Store(path, DIM, FP).close()
    with pytest.raises(StoreError, match="another model"):
        Store(path, DIM, "another fingerprint")


# -- full disk and read-only mounts ---------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root, as in CI); skipped with the reason where mount fails."""
    where = tmp_path / "disk"
    where.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(where: Path) -> Path:
    filler = where / f"filler-{uuid.uuid4().hex}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def refuses_with_503(service, calls, probe) -> None:
    """Make the calls one by one until the store refuses one (a nearly full WAL may take a
    few): that one is a 503 and leaves the classes and the predictions as they were."""
    from imprinting.serve.validation import ApiError

    for call in calls:
        state, answers = service.classes(), service.predict(probe, k=10)["predictions"]
        try:
            call()
        except ApiError as exc:
            assert (exc.status, exc.error) == (503, "store_error"), exc.detail
            assert "nothing changed" in exc.detail and "\n" not in exc.detail
            assert service.classes() == state
            assert service.predict(probe, k=10)["predictions"] == answers
            return
    pytest.fail("the store never refused a write")


def test_full_disk_and_read_only_mount_give_503_and_change_nothing(small_disk, conv4_model, kit):
    from imprinting.serve.service import Service

    store = small_disk / "store.sqlite"
    upload = [("a.png", kit.image_bytes(seed=1))]
    probe = [("p.png", kit.image_bytes(seed=2))]
    names = [f"class {i}" for i in range(30)]
    with Service.open(conv4_model, store) as service:
        for name in names[:2]:
            service.teach(name, upload)
        filler = fill_disk(small_disk)
        refuses_with_503(service, [lambda n=n: service.teach(n, upload) for n in names[2:]], probe)
        refuses_with_503(service, [lambda: service.teach(names[0], upload)] * 20, probe)
        refuses_with_503(service, [lambda n=n: service.delete(n) for n in names[:2]], probe)
        filler.unlink()
        taught = service.teach("after the disk was freed", upload)
        assert taught["created"] and taught["examples"] == 1
        now = service.classes()
    with Service.open(conv4_model, store) as service:  # what memory said is what the disk has
        assert service.classes() == now
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)  # (not while a file is open)
    with pytest.raises(StoreError, match="cannot open the store.*Read-only file system"):
        Service.open(conv4_model, store)


def test_a_second_server_through_a_hard_link_or_symlink_stops_naming_the_first(conv4_model, tmp_path, start_server,
                                                                               kit):
    """The attack of issue 14: two `imprint serve` on one store file by other names."""
    store = tmp_path / "store.sqlite"
    first = start_server(conv4_model, store)
    with first.client() as c:
        assert c.post("/classes/one/examples", files=kit.files(("a.png", kit.image_bytes()))).status_code == 201
    os.link(store, tmp_path / "hard.sqlite")
    (tmp_path / "soft.sqlite").symlink_to(store)
    for other in ("hard.sqlite", "soft.sqlite"):
        result = subprocess.run([sys.executable, "-m", "imprinting.cli", "serve", str(conv4_model), "--store",
                                 str(tmp_path / other), "--port", "0"], capture_output=True, text=True, timeout=120)
        message = result.stderr.strip()
        assert result.returncode == 1 and message.startswith("Error:") and len(message.splitlines()) == 1, message
        assert "in use by another imprint serve process" in message and f"process {first.proc.pid}" in message
    with first.client() as c:  # the first one is unharmed
        assert [k["name"] for k in c.get("/classes").json()["classes"]][-1] == "one"
