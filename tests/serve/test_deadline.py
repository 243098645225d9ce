"""The deadline on store calls (``serve.deadline``): a call answered in time is the call's
result; one past its deadline is ``StoreInDoubt`` and blocks new calls until it returns; one
that never got a worker is ``StoreUnavailable`` (nothing was sent) and never runs; calls after
``close`` are ``StoreError``, never a bare RuntimeError."""

from __future__ import annotations

import threading
import time

import pytest

from imprinting.serve.deadline import Deadline
from imprinting.serve.integrity import StoreError, StoreInDoubt, StoreUnavailable


def test_in_time_late_queued_and_closed():
    d = Deadline(0.3, "store", workers=1)
    assert d.call(lambda x: x + 1, 41) == 42
    release, ran = threading.Event(), []
    with pytest.raises(StoreInDoubt):
        d.call(lambda: (release.wait(5), ran.append("late"))[1])  # holds the only worker past the deadline
    assert d.hung_for() is not None
    with pytest.raises(StoreUnavailable, match="nothing was sent"):
        d.call(lambda: ran.append("refused"))  # refused at once while the late call is out
    release.set()
    time.sleep(0.1)
    assert d.hung_for() is None and ran == ["late"]

    block = threading.Event()
    d2 = Deadline(0.2, "store", workers=1)
    started = threading.Event()
    threading.Thread(target=lambda: pytest.raises(StoreInDoubt, d2.call, lambda: (started.set(), block.wait(5))),
                     daemon=True).start()
    started.wait(2)  # the worker is busy, its call not late yet: the next one waits in the queue
    with pytest.raises(StoreUnavailable, match="busy with earlier calls"):
        d2.call(lambda: ran.append("queued"))  # never got a worker within 0.2 s: cancelled, never runs
    block.set()
    time.sleep(0.1)
    assert "queued" not in ran
    d.close()
    with pytest.raises(StoreError, match="closed"):
        d.call(lambda: 1)
