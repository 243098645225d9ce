"""The edges of the edit routes (issue 23): example ids outside 1..2**63-1, a rename to the same
name, confusable class names, an over-long upload name, a store that cannot be read, and a
threshold chosen at start against ``POST /calibrate``. Every answer is a JSON 4xx or 503 with
the ``{"error", "detail"}`` body, never a 500."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from imprinting.serve.app import create_app
from imprinting.serve.integrity import StoreError
from imprinting.serve.service import Service

MAX_ID = 2**63 - 1


@pytest.fixture(scope="module")
def client(conv4_model, tmp_path_factory, kit):
    app = create_app(conv4_model, tmp_path_factory.mktemp("edits") / "store.sqlite")
    with TestClient(app) as c:
        r = c.post("/classes/rose/examples", files=kit.files(("a.png", kit.image_bytes(seed=1)),
                                                             ("b.png", kit.image_bytes(seed=2))))
        assert r.status_code == 201
        c.app_ = app
        yield c


def error(r, status: int, code: str) -> str:
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert set(r.json()) == {"error", "detail"}
    return r.json()["detail"]


@pytest.mark.parametrize("example_id", ["9223372036854775808", str(10**30), "-1", "0", "x", "1.5", "١"])
def test_example_ids_outside_the_range_are_a_422_naming_the_id(client, example_id):
    detail = error(client.delete(f"/classes/rose/examples/{example_id}"), 422, "invalid_example_id")
    assert example_id in detail and str(MAX_ID) in detail
    assert [c["examples"] for c in client.get("/classes").json()["classes"] if c["name"] == "rose"] == [2]


def test_the_largest_id_is_looked_up_and_not_found(client):
    error(client.delete(f"/classes/rose/examples/{MAX_ID}"), 404, "unknown_example")


def test_renaming_a_class_to_its_own_name_changes_nothing(client):
    before = client.get("/classes").json()
    r = client.post("/classes/rose/rename", json={"new_name": "rose"})
    assert r.status_code == 200 and r.json()["name"] == "rose" and r.json()["examples"] == 2
    assert client.get("/classes").json() == before


def test_confusable_names_are_refused_naming_the_existing_class(client, kit):
    for name in ("rоse", "Rose", "ROSE"):  # a Cyrillic о; case only
        detail = error(client.post(f"/classes/{name}/examples", files=kit.files(("c.png", kit.image_bytes(seed=3)))),
                       409, "confusable_name")
        assert "'rose'" in detail
    assert client.post("/classes/tulip/examples", files=kit.files(("d.png", kit.image_bytes(seed=4)))).status_code == 201
    assert "'rose'" in error(client.post("/classes/tulip/rename", json={"new_name": "rоse"}), 409, "confusable_name")
    r = client.post("/classes/tulip/rename", json={"new_name": "Tulip"})  # its own name in another case: allowed
    assert r.status_code == 200 and r.json()["name"] == "Tulip"
    assert client.delete("/classes/Tulip").status_code == 200
    names = [c["name"] for c in client.get("/classes").json()["classes"]]
    assert "rоse" not in names and "Rose" not in names and "Tulip" not in names


def test_a_5000_character_file_name_is_a_documented_400(client, kit):
    r = client.post("/predict", files=kit.files(("x" * 5000 + ".png", kit.image_bytes(seed=5))))
    detail = error(r, 400, "invalid_multipart")
    assert "file name" in detail and "4,224" in detail
    documented = client.app_.openapi()["paths"]["/predict"]["post"]["responses"]
    assert "400" in documented and "4,224" in documented["400"]["description"]
    r = client.post("/predict", files=kit.files(("x" * 4000 + ".png", kit.image_bytes(seed=5))))
    assert r.status_code == 200 and r.json()["predictions"][0]["file"] == ("x" * 4000 + ".png")[:100]


def test_a_store_that_cannot_be_read_is_a_503_with_retry_after_everywhere(client, kit, monkeypatch):
    store = client.app_.state.service.store

    def fail(*args, **kwargs):
        raise StoreError("disk I/O error")

    for method in ("example_records", "examples", "labelled_embeddings", "remove_example", "rename_class",
                   "remove_class", "add_examples"):
        monkeypatch.setattr(store, method, fail)
    calls = {
        "list examples": lambda: client.get("/classes/rose/examples"),
        "one class": lambda: client.get("/classes/rose"),
        "calibrate": lambda: client.post("/calibrate"),
        "remove example": lambda: client.delete("/classes/rose/examples/1"),
        "rename": lambda: client.post("/classes/rose/rename", json={"new_name": "moved"}),
        "delete": lambda: client.delete("/classes/rose"),
        "teach": lambda: client.post("/classes/rose/examples", files=kit.files(("e.png", kit.image_bytes(seed=6)))),
    }
    for what, call in calls.items():
        r = call()
        assert "disk I/O error" in error(r, 503, "store_error"), what
        assert int(r.headers["Retry-After"]) > 0, what
    r = client.post("/predict", files=kit.files(("p.png", kit.image_bytes(seed=7))))  # reads memory only
    assert r.status_code == 200
    assert [c["examples"] for c in client.get("/classes").json()["classes"] if c["name"] == "rose"] == [2]


def test_a_threshold_chosen_at_start_wins_over_calibrate(conv4_model, tmp_path, kit):
    store = tmp_path / "store.sqlite"
    with Service.open(conv4_model, store, unknown_threshold=0.3) as service:
        for i, name in enumerate(("red", "green", "blue")):
            service.teach(name, [(f"{i}{j}.png", kit.image_bytes((200 * (i == 0), 200 * (i == 1), 200 * (i == 2)),
                                                                   seed=10 * i + j)) for j in range(3)])
        body = service.calibrate(0.05)
        assert body["unknown_threshold_applied"] is False and body["unknown_threshold_in_force"] == 0.3
        assert service.model.unknown_threshold == 0.3 and body["unknown_threshold"] != 0.3
        calibrated = body["unknown_threshold"]
    with Service.open(conv4_model, store, unknown_threshold=0.3) as service:  # a restart keeps the choice
        assert service.model.unknown_threshold == 0.3
    with Service.open(conv4_model, store) as service:  # none chosen: the calibration's threshold
        assert service.model.unknown_threshold == pytest.approx(calibrated)
        body = service.calibrate(0.05)
        assert body["unknown_threshold_applied"] is True and body["unknown_threshold_in_force"] == body["unknown_threshold"]
