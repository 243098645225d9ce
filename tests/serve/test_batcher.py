"""The inference worker (``serve.batcher``) on its own, with a fake forward pass that records
each batch and can hold it: what goes into a batch, in what order results come back, and what
fails when something fails. Nothing here measures time: a batch is held until the test lets
it go, so the queue behind it is in a known state.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from imprinting.serve.admission import Throughput
from imprinting.serve.batcher import Batcher, _Job
from imprinting.serve.tickets import Gone, Ticket
from imprinting.serve.validation import ApiError


class Forward:
    """A fake forward pass: image (request, index) -> the row [request, index]. Each batch is
    recorded; while ``hold`` is set, a batch waits in the forward until ``go()``."""

    def __init__(self, hold: bool = False, fail_on=None, nan_on=None):
        self.batches: list[list[tuple]] = []
        self.entered = threading.Semaphore(0)
        self.open = threading.Event()
        if not hold:
            self.open.set()
        self.fail_on, self.nan_on = fail_on, nan_on

    def __call__(self, images: list) -> torch.Tensor:
        self.batches.append(list(images))
        self.entered.release()
        assert self.open.wait(30), "the test never let the batch go"
        if self.fail_on is not None and self.fail_on in {r for r, _ in images}:
            raise RuntimeError("the engine fell over")
        rows = torch.tensor([[float(r), float(i)] for r, i in images])
        if self.nan_on is not None:
            rows[[r == self.nan_on for r, _ in images]] = float("nan")
        return rows

    def go(self):
        self.open.set()

    def requests_in(self, batch: int) -> list:
        return [r for r, _ in self.batches[batch]]


def read(upload, index):
    """A fake decoder: the upload's payload is its 'image'; a payload "bad" is refused."""
    name, payload = upload
    if payload == "bad":
        raise ApiError(422, "not_an_image", f"{name}: not an image")
    return payload, f"sha {name}", name


def uploads(request: int, n: int) -> list:
    return [(f"r{request}-{i}.png", (request, i)) for i in range(n)]


@pytest.fixture
def make():
    made = []

    def make(forward, **options) -> Batcher:
        options = {"max_batch": 4, "max_delay_ms": 0, "decoders": 2, **options}
        made.append(Batcher(forward, read, **options))
        return made[-1]

    yield make
    for b in made:
        b.close()


def result(job):
    return job.future.result(timeout=30)


def test_requests_share_batches_and_each_gets_its_rows_in_order(make):
    forward = Forward(hold=True)
    b = make(forward, max_batch=8)
    plug = b.submit(uploads(0, 1))
    assert forward.entered.acquire(timeout=60)  # the worker is in the forward with the plug; the rest queue behind it
    jobs = {r: b.submit(uploads(r, n)) for r, n in ((1, 3), (2, 1), (3, 2))}
    forward.go()
    result(plug)
    for r, job in jobs.items():
        rows, images, shas, names = result(job)
        n = len(images)
        assert rows.tolist() == [[r, i] for i in range(n)]  # this request's rows, in upload order
        assert names == [f"r{r}-{i}.png" for i in range(n)] and shas == [f"sha r{r}-{i}.png" for i in range(n)]
    assert len(forward.batches) == 2 and sorted(forward.batches[1]) == sorted(
        (r, i) for r, n in ((1, 3), (2, 1), (3, 2)) for i in range(n))  # one forward for all three
    assert b.stats()["batches"] == 2 and b.stats()["images"] == 7 and b.throughput.measured


def test_a_big_request_shares_each_batch_with_the_single_photos_behind_it(make):
    """Requests of 16 photos queued first take at most ``chunk`` images a round, so single
    photos queued after them are in the next batch, not after all their photos."""
    forward = Forward(hold=True)
    b = make(forward, max_batch=4, chunk=1)
    plug = b.submit(uploads(0, 1))
    assert forward.entered.acquire(timeout=60)
    big = [b.submit(uploads(r, 16)) for r in (1, 2)]
    singles = [b.submit(uploads(r, 1)) for r in (3, 4, 5)]
    forward.go()
    for job in [plug, *big, *singles]:
        result(job)
    assert forward.requests_in(1) == [1, 2, 3, 4]  # one photo of each big request, then singles
    assert forward.requests_in(2)[:2] == [1, 2] and 5 in forward.requests_in(2)
    # after the singles, the big requests share the batches, each in upload order
    for r in (1, 2):
        assert [i for batch in forward.batches for q, i in batch if q == r] == list(range(16))
        assert result(big[r - 1])[0][:, 1].tolist() == list(range(16))
    assert sum(len(batch) for batch in forward.batches) == 1 + 32 + 3
    assert all(len(batch) == 4 for batch in forward.batches[1:-1])


def test_a_request_alone_fills_the_batch_and_the_batch_waits_to_fill(make):
    forward = Forward()
    b = make(forward, max_batch=4, max_delay_ms=60_000)  # a batch waits for 4 images (at most a minute)
    first = b.submit(uploads(1, 1))
    second = b.submit(uploads(2, 2))
    third = b.submit(uploads(3, 9))  # alone after these: all of a batch is its
    for job in (first, second, third):
        result(job)
    assert [forward.requests_in(k) for k in range(3)] == [[1, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3]]


def test_a_request_whose_client_went_away_is_dropped_from_the_queue(make):
    forward = Forward(hold=True)
    b = make(forward)
    plug = b.submit(uploads(0, 1))
    assert forward.entered.acquire(timeout=60)
    ticket, answers = Ticket(), []

    def client():
        try:
            ticket.run(b.run, uploads(1, 3))
        except ApiError as exc:
            answers.append(exc)

    t = threading.Thread(target=client)
    t.start()
    while b.queued() != 3:
        threading.Event().wait(0.01)
    ticket.cancel()  # the HTTP layer saw the client disconnect
    t.join(30)
    assert len(answers) == 1 and isinstance(answers[0], Gone) and answers[0].status == 499
    assert b.queued() == 0
    after = b.submit(uploads(2, 1))
    forward.go()
    result(plug), result(after)
    assert [forward.requests_in(k) for k in range(len(forward.batches))] == [[0], [2]]  # request 1 never ran


def test_an_engine_error_fails_only_that_batch_and_the_worker_goes_on(make):
    forward = Forward(hold=True, fail_on=1)
    b = make(forward)
    plug = b.submit(uploads(0, 1))
    assert forward.entered.acquire(timeout=60)
    poisoned, neighbour = b.submit(uploads(1, 1)), b.submit(uploads(2, 2))
    forward.go()
    result(plug)
    for job in (poisoned, neighbour):
        with pytest.raises(ApiError) as info:
            result(job)
        assert (info.value.status, info.value.error) == (503, "engine_error")
        assert "engine fell over" in info.value.detail and info.value.headers["Retry-After"] == "1"
    assert result(b.submit(uploads(3, 2)))[0].tolist() == [[3, 0], [3, 1]]  # the worker is still there


def test_a_bad_upload_fails_its_own_request_only(make):
    forward = Forward(hold=True, nan_on=3)
    b = make(forward, max_batch=8)
    plug = b.submit(uploads(0, 1))
    assert forward.entered.acquire(timeout=60)
    bad = b.submit([("a.png", (1, 0)), ("b.png", "bad"), ("c.png", "bad")])
    good = b.submit(uploads(2, 2))
    unembeddable = b.submit(uploads(3, 1))
    forward.go()
    result(plug)
    with pytest.raises(ApiError) as info:
        result(bad)
    assert (info.value.status, info.value.detail) == (422, "b.png: not an image")  # the first bad file
    with pytest.raises(ApiError) as info:
        result(unembeddable)
    assert (info.value.status, info.value.error) == (422, "unembeddable_image") and "r3-0.png" in info.value.detail
    assert result(good)[0].tolist() == [[2, 0], [2, 1]]
    assert sorted(forward.batches[1]) == [(2, 0), (2, 1), (3, 0)]  # the bad request's good image never ran


class Rows:
    """A fake ``prepare`` (``pipeline.CenterCrops``' contract): the image (request, index)
    written as the row [request, index] of the batch's array, from the decoding thread."""

    def batch(self, n: int) -> np.ndarray:
        return np.full((n, 2), -1.0, np.float32)

    def __call__(self, images: list, first: int, out: np.ndarray) -> None:
        out[0] = images[0]


def test_rows_written_by_the_decoders_skip_a_failed_request_and_keep_their_order(make):
    """With ``prepare`` each decoding thread writes its image's row of the batch's array; a
    request failed by a bad upload leaves its rows out, and the others' rows keep their
    order and their requests."""
    seen = []

    def forward(pixels: np.ndarray) -> torch.Tensor:
        seen.append(pixels.copy())
        if len(seen) == 1:
            release.wait(30)
        return torch.from_numpy(pixels)

    release = threading.Event()
    b = make(forward, prepare=Rows(), max_batch=8)
    plug = b.submit(uploads(0, 1))
    while not seen:
        threading.Event().wait(0.01)
    first = b.submit(uploads(1, 2))
    bad = b.submit([("a.png", (2, 0)), ("b.png", "bad")])
    last = b.submit(uploads(3, 3))
    release.set()
    assert result(plug)[0].tolist() == [[0, 0]]
    with pytest.raises(ApiError):
        result(bad)
    assert result(first)[0].tolist() == [[1, 0], [1, 1]]
    assert result(last)[0].tolist() == [[3, 0], [3, 1], [3, 2]]
    assert seen[1].tolist() == [[1, 0], [1, 1], [3, 0], [3, 1], [3, 2]]  # no row of the failed request


def test_the_next_batch_is_decoding_before_the_last_ones_answers_go_out(make):
    """After a forward pass the worker takes what is queued and starts decoding it, then hands
    the answers out: the decoders work while the answers' Python runs. Both steps happen on the
    worker's thread, so their order is the order of these events."""
    forward = Forward(hold=True)
    b = make(forward)
    events = []
    submit = b._pool.submit

    def recording(fn, upload, index, *rest):
        events.append(f"decode {upload[0]}")
        return submit(fn, upload, index, *rest)

    b._pool.submit = recording
    plug = b.submit(uploads(0, 1))
    plug.future.add_done_callback(lambda _: events.append("answer r0"))
    assert forward.entered.acquire(timeout=60)
    queued = b.submit(uploads(1, 2))
    forward.go()
    assert result(plug)[0].tolist() == [[0, 0]] and result(queued)[0].tolist() == [[1, 0], [1, 1]]
    assert events == ["decode r0-0.png", "decode r1-0.png", "decode r1-1.png", "answer r0"]


def test_close_answers_what_is_queued(make):
    forward = Forward(hold=True)
    b = make(forward)
    plug = b.submit(uploads(0, 1))
    assert forward.entered.acquire(timeout=60)
    queued = b.submit(uploads(1, 1))
    closer = threading.Thread(target=b.close)
    closer.start()
    with pytest.raises(ApiError) as info:
        result(queued)
    assert (info.value.status, info.value.error) == (503, "shutting_down")
    forward.go()
    closer.join(30)
    assert result(plug)[0].tolist() == [[0, 0]]  # the batch in progress finished
    with pytest.raises(ApiError, match="shutting down"):
        b.submit(uploads(2, 1))


def test_a_coroutine_waits_for_its_rows_and_cancelling_it_drops_its_images(make):
    """``run_async`` (``/predict`` on the event loop): the rows come back as from ``run``; a
    task cancelled while queued (its client left, or the server stops) leaves the queue and its
    images never reach the model."""
    import asyncio

    forward = Forward(hold=True)
    b = make(forward)
    plug = b.submit(uploads(0, 1))
    assert forward.entered.acquire(timeout=60)

    async def scenario():
        waiting = asyncio.ensure_future(b.run_async(uploads(1, 3)))
        answered = asyncio.ensure_future(b.run_async(uploads(2, 2)))
        while b.queued() != 5:
            await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert b.queued() == 2
        forward.go()
        return await asyncio.wait_for(answered, 30)

    rows, images, shas, names = asyncio.run(scenario())
    assert rows.tolist() == [[2, 0], [2, 1]] and names == ["r2-0.png", "r2-1.png"]
    assert result(plug)[0].tolist() == [[0, 0]]
    assert [forward.requests_in(k) for k in range(len(forward.batches))] == [[0], [2, 2]]  # request 1 never ran


def test_a_coroutine_gets_its_requests_error(make):
    forward = Forward(fail_on=1)
    b = make(forward)
    import asyncio

    with pytest.raises(ApiError) as info:
        asyncio.run(b.run_async(uploads(1, 2)))
    assert (info.value.status, info.value.error) == (503, "engine_error")


def test_the_worker_gives_memory_back_once_idle_after_work(make, monkeypatch):
    """``on_idle`` (``allocator.release_free_memory`` by default) runs once the worker has been
    idle for ``IDLE_SECONDS`` after a batch: once per quiet spell, never while work is queued,
    and not at all before any work."""
    from imprinting.serve import batcher

    monkeypatch.setattr(batcher, "IDLE_SECONDS", 0.05)
    calls = threading.Semaphore(0)
    b = make(Forward(), on_idle=calls.release)
    assert not calls.acquire(timeout=0.3)  # no work yet: nothing to give back
    result(b.submit(uploads(1, 2)))
    assert calls.acquire(timeout=30)  # idle after the batch
    assert not calls.acquire(timeout=0.3)  # once, not every IDLE_SECONDS
    result(b.submit(uploads(2, 1)))
    assert calls.acquire(timeout=30)  # again after the next quiet spell


# -- the rate admission divides by -------------------------------------------------------
def test_the_rate_follows_the_workers_batches():
    rate = Throughput(keep=0.5)
    rate.seed(32, 2.0)  # the warm-up: 16 images/s
    assert rate.rate == 16 and not rate.measured
    rate.record(32, 0.5)  # a real batch at 64 images/s replaces the warm-up's figure
    assert rate.measured and rate.rate == pytest.approx((0.5 * 32 + 32) / (0.5 * 2.0 + 0.5))
    for _ in range(30):
        rate.record(32, 0.5)
    assert rate.rate == pytest.approx(64, rel=1e-6)
    rate.seed(1, 100.0)  # a seed never overrides a measurement
    assert rate.rate == pytest.approx(64, rel=1e-6)


def test_a_single_photo_gets_into_the_next_batch_behind_ten_big_requests():
    """Ten queued 16-photo requests, then one single photo: the next batch of 32 shares its room
    over all eleven (32 // 11 = 2 each, then the rest in order), so the single photo is in it."""
    b = Batcher(lambda images: torch.zeros(len(images), 4), lambda upload, i: upload, max_batch=32)
    try:
        with b._cond:  # queue them without the worker taking any: the lock is held
            jobs = [_Job([("x", i)] * 16) for i in range(10)] + [_Job([("single", 0)])]
            b._queue.extend(jobs)
            batch = b._take()
        taken: dict[int, int] = {}
        for job, first, end in batch:  # a request may be in several rounds of the batch
            taken[id(job)] = taken.get(id(job), 0) + end - first
        assert sum(taken.values()) == 32 and taken[id(jobs[-1])] == 1
        assert all(taken.get(id(j), 0) >= 2 for j in jobs[:10])  # every big request got its share too
    finally:
        b.close()


def test_retry_after_is_the_estimated_wait_but_never_minutes_from_a_collapsed_rate():
    from imprinting.serve.admission import Admission

    admission = Admission(max_queue_seconds=30, memory_limit_mb=None)
    admission.throughput.record(280, 1.0)  # 280 images/s
    admission.images = 8400 + 280 * 5  # 35 s of work queued: a new request would wait too long
    why, retry = admission.full()
    assert retry == 35 and "30" in why  # the estimated wait, ceil((9800 + 0) / 280)
    for _ in range(5):  # five batches of huge images: the measured rate falls to a few images/s
        admission.throughput.record(16, 6.0)
    assert admission.throughput.rate < 30
    assert admission.full()[1] == 60  # at most twice the bound, not 400+ s
