"""The store across restarts and crashes: a real SIGKILL of the server during uploads."""

from __future__ import annotations

import random
import threading
import time

import httpx
import numpy as np
import pytest


def predict_cosines(client, kit, data) -> dict:
    p = client.post("/predict", params={"k": 100}, files=kit.files(("p.png", data))).json()["predictions"][0]
    return {t["class"]: t["cosine"] for t in p["top"]}


def check_store_is_whole(kit, store_path) -> dict:
    """Readable, and every class's count, examples and sum agree with each other."""
    store = kit.read_store(store_path)
    assert store["problems"] == []
    for name, c in store["classes"].items():
        assert c["count"] == len(c["ids"]) > 0, name
        e = c["embeddings"].astype(np.float64)
        np.testing.assert_allclose(c["sum"], (e / np.linalg.norm(e, axis=1, keepdims=True)).sum(0), atol=1e-6)
    return store


def test_restart_after_kill_9_during_uploads(conv4_model, tmp_path, start_server, kit):
    """Teach a few classes, then upload from 4 clients at once and SIGKILL the server
    mid-stream. After a restart every class is back with the same weights, every
    acknowledged example is there, and the store is readable with counts, examples and sums
    that agree. (The graceful SIGTERM stop is what ends every other test server.)"""
    store = tmp_path / "store.sqlite"
    server = start_server(conv4_model, store)
    probe = kit.image_bytes((120, 120, 30), seed=77)
    with server.client() as c:
        for i, color in enumerate([(250, 0, 0), (0, 250, 0), (0, 0, 250)]):
            imgs = [(f"{j}.png", kit.image_bytes(color, seed=10 * i + j)) for j in range(i + 1)]
            assert c.post(f"/classes/kept {i}/examples", files=kit.files(*imgs)).status_code == 201
        assert c.post("/classes/kept 0/examples", files=kit.files(("x.png", kit.image_bytes(seed=5)))).status_code == 200
        assert c.post("/classes/kept 2/examples", files=kit.files(("x.png", kit.image_bytes(seed=6)))).status_code == 200
        assert c.delete("/classes/kept 1").status_code == 200
        kept_before = [x for x in c.get("/classes").json()["classes"]]
        before = predict_cosines(c, kit, probe)

    acked = upload_until_killed(server, kit)
    assert sum(len(v) for v in acked.values()) >= 12
    store_after = check_store_is_whole(kit, store)  # readable and not half-written
    for name, ids in acked.items():
        assert set(ids) <= set(store_after["classes"][name]["ids"]), name

    server = start_server(conv4_model, store)
    with server.client() as c:
        listed = c.get("/classes").json()["classes"]
        assert listed[: len(kept_before)] == kept_before  # base classes, then "kept 0", "kept 2"
        assert {x["name"]: x["examples"] for x in listed if x["source"] == "store"} == {
            n: v["count"] for n, v in store_after["classes"].items()
        }
        for name, ids in acked.items():
            stored = [e["id"] for e in c.get(f"/classes/{name}").json()["stored_examples"]]
            assert set(ids) <= set(stored), name
        after = predict_cosines(c, kit, probe)
        for name in before:  # restored from the stored sums: the same weights
            assert after[name] == pytest.approx(before[name], abs=1e-6), name
        # and the restarted service takes more uploads
        name = next(iter(acked))
        r = c.post(f"/classes/{name}/examples", files=kit.files(("z.png", kit.image_bytes(seed=1))))
        assert r.status_code == 200 and r.json()["examples"] == store_after["classes"][name]["count"] + 1
    assert "kept 1" not in store_after["classes"]
    assert {n: store_after["classes"][n]["count"] for n in ("kept 0", "kept 2")} == {"kept 0": 2, "kept 2": 4}


def upload_until_killed(server, kit) -> dict[str, list[int]]:
    """4 clients upload 1-3 images at a time until the server is SIGKILLed under them.
    Returns the ids of the acknowledged examples, by class."""
    acked: dict[str, list[int]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    failures: list = []

    def uploader(w: int):
        rng = random.Random(w)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                name = f"crash {w} {i % 3}"
                imgs = [(f"{w}-{i}-{j}.png", kit.image_bytes(seed=1000 * w + 10 * i + j)) for j in range(rng.randint(1, 3))]
                try:
                    r = c.post(f"/classes/{name}/examples", files=kit.files(*imgs))
                except httpx.TransportError:
                    return  # the server died with this upload in flight: not acknowledged
                if r.status_code not in (200, 201):
                    failures.append(r.text)
                    return
                with lock:
                    acked.setdefault(name, []).extend(r.json()["example_ids"])
                i += 1

    threads = [threading.Thread(target=uploader, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    def count() -> int:
        with lock:
            return sum(map(len, acked.values()))

    deadline = time.monotonic() + 60
    while count() < 12 and time.monotonic() < deadline and not failures:
        time.sleep(0.05)
    time.sleep(random.uniform(0.1, 0.6))
    server.kill()  # SIGKILL with uploads in flight
    stop.set()
    for t in threads:
        t.join(30)
    assert not failures
    return acked
