"""Example-level edits in the service: list a class's examples (with thumbnails), remove one
(the class becomes exactly a batch imprint of the others, also after a restart), rename a
class; through ``Service`` and over HTTP. Expectations are computed here: the batch imprint
of the remaining examples by a fresh ``ClassTable`` from the embeddings the store keeps."""

from __future__ import annotations

import base64
import io
import sqlite3

import numpy as np
import pytest
from PIL import Image

from imprinting.classes import ClassTable
from imprinting.serve.edits import THUMBNAIL_PIXELS
from imprinting.serve.service import Service
from imprinting.serve.validation import ApiError


def uploads(kit, *seeds, color=(200, 40, 40)):
    return [(f"{seed}.png", kit.image_bytes(color, seed=seed)) for seed in seeds]


def raises(status, error, call, *args):
    with pytest.raises(ApiError) as info:
        call(*args)
    assert (info.value.status, info.value.error) == (status, error), info.value.detail


def batch_imprint(embeddings: np.ndarray, dim: int):
    """(template, sum, count) of a class imprinted in one call from ``embeddings``."""
    table = ClassTable(dim)
    table.add("c", embeddings)
    return table.templates[0].copy(), table.sums[0].copy(), int(table.counts[0])


def state(service, name):
    table = service.model.classes
    i = table.index_of(name)
    return table.templates[i].copy(), table.sums[i].copy(), int(table.counts[i])


def test_list_remove_one_rename_and_restart(conv4_model, kit, tmp_path):
    store = tmp_path / "store.sqlite"
    with Service.open(conv4_model, store) as service:
        service.teach("mug", uploads(kit, 1, 2, 3, 4))
        service.teach("cup", uploads(kit, 5, 6, color=(40, 200, 40)))
        listed = service.examples("mug")["examples"]
        assert [e["filename"] for e in listed] == ["1.png", "2.png", "3.png", "4.png"]
        assert all(e["added"].endswith("+00:00") and len(e["sha256"]) == 64 for e in listed)
        thumb = Image.open(io.BytesIO(base64.b64decode(listed[0]["thumbnail"].split(",", 1)[1])))
        assert thumb.format == "JPEG" and max(thumb.size) <= THUMBNAIL_PIXELS

        kept = kit.read_store(store)["classes"]["mug"]
        removed = listed[1]["id"]
        order = service.model.class_names
        body = service.remove_example("mug", removed)
        assert body["examples"] == 3 and body["class_deleted"] is False
        rest = kept["embeddings"][[i for i, x in enumerate(kept["ids"]) if x != removed]]
        want = batch_imprint(rest, service.model.embedder.dim)
        got = state(service, "mug")
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[2] == want[2] == 3
        assert service.model.class_names == order  # the class kept its place
        after = kit.read_store(store)["classes"]["mug"]
        np.testing.assert_array_equal(after["sum"], want[1])
        assert after["count"] == 3 and removed not in after["ids"]

        raises(404, "unknown_example", service.remove_example, "mug", removed)
        raises(404, "unknown_example", service.remove_example, "cup", listed[0]["id"])  # mug's, not cup's
        raises(409, "read_only_class", service.remove_example, "file_class", 1)
        raises(409, "class_exists", service.rename, "mug", "cup")
        raises(409, "read_only_class", service.rename, "file_class", "other")
        raises(422, "invalid_class_name", service.rename, "mug", "a/b")
        raises(404, "unknown_class", service.examples, "nothing")

        renamed = service.rename("mug", "blue mug")
        assert renamed["name"] == "blue mug" and renamed["examples"] == 3
        assert service.model.class_names == [("blue mug" if n == "mug" else n) for n in order]
        np.testing.assert_array_equal(state(service, "blue mug")[0], want[0])
        for e in service.examples("cup")["examples"]:
            last = service.remove_example("cup", e["id"])
        assert last["class_deleted"] is True and not service.model.has_class("cup")
        memory = state(service, "blue mug")

    with Service.open(conv4_model, store) as again:  # a restart: the same classes, bit for bit
        assert again.model.class_names == [n for n in order if n != "cup" and n != "mug"] + ["blue mug"]
        back = state(again, "blue mug")
        for a, b in zip(back, memory):
            np.testing.assert_array_equal(a, b)
        assert [e["id"] for e in again.examples("blue mug")["examples"]] == [x for x in kept["ids"] if x != removed]


def test_stores_without_thumbnails_still_list_their_examples(conv4_model, kit, tmp_path):
    store = tmp_path / "store.sqlite"
    with Service.open(conv4_model, store) as service:
        service.teach("mug", uploads(kit, 1, 2))
        service.examples("mug")  # waits for the thumbnails
    db = sqlite3.connect(store)  # as a store written before thumbnails were kept: no such column
    db.execute("ALTER TABLE examples DROP COLUMN thumbnail")
    db.commit()
    db.close()
    with Service.open(conv4_model, store) as service:
        listed = service.examples("mug")["examples"]
        assert len(listed) == 2 and all(e["thumbnail"] is None for e in listed)
        service.teach("mug", uploads(kit, 3))
        assert [e["thumbnail"] is None for e in service.examples("mug")["examples"]] == [True, True, False]


def test_the_routes_over_http(conv4_model, kit, tmp_path, start_server):
    store = tmp_path / "store.sqlite"
    server = start_server(conv4_model, store, "--token", kit.TOKEN)
    with server.client(kit.TOKEN) as c, server.client() as anonymous:
        files = kit.files(*uploads(kit, 1, 2, 3))
        assert c.post("/classes/my mug/examples", files=files).status_code == 201
        listed = c.get("/classes/my mug/examples").json()["examples"]
        assert len(listed) == 3 and listed[0]["thumbnail"].startswith("data:image/jpeg;base64,")
        assert anonymous.delete(f"/classes/my mug/examples/{listed[0]['id']}").status_code == 401
        r = c.delete(f"/classes/my mug/examples/{listed[0]['id']}")
        assert r.status_code == 200 and r.json()["examples"] == 2, r.text
        assert c.delete("/classes/my mug/examples/999999").json()["error"] == "unknown_example"
        r = c.post("/classes/my mug/rename", json={"new_name": "mug"})
        assert r.status_code == 200 and r.json()["name"] == "mug", r.text
        assert c.post("/classes/mug/rename", json={}).status_code == 422
        assert c.get("/classes/my mug/examples").status_code == 404
        assert {x["name"]: x["examples"] for x in c.get("/classes").json()["classes"]}["mug"] == 2
        memory = c.get("/classes/mug").json()
        assert anonymous.post("/calibrate").status_code == 401
        calibrated = c.post("/calibrate", params={"false_accept": 0.2})
        assert calibrated.status_code == 200 and calibrated.json()["method"] == "leave-one-out", calibrated.text
        assert c.post("/calibrate", params={"false_accept": 1.5}).status_code == 422
        assert c.get("/health").json()["unknown_threshold"] == calibrated.json()["unknown_threshold"]
    server.stop()
    server = start_server(conv4_model, store)
    with server.client() as c:  # durable across a restart
        assert c.get("/classes/mug").json()["examples"] == memory["examples"] == 2
        assert [e["id"] for e in c.get("/classes/mug/examples").json()["examples"]] == [x["id"] for x in listed[1:]]
        assert c.get("/health").json()["unknown_threshold"] == calibrated.json()["unknown_threshold"]


def test_the_examples_command(conv4_model, kit, tmp_path):
    from click.testing import CliRunner

    from imprinting.cli import main

    store = tmp_path / "store.sqlite"
    with Service.open(conv4_model, store) as service:
        service.teach("mug", uploads(kit, 1, 2, 3))
        ids = [e["id"] for e in service.examples("mug")["examples"]]

    def run(*args):
        return CliRunner().invoke(main, ["examples", *map(str, args)], catch_exceptions=False)

    r = run("list", conv4_model, "mug", "--store", store)
    assert r.exit_code == 0 and r.output.splitlines()[-1] == "mug: 3 examples", r.output
    r = run("remove", conv4_model, "mug", ids[0], "--store", store)
    assert r.exit_code == 0 and "mug now has 2 examples" in r.output
    r = run("rename", conv4_model, "mug", "cup", "--store", store)
    assert r.exit_code == 0 and "renamed mug to cup (2 examples)" in r.output
    r = CliRunner().invoke(main, ["examples", "remove", str(conv4_model), "cup", "12345", "--store", str(store)])
    assert r.exit_code != 0 and r.output.strip() == "Error: class 'cup' has no example 12345"
    rows = kit.read_store(store)["classes"]
    assert list(rows) == ["cup"] and rows["cup"]["ids"] == ids[1:]
    want = batch_imprint(rows["cup"]["embeddings"], rows["cup"]["embeddings"].shape[1])
    np.testing.assert_array_equal(rows["cup"]["sum"], want[1])


def test_calibrate_from_the_examples_taught_here_and_after_a_restart(conv4_model, kit, tmp_path):
    from imprinting import checkpoint
    from imprinting.calibration import calibrate_table

    store = tmp_path / "store.sqlite"
    with Service.open(conv4_model, store) as service:
        raises(409, "no_examples", service.calibrate)
        service.teach("red", uploads(kit, 1, 2, 3))
        service.teach("green", uploads(kit, 4, 5, 6, color=(40, 200, 40)))
        body = service.calibrate(0.1)
        rows = kit.read_store(store)["classes"]
        table = checkpoint.load(conv4_model).classes.copy()  # the model file's classes, then the store's
        for name in ("red", "green"):
            table.add(name, rows[name]["embeddings"])
        labels = ["red"] * 3 + ["green"] * 3
        want = calibrate_table(table, np.concatenate([rows["red"]["embeddings"], rows["green"]["embeddings"]]),
                               labels, "leave-one-out", 0.1)
        assert body["scale"] == pytest.approx(want.scale, rel=1e-6) and body["scored"] == 6
        assert body["unknown_threshold"] == pytest.approx(want.unknown_threshold, abs=1e-6)
        assert float(service.model.classes.scale[0]) == pytest.approx(want.scale, rel=1e-6)
        assert service.health()["unknown_threshold"] == body["unknown_threshold"]
    with Service.open(conv4_model, store) as again:
        assert float(again.model.classes.scale[0]) == pytest.approx(want.scale, rel=1e-6)
        assert again.model.unknown_threshold == body["unknown_threshold"]
    with Service.open(conv4_model, store, unknown_threshold=0.25) as chosen:  # the caller's threshold wins
        assert chosen.model.unknown_threshold == 0.25
