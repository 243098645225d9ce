"""Answers handed from the worker's thread to the event loop (``serve.relay``): every answer
arrives, with its result or its error, and answers queued before the loop runs share one
wake-up of the loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

import pytest

from imprinting.serve.relay import Relay, relay_for


def completed(value=None, error=None) -> Future:
    future: Future = Future()
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
    return future


def test_answers_queued_before_the_loop_runs_share_one_wake_up(monkeypatch):
    loop = asyncio.new_event_loop()
    try:
        wakes = []
        real = loop.call_soon_threadsafe
        monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a: wakes.append(1) or real(*a))
        relay = Relay(loop)
        answers = [loop.create_future() for _ in range(50)]
        worker = threading.Thread(target=lambda: [relay.put(a, completed(i)) for i, a in enumerate(answers)])
        worker.start()
        worker.join(30)  # the loop has not run yet: every answer waits for the first wake-up
        assert len(wakes) == 1
        assert loop.run_until_complete(asyncio.gather(*answers)) == list(range(50))
        relay.put(failed := loop.create_future(), completed(error=ValueError("bad image")))
        with pytest.raises(ValueError, match="bad image"):
            loop.run_until_complete(failed)
        assert len(wakes) == 2  # the loop emptied the queue: the next answer wakes it again
    finally:
        loop.close()


def test_a_cancelled_answer_is_skipped_and_a_closed_loop_is_not_an_error():
    loop = asyncio.new_event_loop()
    relay = relay_for(loop)
    assert relay_for(loop) is relay  # one relay a loop
    cancelled, kept = loop.create_future(), loop.create_future()
    cancelled.cancel()
    relay.put(cancelled, completed(1))
    relay.put(kept, completed(2))
    assert loop.run_until_complete(kept) == 2 and cancelled.cancelled()
    loop.close()
    relay.put(loop.create_future(), completed(3))  # the server stopped: nothing to answer, no error


def test_the_registry_does_not_keep_a_finished_loop_alive():
    import gc
    import weakref

    from imprinting.serve import relay as module

    loop = asyncio.new_event_loop()
    relay_for(loop)
    gone = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert gone() is None and all(key is not None for key in module._RELAYS.keys())
