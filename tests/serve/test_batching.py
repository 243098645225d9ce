"""The service's requests through its one inference worker, with the real (tiny) conv4 model:
batched embeddings are each request's own, single photos are not held up behind a 16-photo
request, an engine error is a JSON 503 for that batch only, and a request whose client went
away is dropped from the queue (admission by the queue's estimated wait: test_hardening_load).

The model's forward is wrapped so that the test decides when each batch may run: the queue
behind a held batch is in a known state, and nothing here measures time.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from imprinting.engines import available_engines
from imprinting.serve.app import create_app
from imprinting.serve.service import Service


class Held:
    """The worker's forward, held before each batch until the test lets it go (``step``, or
    ``free`` for all from then on); the size of each batch is recorded."""

    def __init__(self, forward):
        self.forward, self.sizes = forward, []
        self.entered, self._go, self._free = threading.Semaphore(0), threading.Semaphore(0), threading.Event()

    def __call__(self, images):
        self.sizes.append(len(images))
        self.entered.release()
        if not self._free.is_set():
            assert self._go.acquire(timeout=60), "the test never let the batch go"
        return self.forward(images)

    def step(self):
        self._go.release()

    def free(self):
        self._free.set()
        self._go.release(1000)


def hold(service) -> Held:
    held = Held(service.batcher._forward)
    service.batcher._forward = held
    return held


def until(condition, what: str, seconds: float = 60):
    """Wait for ``condition()`` (a state the test brought about, not a duration)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.01)


def photos(kit, tag: int, n: int, color=(200, 40, 40)) -> list:
    return [(f"{tag}-{i}.png", kit.image_bytes(color, seed=100 * tag + i)) for i in range(n)]


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    return t, out


@pytest.mark.parametrize("engine", ["auto", "torch", "onnxruntime", "openvino"])
def test_batched_embeddings_are_each_requests_own(engine, conv4_model, conv4, tmp_path, kit, monkeypatch):
    """On every engine the library selects: three requests queued together run as one
    forward, and each gets the embeddings its own photos give alone (the test's copy of the
    model, on the same engine)."""
    if engine != "auto" and available_engines()[engine]:
        pytest.skip(available_engines()[engine])
    monkeypatch.setenv("IMPRINTING_ENGINE", engine)
    with Service.open(conv4_model, tmp_path / "store.sqlite", max_images=8, max_batch=16) as service:
        if engine != "auto":
            assert service.model.frozen_engine().name == engine
        held = hold(service)
        plug, _ = in_thread(service._read_and_embed, photos(kit, 0, 1))
        assert held.entered.acquire(timeout=60)  # the plug is in the forward; these queue behind it
        requests = {1: photos(kit, 1, 3), 2: photos(kit, 2, 1, (30, 30, 220)), 3: photos(kit, 3, 5, (40, 200, 40))}
        running = {tag: in_thread(service._read_and_embed, uploads) for tag, uploads in requests.items()}
        until(lambda: service.batcher.queued() == 9, "all three requests queued")
        held.free()
        for t, _ in [(plug, None), *running.values()]:
            t.join(60)
        assert held.sizes == [1, 9]  # one forward for the three requests
        for tag, uploads in requests.items():
            embeddings, _, names, images = running[tag][1][0]
            assert names == [name for name, _ in uploads] and len(images) == len(uploads)
            alone = conv4.embed_images([kit.decode(data) for _, data in uploads])
            np.testing.assert_allclose(embeddings.numpy(), alone.numpy(), rtol=0, atol=1e-5)


def test_the_worker_takes_the_engine_once_not_per_batch(conv4_model, conv4, tmp_path, kit, monkeypatch):
    """``Batcher.for_model`` resolves the model's engine when the service opens: its batches
    neither look the engine up again nor fingerprint the backbone's weights (``_state``,
    0.3 ms a batch on EfficientNet-Lite0) nor switch the model's mode, and give what
    ``embed_pixels`` checking all of that gives."""
    from imprinting import engines

    with Service.open(conv4_model, tmp_path / "store.sqlite", max_images=8) as service:
        looked = []
        original = engines._state
        monkeypatch.setattr(engines, "_state", lambda module: looked.append(module) or original(module))
        monkeypatch.setattr(type(service.model), "eval", lambda self: pytest.fail("the mode was switched"))
        for tag in range(3):
            embeddings, _, _, _ = service._read_and_embed(photos(kit, tag, 2))
            alone = conv4.embed_images([kit.decode(data) for _, data in photos(kit, tag, 2)])
            np.testing.assert_allclose(embeddings.numpy(), alone.numpy(), rtol=0, atol=1e-5)
        assert not [m for m in looked if m is service.model.embedder.backbone]


def test_the_worker_refuses_a_model_in_training_mode():
    """The engine taken once would run a model left in training mode as it is (batch
    statistics, running statistics overwritten): ``Batcher.for_model`` refuses it at once."""
    from imprinting.build import create_model
    from imprinting.serve.batcher import Batcher

    model = create_model("conv4", pretrained=False, dim=8, engine="torch")
    model.embedder.backbone.features[1].train()
    with pytest.raises(ValueError, match="eval mode"):
        Batcher.for_model(model, lambda upload, i: upload)


def test_single_photos_share_the_batch_of_a_16_photo_request(conv4_model, tmp_path, kit):
    """A 16-photo request queued first takes a chunk of the next batch; the three single
    photos queued after it are answered with that batch, while its other photos still wait."""
    with Service.open(conv4_model, tmp_path / "store.sqlite", max_images=16, max_batch=8) as service:
        service.teach("red", photos(kit, 90, 2))
        service.teach("blue", photos(kit, 91, 2, (30, 30, 220)))
        held = hold(service)
        plug, _ = in_thread(service.predict, photos(kit, 0, 1))
        assert held.entered.acquire(timeout=60)
        big = photos(kit, 1, 16)
        singles = [photos(kit, 2 + k, 1, (30, 30, 220)) for k in range(3)]
        big_thread, big_answer = in_thread(service.predict, big)
        until(lambda: service.batcher.queued() == 16, "the 16-photo request queued")
        single_threads = [in_thread(service.predict, s) for s in singles]
        until(lambda: service.batcher.queued() == 19, "the single photos queued behind it")
        held.step()  # the plug
        assert held.entered.acquire(timeout=60)  # the next batch: a chunk of the big request, and the singles
        held.step()
        assert held.entered.acquire(timeout=60)  # that batch is answered; the big request's next chunk is held
        for t, _ in single_threads:
            t.join(60)
        assert all(answer for _, answer in single_threads) and big_thread.is_alive()
        held.free()
        big_thread.join(60)
        plug.join(60)
        assert held.sizes == [1, 8, 8, 3]
        for uploads, answer in [(big, big_answer)] + [(s, a) for s, (_, a) in zip(singles, single_threads)]:
            alone = service.predict(uploads)  # the same photos, one request at a time
            for got, want in zip(answer[0]["predictions"], alone["predictions"]):
                assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
                np.testing.assert_allclose([t["cosine"] for t in got["top"]], [t["cosine"] for t in want["top"]],
                                           atol=1e-5)


def test_an_engine_error_is_a_json_503_and_the_next_request_succeeds(conv4_model, tmp_path, kit):
    app = create_app(conv4_model, tmp_path / "store.sqlite")
    with TestClient(app) as c:
        batcher = app.state.service.batcher
        real, calls = batcher._forward, []

        def failing_once(images):
            calls.append(len(images))
            if len(calls) == 1:
                raise RuntimeError("out of device memory")
            return real(images)

        batcher._forward = failing_once
        r = c.post("/classes/red/examples", files=kit.files(*photos(kit, 1, 2)))
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        body = r.json()
        assert body["error"] == "engine_error" and "out of device memory" in body["detail"]
        assert "red" not in {x["name"] for x in c.get("/classes").json()["classes"]}  # nothing taught
        assert c.post("/classes/red/examples", files=kit.files(*photos(kit, 1, 2))).status_code == 201
        assert c.post("/predict", files=kit.files(*photos(kit, 2, 1))).status_code == 200
        assert calls == [2, 2, 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live(app):
    """The app under uvicorn on a loopback port, in this process (so the test can hold its
    forward): a real socket that a client can close."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    until(lambda: server.started, "uvicorn started")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def test_a_request_whose_client_disconnects_is_dropped_from_the_queue(conv4_model, tmp_path, kit):
    app = create_app(conv4_model, tmp_path / "store.sqlite")
    service = app.state.service
    held = hold(service)
    with live(app) as url:
        plug, answer = in_thread(lambda: httpx.post(url + "/predict", files=kit.files(*photos(kit, 0, 1)), timeout=60))
        assert held.entered.acquire(timeout=60)
        # queued behind the held plug, this client gives up waiting and closes its connection
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/predict", files=kit.files(*photos(kit, 1, 3)), timeout=httpx.Timeout(60, read=1))
        until(lambda: service.admission.images == 1, "the server dropped the gone client's 3 images")
        assert service.batcher.queued() == 0
        held.free()
        plug.join(60)
        assert answer[0].status_code == 200
        r = httpx.post(url + "/predict", files=kit.files(*photos(kit, 2, 2)), timeout=60)
        assert r.status_code == 200, r.text
    assert held.sizes == [1, 2]  # the dropped request's images never reached the model


def test_the_old_admission_options_are_accepted_with_a_warning(conv4_model, tmp_path):
    """``--max-images-in-flight`` and ``--busy-wait`` (the slot-based admission before the queue
    bounded by time) still parse, so scripts that pass them keep working, and say they do nothing."""
    from click.testing import CliRunner

    from imprinting.cli import main

    bad_store = tmp_path / "store.sqlite"
    bad_store.write_bytes(b"not a database" * 100)  # refused at once: the server never starts
    result = CliRunner().invoke(main, ["serve", str(conv4_model), "--store", str(bad_store),
                                      "--max-images-in-flight", "8", "--busy-wait", "2"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "--max-images-in-flight no longer does anything" in result.output
    assert "--busy-wait no longer does anything" in result.output


def test_a_body_that_stalls_is_a_json_408_and_a_whole_one_is_answered(conv4_model, tmp_path, kit):
    """Guard's ``body_timeout``: a client that stops sending mid-body gets a 408 with the usual
    JSON body (the timer runs per chunk, while the body arrives); requests sent whole are
    answered as usual."""
    app = create_app(conv4_model, tmp_path / "store.sqlite", body_timeout=0.5)
    with live(app) as url:
        host, port = url.split("//")[1].split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 1000\r\n\r\n--b\r\n")  # then nothing more
            start = time.monotonic()
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b'"detail":"the request body stalled for 0.5 s"' in answer
        assert 0.4 < time.monotonic() - start < 10
        r = httpx.post(url + "/classes/c/examples", files=kit.files(*photos(kit, 1, 2)), timeout=60)
        assert r.status_code == 201, r.text
        assert httpx.post(url + "/predict", files=kit.files(*photos(kit, 2, 1)), timeout=60).status_code == 200
