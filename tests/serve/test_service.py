"""The ``Service`` driven directly, without HTTP: teach, extend, predict, delete, a failed
store write rolled back, and a restart. Expectations are computed here with numpy from the
embeddings of a second copy of the model.

The in-memory sum of a class is read with ``Service._state``: the one accessor of the
model's class state, which the service itself uses for the store and for rollbacks. The
expected sums are computed from the float32 embeddings the store keeps for each example (the
very values that were summed; embedding the same images again in another batch can differ in
the last bits), and those embeddings are checked against the test's own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from imprinting.data.images import MAX_PIXELS
from imprinting.engines import best_batch
from imprinting.serve.service import Service
from imprinting.serve.store import StoreError
from imprinting.serve.validation import ApiError


@pytest.fixture
def service(conv4_model, tmp_path):
    with Service.open(conv4_model, tmp_path / "store.sqlite", max_images=4) as s:
        yield s


def uploads(kit, *seeds, color=(200, 40, 40)) -> list[tuple[str, bytes]]:
    return [(f"{seed}.png", kit.image_bytes(color, seed=seed)) for seed in seeds]


def embeddings(model, kit, items) -> np.ndarray:
    """float64 embeddings of uploads, from the test's own copy of the model."""
    return model.embed_images([kit.decode(data) for _, data in items]).numpy().astype(np.float64)


def expected_sum(e: np.ndarray) -> np.ndarray:
    """The imprinting sum, by hand: the sum of the L2-normalized embeddings."""
    return (e / np.linalg.norm(e, axis=1, keepdims=True)).sum(axis=0)


def stored_embeddings(kit, store, name: str) -> np.ndarray:
    """The float32 embeddings the store holds for class ``name``, as float64."""
    return kit.read_store(store)["classes"][name]["embeddings"].astype(np.float64)


def raises(status: int, error: str, call, *args) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)
    assert (info.value.status, info.value.error) == (status, error), info.value.detail
    return info.value


def test_health_and_the_model_files_classes(service, conv4):
    health = service.health()
    load, queue = health.pop("load"), health.pop("queue")
    assert health == {
        "status": "ok", "ready": True, "store": {"state": "ok"}, "calibration": {"calibrated": False},
        "classes": 3, "backbone": "conv4",
        "embedding_dim": conv4.embedder.dim,
        "image_size": conv4.preprocess.image_size, "unknown_threshold": None,
        "limits": {"max_images": 4, "max_pixels": MAX_PIXELS, "max_queue_seconds": 30.0, "memory_limit_mb": None,
                   "max_decode_mb": 768, "max_batch": best_batch(conv4.frozen_engine()), "max_batch_delay_ms": 0.0},
    }
    assert load["images_in_flight"] == 0 and load["decode_mb"] == 0 and load["resident_mb"] > 0
    # the warm-up's first measure of the rate; nothing queued, no batch served yet
    assert queue["depth"] == queue["requests"] == queue["estimated_wait_s"] == queue["batches"] == 0
    assert queue["throughput_images_per_s"] > 0 and queue["throughput_measured"] is False
    assert service.classes() == {"classes": [
        {"name": "base_a", "kind": "base", "examples": 0, "source": "model"},
        {"name": "base_b", "kind": "base", "examples": 0, "source": "model"},
        {"name": "file_class", "kind": "imprinted", "examples": 1, "source": "model"},
    ]}
    assert service.get_class("file_class") == {
        "name": "file_class", "kind": "imprinted", "examples": 1, "source": "model", "stored_examples": []
    }


def test_teach_then_extend(service, conv4, kit, tmp_path):
    first, more = uploads(kit, 1, 2, 3), uploads(kit, 4, 5)
    body = service.teach("red", first)
    assert {k: v for k, v in body.items() if k not in ("seconds", "embed_seconds")} == {
        "name": "red", "kind": "imprinted", "examples": 3, "source": "store",
        "created": True, "added": 3, "example_ids": [1, 2, 3],
    }
    store = tmp_path / "store.sqlite"
    np.testing.assert_allclose(service._state("red")[0], expected_sum(stored_embeddings(kit, store, "red")),
                               rtol=0, atol=1e-12)

    body = service.teach("red", more)
    assert (body["created"], body["examples"], body["added"], body["example_ids"]) == (False, 5, 2, [4, 5])
    memory_sum, count = service._state("red")
    stored = kit.read_store(store)["classes"]["red"]
    assert count == stored["count"] == 5 and np.array_equal(stored["sum"], memory_sum)  # the store has the same bits
    np.testing.assert_allclose(memory_sum, expected_sum(stored["embeddings"].astype(np.float64)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stored["embeddings"], embeddings(conv4, kit, first + more), rtol=0, atol=1e-5)

    detail = service.get_class("red")
    assert [x["filename"] for x in detail["stored_examples"]] == ["1.png", "2.png", "3.png", "4.png", "5.png"]
    assert [x["id"] for x in detail["stored_examples"]] == [1, 2, 3, 4, 5]


def test_predict(service, conv4, kit):
    red, blue = uploads(kit, 1), uploads(kit, 2, 3, color=(30, 30, 220))
    service.teach("red", red)
    service.teach("blue", blue)
    probe = [("some/dir/probe.png", kit.image_bytes((150, 40, 120), seed=9)), (None, red[0][1])]
    body = service.predict(probe, k=5)
    assert body["unknown_threshold"] is None
    assert [p["file"] for p in body["predictions"]] == ["probe.png", "image 2"]

    e_probe = embeddings(conv4, kit, probe)
    scale = float(conv4.classifier.scale.detach())
    for i, p in enumerate(body["predictions"]):
        assert len(p["top"]) == 5 and p["unknown"] is False  # no threshold: never unknown
        cos = {t["class"]: t["cosine"] for t in p["top"]}
        for name, items in (("red", red), ("blue", blue)):
            s = expected_sum(embeddings(conv4, kit, items))
            assert cos[name] == pytest.approx(float(e_probe[i] @ s / np.linalg.norm(s)), abs=1e-5)
        # the probabilities are the softmax of scale * cosine over all five classes
        z = sum(math.exp(scale * c) for c in cos.values())
        for t in p["top"]:
            assert t["probability"] == pytest.approx(math.exp(scale * t["cosine"]) / z, abs=1e-6)
    assert body["predictions"][1]["top"][0]["class"] == "red"  # red's own example
    assert body["predictions"][1]["top"][0]["cosine"] == pytest.approx(1.0, abs=1e-6)

    best = body["predictions"][0]["top"][0]["cosine"]
    assert service.predict(probe[:1], 1, best + 1e-3)["predictions"][0]["unknown"] is True
    below = service.predict(probe[:1], 1, best - 1e-3)
    assert below["predictions"][0]["unknown"] is False and below["unknown_threshold"] == best - 1e-3
    assert len(below["predictions"][0]["top"]) == 1


def test_delete(service, kit, tmp_path):
    service.teach("gone", uploads(kit, 1))
    assert service.delete("gone") == {"deleted": "gone", "classes": 3}
    raises(404, "unknown_class", service.get_class, "gone")
    raises(404, "unknown_class", service.delete, "gone")
    assert "gone" not in kit.read_store(tmp_path / "store.sqlite")["classes"]
    assert service.teach("gone", uploads(kit, 2))["created"] is True  # taught again from scratch


def test_client_errors(service, kit):
    raises(422, "invalid_class_name", service.teach, "a/b", uploads(kit, 1))
    raises(409, "read_only_class", service.teach, "file_class", uploads(kit, 1))
    raises(409, "protected_class", service.delete, "base_a")
    raises(409, "protected_class", service.delete, "file_class")
    raises(422, "no_images", service.teach, "x", [])
    assert "5 images" in raises(413, "too_many_images", service.predict, uploads(kit, 1, 2, 3, 4, 5)).detail
    raises(422, "empty_image", service.teach, "x", uploads(kit, 1) + [("e.png", b"")])
    raises(422, "not_an_image", service.predict, [("t.png", b"text, not a picture")])
    assert [c["name"] for c in service.classes()["classes"]] == ["base_a", "base_b", "file_class"]


def test_a_failed_store_write_is_rolled_back(service, conv4, kit, tmp_path, monkeypatch):
    """The store refuses the upload: the class keeps its examples and its exact sum (or is
    not created), and the next upload commits, so memory and store still agree."""
    kept = uploads(kit, 1, 2)
    service.teach("kept", kept)
    service.teach("after", uploads(kit, 5))
    order = [c["name"] for c in service.classes()["classes"]]
    before_sum, before_count = service._state("kept")
    before = service.predict(uploads(kit, 7), k=5)["predictions"]
    real_add = service.store.add_examples

    for exc, status in [(StoreError("disk I/O error"), 503), (StoreError("full"), 503),
                        (RuntimeError("bug"), None)]:
        def fail(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(service.store, "add_examples", fail)
        for name in ("kept", "new one"):
            if status is None:
                with pytest.raises(RuntimeError, match="bug"):
                    service.teach(name, uploads(kit, 3))
            else:
                error = raises(status, "store_error", service.teach, name, uploads(kit, 3))
                assert "not saved" in error.detail and str(exc) in error.detail
        memory_sum, count = service._state("kept")
        assert count == before_count == 2 and service.get_class("kept")["examples"] == 2
        assert np.array_equal(memory_sum, before_sum)
        np.testing.assert_allclose(memory_sum, expected_sum(stored_embeddings(kit, tmp_path / "store.sqlite", "kept")),
                                   rtol=0, atol=1e-12)
        raises(404, "unknown_class", service.get_class, "new one")
        assert [c["name"] for c in service.classes()["classes"]] == order  # the class keeps its place
        after = service.predict(uploads(kit, 7), k=5)["predictions"]
        assert sorted(after[0]["top"], key=lambda t: t["class"]) == sorted(before[0]["top"], key=lambda t: t["class"])

    monkeypatch.setattr(service.store, "add_examples", real_add)
    assert service.teach("kept", uploads(kit, 3))["examples"] == 3
    stored = kit.read_store(tmp_path / "store.sqlite")["classes"]["kept"]
    assert stored["count"] == 3 and np.array_equal(stored["sum"], service._state("kept")[0])


def test_restart_restores_identical_sums(conv4_model, conv4, kit, tmp_path):
    store = tmp_path / "store.sqlite"
    one, two, extra = uploads(kit, 1, 2), uploads(kit, 3, color=(20, 200, 20)), uploads(kit, 4)
    with Service.open(conv4_model, store) as s:
        s.teach("one", one)
        s.teach("two", two)
        s.teach("one", extra)
        classes = s.classes()
        sums = {n: s._state(n) for n in ("one", "two")}
        probe = s.predict(uploads(kit, 9), k=5)
    with Service.open(conv4_model, store) as s:
        assert s.classes() == classes
        for name, (old_sum, old_count) in sums.items():
            new_sum, new_count = s._state(name)
            assert new_count == old_count and np.array_equal(new_sum, old_sum), name
        np.testing.assert_allclose(sums["one"][0], expected_sum(stored_embeddings(kit, store, "one")), rtol=0, atol=1e-12)
        np.testing.assert_allclose(stored_embeddings(kit, store, "one"), embeddings(conv4, kit, one + extra), atol=1e-5)
        assert s.predict(uploads(kit, 9), k=5)["predictions"] == probe["predictions"]
