"""How one batch is shared among the requests queued for the inference worker
(``serve.batcher``).

A batch is shared out in rounds over every queued request, in the order they came: each round
gives each request with images left an equal share of the room left (at most ``chunk`` of one
request while others wait, at least one image), so a 16-photo request shares each batch with
the single photos queued behind it instead of filling it alone, and ten queued 16-photo
requests still leave a single photo a place in the next batch. A request alone gets all the
room. Past ``room`` requests with images left, the first ones in order get one image each.
"""

from __future__ import annotations

from collections.abc import Iterable


def share(queue: Iterable, room: int, chunk: int) -> list[tuple[object, int, int]]:
    """Take up to ``room`` images from the requests of ``queue`` (each with ``n`` images, of
    which ``taken`` are already taken; ``taken`` is advanced here), by the rule above:
    ``(request, first, end)`` ranges of image indices, in the order they were given."""
    jobs, batch = list(queue), []
    while room:
        before = room
        active = sum(1 for job in jobs if job.taken < job.n)
        quota = room if active <= 1 else max(1, min(chunk, room // active))
        for job in jobs:
            k = min(job.n - job.taken, quota, room)
            if k:
                batch.append((job, job.taken, job.taken + k))
                job.taken += k
                room -= k
            if not room:
                break
        if room == before:
            break
    return batch
