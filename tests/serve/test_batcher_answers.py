"""When the inference worker (``serve.batcher``) hands a batch's answers out: at once when
nothing is queued behind the batch; else after the next batch's decoding (waiting at most as
long as the forward took), from a thread of its own, while the next forward runs. Fakes for the
forward and the decoder, held by events, so the queue is in a known state at each step.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from imprinting.serve.batcher import Batcher
from imprinting.serve.validation import ApiError


class Setup:
    """A worker of batches of 1 whose forward waits for ``go`` (the first forward for ``hold``
    seconds at least) and whose decoder waits for ``decoded`` on the payload 2."""

    def __init__(self, hold: float = 0.0):
        self.hold, self.go, self.decoded = hold, threading.Event(), threading.Event()
        self.in_forward, self.decoding = threading.Semaphore(0), threading.Event()
        self.batcher = Batcher(self.forward, self.read, max_batch=1, on_idle=None)

    def forward(self, images):
        self.in_forward.release()
        began = time.perf_counter()
        assert self.go.wait(30), "the test never let the forward go"
        time.sleep(max(0.0, self.hold - (time.perf_counter() - began)))
        self.hold = 0.0
        return torch.tensor([[float(p)] for p in images])

    def read(self, upload, index):
        name, payload = upload
        if payload == 2:
            self.decoding.set()
            assert self.decoded.wait(30), "the test never let the decoding go"
        return payload, f"sha {name}", name

    def two_requests(self):
        """The first request in its forward, the second queued behind it."""
        first = self.batcher.submit([("a.png", 1)])
        assert self.in_forward.acquire(timeout=30)
        second = self.batcher.submit([("b.png", 2)])
        return first, second


def answered_in(job) -> tuple[list[str], threading.Event]:
    """The thread that completes ``job``, once the event is set (callbacks run after waiters wake)."""
    names: list[str] = []
    done = threading.Event()

    def note(_):
        names.append(threading.current_thread().name)
        done.set()

    job.future.add_done_callback(note)
    return names, done


def test_a_lone_request_is_answered_at_once_by_the_worker():
    s = Setup()
    try:
        job = s.batcher.submit([("a.png", 1)])
        names, done = answered_in(job)  # before the forward may end
        s.go.set()
        rows, images, shas, files = job.future.result(timeout=30)
        assert rows.tolist() == [[1.0]] and images == [1] and shas == ["sha a.png"] and files == ["a.png"]
        assert done.wait(30) and names == ["imprint-inference"]  # no batch behind it: not handed to the answers' thread
    finally:
        s.batcher.close()


def test_the_answers_wait_for_the_next_batchs_decoding_then_go_out_beside_its_forward():
    s = Setup(hold=2.0)  # the forward takes 2 s: the answers may wait that long for the decoding
    try:
        first, second = s.two_requests()
        names, done = answered_in(first)
        s.go.set()
        assert s.decoding.wait(30)  # the second request's image is being decoded...
        time.sleep(0.2)
        assert not first.future.done()  # ...and the first's answer waits for it
        s.decoded.set()
        assert first.future.result(timeout=30)[0].tolist() == [[1.0]]
        assert done.wait(30) and [name.split("_")[0] for name in names] == ["imprint-answers"]
        assert second.future.result(timeout=30)[0].tolist() == [[2.0]]
    finally:
        s.decoded.set()
        s.batcher.close()


def test_a_slow_decoding_holds_the_answers_no_longer_than_the_forward_took():
    s = Setup(hold=0.1)
    try:
        first, second = s.two_requests()
        s.go.set()
        assert s.decoding.wait(30)  # the next image is decoding, and stays so until the end
        assert first.future.result(timeout=3)[0].tolist() == [[1.0]]  # about 0.1 s after its forward
        s.decoded.set()
        assert second.future.result(timeout=30)[0].tolist() == [[2.0]]
    finally:
        s.decoded.set()
        s.batcher.close()


def test_a_failure_handing_out_answers_fails_those_requests_and_the_worker_goes_on(monkeypatch):
    s = Setup()
    try:
        first, second = s.two_requests()
        def lost(*args):
            raise RuntimeError("lost")

        monkeypatch.setattr(s.batcher, "_put", lost)
        s.go.set()
        s.decoded.set()
        for job in (first, second):  # the first from the answers' thread, the second from the worker's
            with pytest.raises(ApiError) as err:
                job.future.result(timeout=30)
            assert (err.value.status, err.value.error) == (503, "internal_error")
            assert "lost" not in err.value.detail  # the log has it, under the reference
        monkeypatch.undo()
        assert s.batcher.submit([("c.png", 3)]).future.result(timeout=30)[0].tolist() == [[3.0]]
    finally:
        s.batcher.close()


def test_closing_hands_out_the_answers_of_the_batches_taken():
    s = Setup(hold=0.2)
    put = s.batcher._put

    def slow_for_the_first(job, first, rows):  # its answer still on its way when close() is called
        if job.uploads[0][1] == 1:
            time.sleep(1.0)
        put(job, first, rows)

    s.batcher._put = slow_for_the_first
    first, second = s.two_requests()
    s.go.set()
    assert s.decoding.wait(30)  # the second is taken, behind the first
    s.decoded.set()
    s.batcher.close()
    assert first.future.result(timeout=0)[0].tolist() == [[1.0]]
    assert second.future.result(timeout=0)[0].tolist() == [[2.0]]


def test_a_batch_taken_ahead_whose_decoding_cannot_start_is_answered_not_lost():
    s = Setup()
    start, calls = s.batcher._start, []

    def no_memory_the_second_time(batch):
        calls.append(batch)
        if len(calls) == 2:  # the batch taken ahead: its array cannot be made
            raise MemoryError("no room for the batch's array")
        return start(batch)

    s.batcher._start = no_memory_the_second_time
    try:
        first, second = s.two_requests()
        s.go.set()
        assert first.future.result(timeout=30)[0].tolist() == [[1.0]]
        with pytest.raises(ApiError) as err:
            second.future.result(timeout=30)  # out of the queue, answered anyway
        assert (err.value.status, err.value.error) == (503, "internal_error")
        assert s.batcher.submit([("c.png", 3)]).future.result(timeout=30)[0].tolist() == [[3.0]]
    finally:
        s.batcher.close()
