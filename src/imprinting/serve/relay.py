"""Answers handed from the inference worker's thread to the event loop, several per wake-up.

A request waiting on the event loop (``Batcher.run_async``) is answered when its job's
future completes on the worker's thread. Waking the loop costs a system call
(``call_soon_threadsafe`` writes to its self-pipe), and every system call gives up the
interpreter lock, which the worker then has to win back from the loop it just woke. A batch
completes many jobs at once, so a ``Relay`` queues the answers and wakes its loop once for
all that are queued before the loop runs: one wake-up a batch instead of one a request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from concurrent.futures import Future

log = logging.getLogger("imprinting.serve")


class Relay:
    """The answers waiting for one event loop (see the module). Thread-safe."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = weakref.ref(loop)  # the registry below must not keep a loop alive
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Future, Future]] = []

    def put(self, answer: asyncio.Future, future: Future) -> None:
        """From any thread: give ``answer`` (the loop's) the outcome of the completed ``future``."""
        with self._lock:
            self._pending.append((answer, future))
            if len(self._pending) > 1:  # a wake-up is on its way and will take this one too
                return
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._flush)
        except Exception:  # noqa: BLE001  # the loop has closed: no one is waiting any more
            with self._lock:  # and the next answer must schedule its own wake-up
                self._pending.clear()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for answer, future in pending:
            try:
                settle(answer, future)
            except Exception:  # noqa: BLE001  # one answer's failure must not lose the others
                log.exception("could not hand an answer to its request")


_RELAYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_RELAYS_LOCK = threading.Lock()


def relay_for(loop: asyncio.AbstractEventLoop) -> Relay:
    """The one ``Relay`` of ``loop``."""
    with _RELAYS_LOCK:
        relay = _RELAYS.get(loop)
        if relay is None:
            relay = _RELAYS[loop] = Relay(loop)
        return relay


def settle(answer: asyncio.Future, future: Future) -> None:
    """Give the event loop's ``answer`` the worker's outcome (on the loop's thread)."""
    if answer.done():  # the waiting task was cancelled
        return
    exc = future.exception()
    if exc is not None:
        answer.set_exception(exc)
    else:
        answer.set_result(future.result())
