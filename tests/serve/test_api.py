"""The service's endpoints over real HTTP, against expectations computed in the test."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def client(shared_server, kit):
    with shared_server.client(kit.TOKEN) as c:
        yield c


def embed(model, kit, datas):
    return model.embed_images([kit.decode(d) for d in datas])


def cosine_of(prediction: dict, name: str) -> float:
    return next(t["cosine"] for t in prediction["top"] if t["class"] == name)


def test_health_and_classes_of_the_model_file(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["backbone"] == "conv4"
    assert health["writes_need_token"] is True and health["unknown_threshold"] == 0.5
    classes = {c["name"]: c for c in client.get("/classes").json()["classes"]}
    assert classes["base_a"] == {"name": "base_a", "kind": "base", "examples": 0, "source": "model"}
    assert classes["file_class"] == {"name": "file_class", "kind": "imprinted", "examples": 1, "source": "model"}


def test_enrol_then_add_examples_gives_the_normalized_mean(client, conv4, kit, shared_server):
    first = [kit.image_bytes((200, 40, 40), seed=i) for i in range(3)]
    more = [kit.image_bytes((180, 60, 40), seed=10 + i) for i in range(2)]
    probe = kit.image_bytes((190, 50, 40), seed=50)

    r = client.post("/classes/api red/examples", files=kit.files(*[(f"{i}.png", d) for i, d in enumerate(first)]))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "api red" and body["kind"] == "imprinted" and body["source"] == "store"
    assert body["created"] is True and body["examples"] == 3 and body["added"] == 3
    assert 0 < body["embed_seconds"] <= body["seconds"]

    p = client.post("/predict", params={"k": 10}, files=kit.files(("probe.png", probe))).json()["predictions"][0]
    emb_probe = embed(conv4, kit, [probe])[0].double()
    expected = float(emb_probe @ kit.expected_template(embed(conv4, kit, first)))
    assert cosine_of(p, "api red") == pytest.approx(expected, abs=1e-5)

    r = client.post("/classes/api red/examples", files=kit.files(*[(f"m{i}.jpg", d) for i, d in enumerate(more)]))
    assert r.status_code == 200, r.text
    assert r.json()["created"] is False and r.json()["examples"] == 5 and r.json()["added"] == 2

    all_emb = torch.cat([embed(conv4, kit, first), embed(conv4, kit, more)])
    p = client.post("/predict", params={"k": 10}, files=kit.files(("probe.png", probe))).json()["predictions"][0]
    assert cosine_of(p, "api red") == pytest.approx(float(emb_probe @ kit.expected_template(all_emb)), abs=1e-5)

    # the store holds each example's embedding and the float64 sum of the normalized ones
    stored = kit.read_store(shared_server.store)["classes"]["api red"]
    assert stored["count"] == 5 and len(stored["ids"]) == 5
    np.testing.assert_allclose(stored["embeddings"], all_emb.numpy(), atol=1e-5)
    e = all_emb.double()
    np.testing.assert_allclose(stored["sum"], (e / e.norm(dim=1, keepdim=True)).sum(0).numpy(), atol=1e-5)

    detail = client.get("/classes/api red").json()
    assert [x["id"] for x in detail["stored_examples"]] == stored["ids"]
    assert [x["filename"] for x in detail["stored_examples"]] == ["0.png", "1.png", "2.png", "m0.jpg", "m1.jpg"]


def test_predict_top_k_probabilities_and_unknown(client, conv4, kit):
    img = kit.image_bytes((30, 30, 220), seed=1)
    assert client.post("/classes/api blue/examples", files=kit.files(("b.png", img))).status_code == 201
    r = client.post("/predict", params={"k": 3}, files=kit.files(("a.png", img), ("b.png", img)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["unknown_threshold"] == 0.5 and len(body["predictions"]) == 2
    top = body["predictions"][0]["top"]
    assert len(top) == 3 and top[0]["class"] == "api blue"
    assert top[0]["cosine"] == pytest.approx(1.0, abs=1e-4)
    # the probabilities are the softmax of scale * cosine over every class, in decreasing order
    everything = client.post("/predict", params={"k": 100}, files=kit.files(("a.png", img))).json()
    every = everything["predictions"][0]["top"]
    assert len(every) == len(client.get("/classes").json()["classes"]) <= 100
    scale = float(conv4.classifier.scale.detach())
    z = sum(math.exp(scale * t["cosine"]) for t in every)
    for t in top:
        assert t["probability"] == pytest.approx(math.exp(scale * t["cosine"]) / z, abs=1e-6)
    assert [t["class"] for t in top] == [t["class"] for t in every[:3]]
    probs = [t["probability"] for t in every]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert body["predictions"][0]["unknown"] is False  # best cosine 1.0 >= 0.5 (the server's threshold)
    # the threshold can be overridden per request
    over = client.post("/predict", params={"unknown_threshold": 1.0}, files=kit.files(("n.png", kit.image_bytes((0, 250, 0), seed=7))))
    assert over.json()["predictions"][0]["unknown"] is True and over.json()["unknown_threshold"] == 1.0
    # ... both ways, around the probe's own best cosine (whatever the server's default)
    green = kit.image_bytes((0, 250, 0), seed=7)
    best = over.json()["predictions"][0]["top"][0]["cosine"]
    above = client.post("/predict", params={"unknown_threshold": (best + 1.0) / 2},  # thresholds stop at 1
                        files=kit.files(("n.png", green)))
    below = client.post("/predict", params={"unknown_threshold": best - 0.01}, files=kit.files(("n.png", green)))
    assert above.json()["predictions"][0]["unknown"] is True
    assert below.json()["predictions"][0]["unknown"] is False


def test_delete_an_imprinted_class(client, kit, shared_server):
    assert client.post("/classes/api gone/examples", files=kit.files(("g.png", kit.image_bytes(seed=3)))).status_code == 201
    r = client.delete("/classes/api gone")
    assert r.status_code == 200 and r.json()["deleted"] == "api gone"
    names = [c["name"] for c in client.get("/classes").json()["classes"]]
    assert "api gone" not in names
    store = kit.read_store(shared_server.store)
    assert "api gone" not in store["classes"] and store["problems"] == []  # its examples went with it
    assert client.get("/classes/api gone").status_code == 404
    # and it can be taught again from scratch
    r = client.post("/classes/api gone/examples", files=kit.files(("g.png", kit.image_bytes(seed=4))))
    assert r.status_code == 201 and r.json()["examples"] == 1


def test_eight_concurrent_writers(shared_server, conv4, kit):
    """8 clients at once: each teaches its own class and adds to one shared class."""
    rounds = 4
    results: list = []
    errors: list = []

    def writer(w: int):
        try:
            with shared_server.client(kit.TOKEN) as c:
                for r in range(rounds):
                    own = kit.files(*[(f"{w}-{r}-{j}.png", kit.image_bytes((30 * w, 100, 50), seed=100 * w + 10 * r + j)) for j in range(2)])
                    shared = kit.files((f"s{w}-{r}.png", kit.image_bytes((90, 90, 90), seed=1000 + 10 * w + r)))
                    results.append(c.post(f"/classes/writer {w}/examples", files=own))
                    results.append(c.post("/classes/writers shared/examples", files=shared))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 8 * rounds * 2
    assert [r.status_code for r in results] == [201 if r.json()["created"] else 200 for r in results]
    assert sum(r.json()["created"] for r in results) == 9  # each class created exactly once
    ids = [i for r in results for i in r.json()["example_ids"]]
    assert len(ids) == len(set(ids)) == 8 * rounds * 3

    counts = {c["name"]: c["examples"] for c in shared_server.client().get("/classes").json()["classes"]}
    assert all(counts[f"writer {w}"] == 2 * rounds for w in range(8))
    assert counts["writers shared"] == 8 * rounds
    store = kit.read_store(shared_server.store)
    assert store["problems"] == []
    shared = store["classes"]["writers shared"]
    assert shared["count"] == len(shared["ids"]) == 8 * rounds
    # the shared class's weight is the normalized mean of all 32 examples, whatever their order
    images = [kit.image_bytes((90, 90, 90), seed=1000 + 10 * w + r) for w in range(8) for r in range(rounds)]
    probe = embed(conv4, kit, [kit.image_bytes((90, 90, 90), seed=5)])[0].double()
    p = shared_server.client().post("/predict", params={"k": 100}, files=kit.files(("p.png", kit.image_bytes((90, 90, 90), seed=5))))
    expected = float(probe @ kit.expected_template(embed(conv4, kit, images)))
    assert cosine_of(p.json()["predictions"][0], "writers shared") == pytest.approx(expected, abs=1e-5)
