"""A deadline on every call to a store behind a network (``serve.store_pg``).

A database that hangs (stopped, swapping, a network that drops packets without a reset) does
not fail a statement: the driver waits for an answer for as long as the socket stays open, and
neither ``statement_timeout`` (the server enforces it: a stopped server enforces nothing) nor
the pool's connection timeout bounds it. So each store call runs in a small pool of worker
threads, and the caller waits for it at most ``seconds``:

* answered in time: the call's result or its exception, as if it had run in the caller;
* not answered: the caller gets ``StoreInDoubt`` at the deadline, and until that call
  finally returns, every new call is refused at once with the same error (no pile-up of
  threads and connections behind a hung server). The late call still finishes on its own:
  a write is then committed whole or rolled back whole, and the replicas follow the database
  (``serve.follow``), so the memory of every replica is what the database committed.
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from imprinting.serve.integrity import StoreError, StoreInDoubt, StoreUnavailable


class Deadline:
    """Runs calls in worker threads and waits for each at most ``seconds``."""

    def __init__(self, seconds: float, label: str, workers: int = 4):
        if not seconds > 0:
            raise ValueError("the store's deadline must be positive")
        self.seconds, self.label = float(seconds), label
        self._workers = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imprint-store")
        self._lock = threading.Lock()
        self._late: Future | None = None  # a call past its deadline that has not returned yet
        self._late_since = 0.0

    def hung_for(self) -> float | None:
        """Seconds since the call that has not answered began, or None when none is late."""
        with self._lock:
            if self._late is not None and self._late.done():
                self._late = None
            return None if self._late is None else time.monotonic() - self._late_since

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` within the deadline, else ``StoreUnavailable``."""
        waited = self.hung_for()
        if waited is not None:
            raise StoreUnavailable(f"{self.label}: the database has not answered for {waited:.0f} s (hung or "
                                   "unreachable); nothing was sent")
        start = time.monotonic()
        try:
            future = self._workers.submit(fn, *args, **kwargs)
        except RuntimeError:  # the pool is shut down: the store was closed
            raise StoreError(f"{self.label}: the store is closed") from None
        try:
            return future.result(timeout=self.seconds)
        except CancelledError:  # closed while the call waited for a worker
            raise StoreError(f"{self.label}: the store is closed") from None
        except FutureTimeout:
            if future.cancel():  # still waiting for a worker: it will never run
                raise StoreUnavailable(f"{self.label}: the database is busy with earlier calls; nothing was "
                                       "sent") from None
            with self._lock:
                if self._late is None or self._late.done():
                    self._late, self._late_since = future, start
            raise StoreInDoubt(f"{self.label}: the database did not answer within {self.seconds:g} s (hung or "
                               "unreachable)") from None

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)


def bounded(method):
    """Decorate a store method: it runs under the store's ``_deadline`` (a ``Deadline``)."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        deadline = getattr(self, "_deadline", None)
        if deadline is None or threading.current_thread().name.startswith("imprint-store"):
            return method(self, *args, **kwargs)  # while opening, or a store call inside another
        return deadline.call(method, self, *args, **kwargs)

    return call
