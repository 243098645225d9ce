"""The service's "not one of my classes" and prediction sets (issue 24): /calibrate's
false-reject mode, /predict?coverage= against the sets recomputed from the calibration scores,
the scores kept across a restart, stale after a class changes, and a kill -9 during /calibrate
leaving the old calibration or the new one, never a mix."""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from imprinting.calibration import calibrate_table
from imprinting.serve.app import create_app

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def teach_colours(post, kit, per_class: int = 7):
    for i, (name, colour) in enumerate(COLOURS.items()):
        items = [(f"{name}{s}.png", kit.image_bytes(colour, seed=40 * i + s)) for s in range(per_class)]
        assert post(f"/classes/{name}/examples", files=kit.files(*items)).status_code == 201


def test_sets_need_a_calibration_then_match_the_scores(conv4_model, tmp_path, kit):
    store = tmp_path / "store.sqlite"
    probe = kit.files(("p.png", kit.image_bytes((200, 60, 40), seed=3)), ("q.png", kit.image_bytes((90, 90, 90), seed=4)))
    app = create_app(conv4_model, store)
    with TestClient(app) as c:
        teach_colours(c.post, kit)
        r = c.post("/predict", params={"coverage": 0.9}, files=probe)
        assert (r.status_code, r.json()["error"]) == (409, "not_calibrated")
        assert c.get("/health").json()["calibration"] == {"calibrated": False}
        assert c.post("/calibrate", params={"false_reject": 0.05, "false_accept": 0.1}).status_code == 422

        body = c.post("/calibrate").json()  # the default: 5 % false reject, guaranteed
        assert body["target_false_reject"] == 0.05 and body["calibration_examples"] == 21
        assert body["unknown_threshold"] is not None and 0 <= body["false_accept"] <= 1
        service = app.state.service
        scores = service.model.conformal
        assert body["unknown_threshold"] == scores.known[int(0.05 * 22) - 1]  # floor(22 x 0.05) = 1: the smallest
        q = scores.nonconformity[int(np.ceil(22 * 0.9)) - 1]  # ceil(22 x 0.9) = 20: the 20th smallest of 21
        answer = c.post("/predict", params={"coverage": 0.9, "k": 6}, files=probe).json()
        assert answer["coverage"] == 0.9 and answer["calibration"] == {"calibrated": True, "follows": True, "examples": 21,
                                                                     "stale": False}
        for p in answer["predictions"]:  # k = 6: every class of the model, so the set is checkable here
            probs = {t["class"]: t["probability"] for t in p["top"]}
            assert len(probs) == 6
            assert p["set"] == sorted([n for n, pr in probs.items() if 1 - pr <= q], key=lambda n: -probs[n])
        before = answer["predictions"]

    with TestClient(create_app(conv4_model, store)) as c:  # a restart: the same scores, the same sets
        again = c.post("/predict", params={"coverage": 0.9, "k": 6}, files=probe).json()
        assert [p["set"] for p in again["predictions"]] == [p["set"] for p in before]
        purple = kit.files(*[(f"x{s}.png", kit.image_bytes((150, 20, 200), seed=s)) for s in range(2)])
        assert c.post("/classes/purple/examples", files=purple).status_code == 201
        # the scores followed the classes: what one batch computation over the store's examples
        # gives for the classes of now, at the scale in force (imprinting.calibration_set)
        service = c.app.state.service
        names, embeddings = service.store.labelled_embeddings()
        batch = calibrate_table(service.model.classes.copy(), embeddings, names, fit=False)
        followed = service.model.conformal
        assert followed.n == 23 and followed.classes == service.model.classes.names
        for field in ("known", "others", "nonconformity"):
            np.testing.assert_allclose(getattr(followed, field), getattr(batch.conformal, field), atol=1e-6)
        assert service.model.unknown_threshold == pytest.approx(batch.unknown_threshold, abs=1e-6)
        assert c.get("/health").json()["calibration"] == {"calibrated": True, "follows": True, "examples": 23,
                                                          "stale": False}
        assert c.delete("/classes/purple").status_code == 200  # and back: the scores of before
        np.testing.assert_allclose(service.model.conformal.known, scores.known, atol=1e-6)
        again = c.post("/predict", params={"coverage": 0.9, "k": 6}, files=probe).json()
        assert [p["set"] for p in again["predictions"]] == [p["set"] for p in before]


def saved_calibration(store) -> str | None:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'setting:calibration'").fetchone()
        return row[0] if row else None
    finally:
        db.close()


@pytest.mark.slow
def test_kill_9_during_calibrate_leaves_the_old_or_the_new_calibration(conv4_model, start_server, tmp_path, kit):
    """Each trial calibrates at one rate, then kills the server at a random moment of a
    calibration at another rate: what the store holds after is the first, or exactly what a
    calibration at the second rate writes (made again after the restart), whole."""
    store = tmp_path / "store.sqlite"
    server = start_server(conv4_model, store)
    with server.client() as c:
        teach_colours(c.post, kit)
    rng = random.Random(0)
    for trial in range(3):
        rate_old, rate_new = (0.2, 0.05) if trial % 2 == 0 else (0.05, 0.2)
        with server.client() as c:
            assert c.post("/calibrate", params={"false_reject": rate_old}).status_code == 200
        old = saved_calibration(store)

        def call():
            try:
                httpx.post(server.url + "/calibrate", params={"false_reject": rate_new}, timeout=30)
            except httpx.TransportError:
                pass  # killed under it

        t = threading.Thread(target=call)
        t.start()
        time.sleep(rng.uniform(0.0, 0.3))
        server.kill()
        t.join(30)
        got = saved_calibration(store)
        assert json.loads(got)["target_false_reject"] in (rate_old, rate_new)  # whole, never torn
        server = start_server(conv4_model, store)
        with server.client() as c:
            assert c.post("/calibrate", params={"false_reject": rate_new}).status_code == 200
        new = saved_calibration(store)
        assert old != new and got in (old, new), (trial, got[:200])


def test_the_examples_listing_marks_photos_taught_to_the_wrong_class(conv4_model, tmp_path, kit):
    """A blue photo taught as red is marked with the class it looks like (its class's other
    photos say it is not red: imprinting.suspects); the red ones are not."""
    with TestClient(create_app(conv4_model, tmp_path / "store.sqlite")) as c:
        teach_colours(c.post, kit, per_class=5)
        wrong = kit.files(("blue-in-red.png", kit.image_bytes(COLOURS["blue"], seed=77)))
        assert c.post("/classes/red/examples", files=wrong).status_code == 200
        # at the model's scale (10: a random conv4's cosines are all near 1, every class about as
        # probable) nothing is sure enough; calibrated, the scale makes the leave-one-out sharp
        assert all(e["looks_like"] is None for e in c.get("/classes/red/examples").json()["examples"])
        assert c.post("/calibrate").status_code == 200
        listed = c.get("/classes/red/examples").json()["examples"]
        marks = {e["filename"]: e["looks_like"] for e in listed}
        assert marks["blue-in-red.png"] is not None and marks["blue-in-red.png"]["class"] == "blue", marks
        assert 0.5 < marks["blue-in-red.png"]["probability"] <= 1
        assert [f for f, m in marks.items() if m is not None] == ["blue-in-red.png"]
        assert all(e["looks_like"] is None for e in c.get("/classes/blue/examples").json()["examples"])


def test_a_calibration_with_nothing_to_score_clears_the_old_sets(conv4_model, tmp_path, kit):
    """Calibrated, then down to one example a class: the next calibration scores nothing, and
    the service stops answering sets from the old scores (as a restart would)."""
    store = tmp_path / "store.sqlite"
    with TestClient(create_app(conv4_model, store)) as c:
        teach_colours(c.post, kit, per_class=3)
        assert c.post("/calibrate", params={"false_reject": 0.3}).json()["calibration_examples"] == 9
        for name in COLOURS:
            for e in c.get(f"/classes/{name}/examples").json()["examples"][1:]:
                assert c.delete(f"/classes/{name}/examples/{e['id']}").status_code == 200
        assert c.post("/calibrate").json()["calibration_examples"] == 0
        probe = kit.files(("p.png", kit.image_bytes(seed=5)))
        r = c.post("/predict", params={"coverage": 0.9}, files=probe)
        assert (r.status_code, r.json()["error"]) == (409, "not_calibrated")
        assert c.get("/health").json()["calibration"] == {"calibrated": False}
    with TestClient(create_app(conv4_model, store)) as c:  # the same after a restart
        assert c.get("/health").json()["calibration"] == {"calibrated": False}


def test_a_damaged_saved_calibration_is_a_clear_error_and_frees_the_store(conv4_model, tmp_path, kit):
    from imprinting.serve.contract import StoreError
    from imprinting.serve.service import Service

    store = tmp_path / "store.sqlite"
    with TestClient(create_app(conv4_model, store)) as c:
        teach_colours(c.post, kit, per_class=3)
    db = sqlite3.connect(store)
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('setting:calibration', '{\"scale\": \"x\"}')")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="saved calibration is damaged"):
        Service.open(conv4_model, store)
    db = sqlite3.connect(store)  # the store was closed: it opens again once repaired
    db.execute("DELETE FROM meta WHERE key = 'setting:calibration'")
    db.commit()
    db.close()
    with Service.open(conv4_model, store) as service:
        assert service.calibration_state() == {"calibrated": False}
        with pytest.raises(Exception) as info:
            service.predict([("p.png", kit.image_bytes(seed=1))], coverage=1.5)
        assert (info.value.status, info.value.error) == (422, "invalid_request")


def test_stale_means_other_classes_not_another_order():
    from imprinting.conformal import ConformalScores

    s = ConformalScores([0.5, 0.6], [0.1], [0.2, 0.3], classes=("b", "a"))
    assert not s.stale_for(["a", "b"]) and s.stale_for(["a", "b", "c"]) and s.stale_for(["a"])


def test_the_calibration_follows_example_removals_and_renames_and_old_stores_stay_stale(conv4_model, tmp_path, kit):
    """After removing an example and renaming a class, the scores are one batch computation's
    over the store's examples of now; a store calibrated before the examples were kept (its
    saved calibration without ``follows``) keeps its fixed scores, stale once a class changes."""
    store = tmp_path / "store.sqlite"
    with TestClient(create_app(conv4_model, store)) as c:
        teach_colours(c.post, kit)
        assert c.post("/calibrate", params={"false_reject": 0.2}).status_code == 200
        first = c.get("/classes/red/examples").json()["examples"][0]["id"]
        assert c.delete(f"/classes/red/examples/{first}").status_code == 200
        assert c.post("/classes/green/rename", json={"new_name": "lime"}).status_code == 200
        service = c.app.state.service
        names, embeddings = service.store.labelled_embeddings()
        batch = calibrate_table(service.model.classes.copy(), embeddings, names, fit=False, target_false_reject=0.2)
        assert sorted(set(service.model.conformal.classes)) == sorted(service.model.classes.names)
        np.testing.assert_allclose(service.model.conformal.known, batch.conformal.known, atol=1e-6)
        np.testing.assert_allclose(service.model.conformal.nonconformity, batch.conformal.nonconformity, atol=1e-6)
        assert service.model.unknown_threshold == pytest.approx(batch.unknown_threshold, abs=1e-6)
        assert c.get("/health").json()["unknown_threshold"] == pytest.approx(batch.unknown_threshold, abs=1e-6)

    saved = json.loads(saved_calibration(store))  # as a store calibrated by the release before
    del saved["follows"]
    db = sqlite3.connect(store)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'setting:calibration'", (json.dumps(saved),))
    db.close()
    with TestClient(create_app(conv4_model, store)) as c:
        # its scores are those of /calibrate's time (21 examples; "green" renamed since): stale
        assert c.get("/health").json()["calibration"] == {"calibrated": True, "follows": False, "examples": 21,
                                                          "stale": True}
        assert c.get("/health").json()["unknown_threshold"] == saved["unknown_threshold"]
        purple = kit.files(("x.png", kit.image_bytes((150, 20, 200))))
        assert c.post("/classes/purple/examples", files=purple).status_code == 201
        assert c.get("/health").json()["unknown_threshold"] == saved["unknown_threshold"]  # fixed, as before
        assert c.post("/calibrate", params={"false_reject": 0.2}).status_code == 200
        assert c.get("/health").json()["calibration"] == {"calibrated": True, "follows": True, "examples": 20,
                                                          "stale": False}  # 6 + 7 + 7; purple's one is not scored
