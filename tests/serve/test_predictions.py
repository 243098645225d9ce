"""Where ``/predict``'s answer is computed (``serve.predictions``): on the event loop only when
it is sure to be quick, else in a thread, so the loop never waits behind the classes' lock, a
large product, or calibration scores being computed again. The answers are the same either way."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from imprinting.serve import predictions
from imprinting.serve.service import Service


@pytest.fixture
def service(conv4_model, tmp_path, kit):
    with Service.open(conv4_model, tmp_path / "store.sqlite", max_images=4) as service:
        service.teach("cats", [(f"c{i}.png", kit.image_bytes((200, 40, 40), seed=i)) for i in range(3)])
        yield service


def where_answered(service, monkeypatch, uploads) -> tuple[str, dict]:
    """('loop' or 'thread', the answer) of one ``predict_async`` on a fresh event loop."""
    seen = []
    quick, slow = service._answer_locked, service._answer
    monkeypatch.setattr(service, "_answer_locked", lambda *a: seen.append(threading.current_thread()) or quick(*a))
    monkeypatch.setattr(service, "_answer", lambda *a: seen.append(threading.current_thread()) or slow(*a))

    async def call():
        loop_thread = threading.current_thread()
        answer = await service.predict_async(uploads, k=3)
        return ("loop" if seen[0] is loop_thread else "thread"), answer

    return asyncio.run(call())


def test_the_answer_is_computed_on_the_loop_only_when_it_is_quick(service, monkeypatch, kit):
    uploads = [("q.png", kit.image_bytes((190, 50, 40), seed=9))]
    expected = service.predict(uploads, k=3)["predictions"]
    where, answer = where_answered(service, monkeypatch, uploads)
    assert where == "loop" and answer["predictions"] == expected
    monkeypatch.undo()

    monkeypatch.setattr(predictions, "QUICK_PRODUCT", 0)  # a product too large for the loop
    where, answer = where_answered(service, monkeypatch, uploads)
    assert where == "thread" and answer["predictions"] == expected
    monkeypatch.undo()

    service.lock.acquire()  # a writer holds the classes: the loop does not wait for it
    threading.Timer(0.2, service.lock.release).start()
    where, answer = where_answered(service, monkeypatch, uploads)
    assert where == "thread" and answer["predictions"] == expected


def test_calibration_scores_to_recompute_send_the_answer_to_a_thread(service, monkeypatch, kit):
    service.teach("dogs", [(f"d{i}.png", kit.image_bytes((40, 40, 200), seed=20 + i)) for i in range(3)])
    service.calibrate(target_false_reject=0.25)
    uploads = [("q.png", kit.image_bytes((45, 40, 190), seed=29))]
    service.predict(uploads)  # the scores for the classes of now are computed
    assert where_answered(service, monkeypatch, uploads)[0] == "loop"
    monkeypatch.undo()
    table = service.model.classes
    table.calibration.seed_key((id(table), table.version - 1), table.calibration.peek())  # as after a change
    where, answer = where_answered(service, monkeypatch, uploads)
    assert where == "thread"
    assert np.isfinite(answer["predictions"][0]["top"][0]["cosine"])
