"""One inference worker per service: the images of every concurrent request, decoded and
embedded together, in batches.

A request (``/predict`` or a teaching upload) hands its uploads, still compressed, to the
``Batcher`` and waits for its embeddings. The worker thread forms a batch of up to
``max_batch`` images (the engine's best batch size, ``best_batch_size``), waiting at most
``max_delay`` after the oldest queued image for the batch to fill; decodes its images in a
small pool of threads (``serve.validation.read_image``: the memory ceiling, the decoding
reservation, the shrink, as for one request), each thread writing its image's centre crop
into the batch's array; runs one forward pass over all of them (``ImprintModel.embed_pixels``,
on whatever engine the model selected, the embeddings ``embed_images`` gives); and gives each
request its rows, in the order of its uploads. On a CPU engine decoding and the forward take
turns, each with every core (``imprinting.engines.pipeline`` explains why that is faster on
CPUs than overlapping them). Only the answers overlap. Once a forward pass is done, the worker
takes what is queued and starts decoding it. When it took something, the answers wait for that
decoding (at most as long as the forward took), then go out from a thread of their own while
the next forward runs. Answering wakes the event loop: the requests answered come back and are
parsed there, holding the interpreter lock that the decoding threads need between their C
calls, while the forward needs it not at all (docs/serve.md, "Load": the cores 1.80 busy
instead of 1.70 at 40 clients of 1 photo). With nothing taken, the answers go out at once.

Fairness: a batch is shared out in rounds over every queued request (``serve.fairness``), so a
16-photo request shares each batch with the single photos queued behind it. A request taken in
several batches keeps its earlier rows until its last chunk is embedded.

Failure: an upload that cannot be decoded fails its own request (the first bad file in upload
order, as when a request was decoded alone); an exception in the forward fails the requests
of that batch (503 ``engine_error``) and the worker goes on with the next batch. A request
whose client has gone (``Ticket.cancel``, from the HTTP layer) is dropped from the queue.
The worker measures its images a second (``admission.Throughput``), which admission uses to
bound the queue by time. Once idle for ``IDLE_SECONDS`` after work, it gives the memory freed
meanwhile back to the system (``engines.allocator.release_free_memory``): under load the
batches reuse their blocks, and a quiet server does not keep a burst's memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

import torch

from imprinting.engines import best_batch, in_training
from imprinting.engines.allocator import release_free_memory
from imprinting.engines.pipeline import CenterCrops, decode_workers
from imprinting.serve.admission import Busy, Throughput
from imprinting.serve.fairness import share
from imprinting.serve.relay import relay_for
from imprinting.serve.tickets import Gone, current_ticket
from imprinting.serve.validation import ApiError, display_name, unexpected_error

DEFAULT_MAX_BATCH = 32  # the library's batch (embed_images)
DEFAULT_MAX_BATCH_DELAY_MS = 0.0  # measured: on 2 CPU cores any wait only slows a lone photo (docs/serve.md)
IDLE_SECONDS = 1.0  # idle this long after work: the worker gives freed memory back (on_idle)

log = logging.getLogger("imprinting.serve")


def best_batch_size(model) -> int:
    """The most images the worker puts in one forward pass for ``model``: its engine's best
    batch size as measured (``imprinting.engines.best_batch``; ``DEFAULT_MAX_BATCH`` for an
    engine that was named rather than measured)."""
    return best_batch(model.frozen_engine(), DEFAULT_MAX_BATCH)


class _Job:
    """One request's uploads, taken into batches in order; its rows are put back in place."""

    def __init__(self, uploads: Sequence):
        self.uploads = list(uploads)
        self.n = len(self.uploads)
        self.taken = 0  # images taken into batches so far
        self.embedded = 0
        self.images: list = [None] * self.n
        self.shas: list = [None] * self.n
        self.names: list = [None] * self.n
        self.rows: torch.Tensor | None = None
        self.future: Future = Future()
        self.queued_at = time.monotonic()


class Batcher:
    """The worker (see the module). ``read(upload, index) -> (image, sha256, name)`` decodes
    one upload; ``forward(inputs) -> (n, D) tensor`` embeds a batch. Without ``prepare`` the
    inputs are the decoded images; with it (``engines.pipeline.CenterCrops``: ``batch(n)``
    makes an array, ``prepare([image], row, array[row:row + 1])`` fills a row), each decoding
    thread also writes its image's row of the batch's array, and the array is the input."""

    def __init__(self, forward: Callable, read: Callable, *, prepare=None, max_batch: int = DEFAULT_MAX_BATCH,
                 max_delay_ms: float = DEFAULT_MAX_BATCH_DELAY_MS, chunk: int | None = None,
                 throughput: Throughput | None = None, decoders: int | None = None,
                 on_idle: Callable[[], None] | None = release_free_memory):
        if max_batch < 1 or max_delay_ms < 0 or (chunk is not None and chunk < 1):
            raise ValueError("the batch size and chunk must be positive, the delay not negative")
        self._forward, self._read, self._prepare = forward, read, prepare
        self.max_batch, self.max_delay = int(max_batch), max_delay_ms / 1000
        self.chunk = chunk or max(1, self.max_batch // 4)
        self.throughput = throughput or Throughput()
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._forward_lock = threading.Lock()  # the worker's, and a warm-up's before serving
        self._closed = False
        self._ahead = None  # (batch, _start's) of the next batch, taken before the answers of the last
        self.on_idle, self._worked = on_idle, False  # _worked: a batch ran since the last on_idle
        self.batches = self.images = self.last_batch = 0
        self._pool = ThreadPoolExecutor(decoders or decode_workers(), thread_name_prefix="imprint-decode")
        self._answers = ThreadPoolExecutor(1, thread_name_prefix="imprint-answers")  # beside the next forward
        self._thread = threading.Thread(target=self._loop, name="imprint-inference", daemon=True)
        self._thread.start()

    @classmethod
    def for_model(cls, model, read: Callable, *, max_batch: int | None = None, **options) -> Batcher:
        """The worker of ``model``: each image centre-cropped and normalized into its row of
        the batch in the decoding thread that decoded it (``engines.pipeline.CenterCrops``,
        the pixels of ``embed_images``), then one engine run per batch (``model.embed_pixels``)
        of at most ``max_batch`` images (default: ``best_batch_size(model)``). The forward
        phase is then the engine's alone: crops made in a pool of its own after decoding took
        two threads fighting the event loop for the interpreter lock, with a core mostly idle.
        The engine is taken once, here: the service changes classes and calibration, never the
        backbone's weights or the model's mode, which ``embed_pixels`` would otherwise check on
        every batch (0.3-0.5 ms of Python; a lone photo's answer 15 % slower, docs/serve.md).
        Raises ``ValueError`` for a model with a module in training mode."""
        if in_training(model):  # its engine would run it in training mode
            raise ValueError("the service's model must be in eval mode (model.eval())")
        engine = model.frozen_engine(training=False)
        return cls(lambda pixels: model.embed_pixels(pixels, engine), read,
                   prepare=CenterCrops(model.preprocess, draft=False),
                   max_batch=max_batch or best_batch_size(model), **options)

    # -- the requests' side ------------------------------------------------------------
    def run(self, uploads: Sequence) -> tuple[torch.Tensor, list, list[str], list[str]]:
        """Queue a request's uploads and wait for them: (embeddings (n, D) in upload order,
        the decoded images, SHA-256 of each file, display names). Raises the request's
        ``ApiError``: a bad upload; 422 ``unembeddable_image`` for a NaN or infinite embedding
        (a damaged model, or an image the model cannot embed); 503 over a bound or on an engine
        error; ``Gone`` when the calling request's ticket is cancelled."""
        return self._submit_watched(uploads).future.result()

    async def run_async(self, uploads: Sequence) -> tuple[torch.Tensor, list, list[str], list[str]]:
        """``run`` for a coroutine: the request waits on the event loop, holding no thread
        (``/predict``). Cancelling the waiting task drops the request's queued images."""
        job = self._submit_watched(uploads)
        loop = asyncio.get_running_loop()
        answer, relay = loop.create_future(), relay_for(loop)
        job.future.add_done_callback(lambda future: relay.put(answer, future))  # one wake-up a batch
        try:
            return await answer
        except asyncio.CancelledError:
            self._fail(job, Gone())
            raise

    def _submit_watched(self, uploads: Sequence) -> _Job:
        """Queue the uploads, tied to the calling request's ticket: cancelled, it leaves the queue."""
        job = self.submit(uploads)
        ticket = current_ticket()
        if ticket is not None:
            ticket.on_cancel(lambda: self._fail(job, Gone()))
        return job

    def submit(self, uploads: Sequence) -> _Job:
        if not len(uploads):
            raise ValueError("no uploads")
        job = _Job(uploads)
        with self._cond:
            if self._closed:
                raise ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"})
            self._queue.append(job)
            self._cond.notify_all()
        return job

    def queued(self) -> int:
        """Images queued and not yet taken into a batch."""
        return sum(j.n - j.taken for j in list(self._queue))

    def limits(self) -> dict:
        return {"max_batch": self.max_batch, "max_batch_delay_ms": round(self.max_delay * 1000, 3)}

    def stats(self) -> dict:
        return {"batches": self.batches, "images": self.images, "last_batch": self.last_batch,
                "mean_batch": round(self.images / self.batches, 1) if self.batches else None}

    def warm_up(self, image) -> None:
        """Before serving: one forward of ``image`` (the engine's first-call set-up), then a
        timed full batch of it, a first measure of the rate (halved: decoding and HTTP are not
        in it) until real batches replace it."""
        with self._forward_lock:
            self._forward(self._inputs([image]))
            start = time.perf_counter()
            self._forward(self._inputs([image] * self.max_batch))
            self.throughput.seed(self.max_batch, 2 * (time.perf_counter() - start))

    def close(self) -> None:
        """Stop taking work: the batch in progress finishes, what is queued is answered 503."""
        with self._cond:
            self._closed = True
            left, self._queue = list(self._queue), deque()
            self._cond.notify_all()
        for job in left:
            self._fail(job, ApiError(503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"}))
        if self._thread is not threading.current_thread():
            self._thread.join(60)
        self._answers.shutdown(wait=True)  # every batch's answers out, none cancelled
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the worker ----------------------------------------------------------------------
    def _fail(self, job: _Job, exc: BaseException) -> None:
        """Answer ``job`` with ``exc`` (if it has no answer yet) and drop it from the queue."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
            if job.future.done():
                return
            job.future.set_exception(exc)

    def _loop(self) -> None:
        while True:
            batch = []
            try:
                if self._ahead is not None:  # taken, and its decoding started, after the last forward
                    (batch, started), self._ahead = self._ahead, None
                else:
                    batch = self._next_batch()
                    if batch is None:
                        return
                    if not batch:  # idle since the last batch: the memory its work freed goes back
                        self.on_idle()
                        continue
                    started = self._start(batch)
                self._process(batch, started)
            except BaseException as exc:  # a bug here must not stop the worker: fail this batch only
                self._fail_all(batch, exc)
                if not batch:  # it failed before taking a batch: do not spin
                    time.sleep(0.05)

    def _fail_all(self, batch: list[tuple[_Job, int, int]], exc: BaseException) -> None:
        """A bug met while working on ``batch``: its requests not yet answered get a 503."""
        detail = unexpected_error(exc, "the inference worker")
        for job, _, _ in batch:
            self._fail(job, ApiError(503, "internal_error", f"the batch failed: {detail}", headers={"Retry-After": "1"}))

    def _next_batch(self) -> list[tuple[_Job, int, int]] | None:
        """Wait for work, then for the batch to fill (``max_delay`` after the oldest queued
        image at most), and take it: (job, first, end) ranges of upload indices. ``[]``: no
        work came for ``IDLE_SECONDS`` after a batch (time for ``on_idle``)."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._queue:
                    if self._worked and self.on_idle is not None:
                        if not self._cond.wait(IDLE_SECONDS):
                            self._worked = False
                            return []
                    else:
                        self._cond.wait()
                    continue
                if self.queued() < self.max_batch:
                    left = self._queue[0].queued_at + self.max_delay - time.monotonic()
                    if left > 0:
                        self._cond.wait(left)
                        continue
                return self._take()

    def _take(self) -> list[tuple[_Job, int, int]]:
        """Up to ``max_batch`` images of the queued requests, shared by ``fairness.share``;
        the requests with none left leave the queue. Under the lock."""
        batch = share(self._queue, self.max_batch, self.chunk)
        self._queue = deque(j for j in self._queue if j.taken < j.n)
        return batch

    def _inputs(self, images: list):
        """The forward's input for decoded ``images`` (outside the decoding threads)."""
        if self._prepare is None:
            return images
        out = self._prepare.batch(len(images))
        for row, image in enumerate(images):
            self._prepare([image], row, out[row : row + 1])
        return out

    def _read_into(self, upload, index: int, out, row: int) -> tuple:
        """In a decoding thread: decode one upload, and write its row of the batch's array."""
        image, sha, name = self._read(upload, index)
        if out is not None:
            self._prepare([image], row, out[row : row + 1])
        return image, sha, name

    def _start(self, batch: list[tuple[_Job, int, int]]) -> tuple:
        """Start decoding a batch in the pool: (start time, [(job, index)], the array, the reads)."""
        todo = [(job, i) for job, first, end in batch if not job.future.done() for i in range(first, end)]
        out = self._prepare.batch(len(todo)) if self._prepare is not None else None
        reads = [(job, i, self._pool.submit(self._read_into, job.uploads[i], i, out, row))
                 for row, (job, i) in enumerate(todo)]
        return time.perf_counter(), todo, out, reads

    def _take_ahead(self) -> None:
        """The next batch, when photos are queued now, taken and its decoding started before
        this batch's answers go out (``_ahead``). If its decoding cannot start (no memory for
        its array), its requests, already out of the queue, get a 503."""
        with self._cond:
            if self._closed or not self._queue:
                return
            batch = self._take()
        try:
            self._ahead = (batch, self._start(batch))
        except BaseException as exc:  # noqa: BLE001  # out of the queue: answered here or never
            self._fail_all(batch, exc)

    def _process(self, batch: list[tuple[_Job, int, int]], started: tuple) -> None:
        start, todo, out, reads = started
        errors: dict[_Job, tuple[int, BaseException]] = {}
        for job, i, read in reads:
            try:
                job.images[i], job.shas[i], job.names[i] = read.result()
            except Exception as exc:  # noqa: BLE001  # this upload's request fails; the others go on
                if job not in errors or i < errors[job][0]:
                    errors[job] = (i, exc)
        for job, (i, exc) in errors.items():
            self._fail(job, _upload_error(exc, job, i))
        parts = [(job, first, end) for job, first, end in batch if not job.future.done()]
        if not parts:
            return
        images = [img for job, first, end in parts for img in job.images[first:end]]
        inputs = images
        if out is not None:  # the rows of the requests still waiting, in the same order
            waiting = {id(job) for job, _, _ in parts}
            kept = [row for row, (job, _) in enumerate(todo) if id(job) in waiting]
            inputs = out if len(kept) == len(out) else out[kept]
        try:
            with self._forward_lock:
                began = time.perf_counter()
                rows = self._forward(inputs)
                forward_seconds = time.perf_counter() - began
            if len(rows) != len(images):
                raise RuntimeError(f"{len(rows)} embeddings for {len(images)} images")
        except Exception as exc:  # fails this batch's requests only; the worker goes on
            log.exception("the model failed on a batch of %d images", len(images))
            error = ApiError(503, "engine_error", f"the model failed on the batch of {len(images)} images this request "
                                                  f"was in ({type(exc).__name__}: {exc}); retry",
                             headers={"Retry-After": "1"})
            for job, _, _ in parts:
                self._fail(job, error)
            return
        # every image decoded counts: a batch whose clients left after decoding still took its time
        self.throughput.record(max(len(images), len(reads)), time.perf_counter() - start)
        self.batches, self.images, self.last_batch = self.batches + 1, self.images + len(images), len(images)
        self._worked = True
        self._take_ahead()
        if self._ahead is None:
            self._hand_out(parts, rows)
        else:  # after the next batch's decoding, beside its forward (see the module)
            wait([read for _, _, read in self._ahead[1][3]], timeout=forward_seconds)
            try:
                self._answers.submit(self._hand_out, parts, rows)
            except RuntimeError:  # closing, past close()'s wait for this thread: answered here
                self._hand_out(parts, rows)

    def _hand_out(self, parts: list[tuple[_Job, int, int]], rows: torch.Tensor) -> None:
        """Give each request of the batch its rows (in the worker's thread, or the answers')."""
        try:
            row = 0
            for job, first, end in parts:
                self._put(job, first, rows[row : row + end - first])
                row += end - first
        except BaseException as exc:  # noqa: BLE001  # no request is left waiting for a lost answer
            self._fail_all(parts, exc)

    def _put(self, job: _Job, first: int, rows: torch.Tensor) -> None:
        with self._cond:
            if job.future.done():  # failed or cancelled meanwhile
                return
            if job.rows is None:
                job.rows = torch.empty((job.n, *rows.shape[1:]), dtype=rows.dtype)
            job.rows[first : first + len(rows)] = rows
            job.embedded += len(rows)
            if job.embedded < job.n:
                return
            bad = ~torch.isfinite(job.rows).all(dim=1)
            if bad.any():
                job.future.set_exception(ApiError(422, "unembeddable_image", f"{job.names[int(bad.nonzero()[0])]}: "
                                                  "the model gives it a NaN or infinite embedding"))
            else:
                job.future.set_result((job.rows, job.images, job.shas, job.names))


def _upload_error(exc: BaseException, job: _Job, index: int) -> ApiError:
    """An upload's failure as its request's answer (``read_image`` raises ``ApiError`` for
    what it recognises; anything else still gets a JSON answer naming the file)."""
    if isinstance(exc, ApiError):
        return exc
    name = display_name(job.uploads[index][0], index)
    if isinstance(exc, MemoryError):
        return Busy(f"{name}: out of memory while decoding it; retry shortly", 2)
    return ApiError(422, "unreadable_image", f"{name}: could not be read ({type(exc).__name__}: {exc})")
