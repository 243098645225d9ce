"""A request's cancellation, shared by the HTTP layer and the inference worker.

The HTTP layer (``serve.middleware``) gives each request that queues images a ``Ticket`` and
cancels it when the client disconnects; the worker (``serve.batcher``) ties what a request
queues to the ticket of the call it runs in (``current_ticket``, a context variable, so the
service between them passes nothing), and drops the request's queued images when it is
cancelled: the request then ends with ``Gone``, answered to no one.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable

from imprinting.serve.validation import ApiError


class Gone(ApiError):
    """The client closed its connection before the answer: its work was dropped."""

    def __init__(self):
        super().__init__(499, "client_closed_request", "the client closed the connection before the answer; its "
                                                        "images were dropped from the queue")


class Ticket:
    """One request's cancellation, shared by the HTTP layer (which calls ``cancel`` when the
    client disconnects) and the worker (which drops the request's queued images)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    def on_cancel(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once when the request is cancelled (at once if it is already)."""
        with self._lock:
            if not self.cancelled:
                self._callbacks.append(fn)
                return
        fn()

    def cancel(self) -> None:
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn()

    def run(self, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` as this request's work: the batcher ties what it queues
        within the call to this ticket (``current_ticket``)."""
        token = _TICKET.set(self)
        try:
            return fn(*args, **kwargs)
        finally:
            _TICKET.reset(token)

    async def run_async(self, fn: Callable, *args, **kwargs):
        """``await fn(*args, **kwargs)`` as this request's work (``run`` for a coroutine function)."""
        token = _TICKET.set(self)
        try:
            return await fn(*args, **kwargs)
        finally:
            _TICKET.reset(token)


_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("imprinting_serve_ticket", default=None)


def current_ticket() -> Ticket | None:
    return _TICKET.get()
