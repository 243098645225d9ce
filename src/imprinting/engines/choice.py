"""The measured choice of engine, per batch size: a small table from a record of figures.

``measure.py`` times every exact engine at each batch size of ``MEASURE_BATCHES`` and records
the images/s (``images_per_s_by_batch``: batch -> engine -> rate) and the fastest engine at
each size (``chosen_by_batch``). A batch of ``b`` images takes the choice measured at the
largest measured size not above ``b`` (the smallest size for a smaller batch), so with sizes
1, 4, 16, 32 the ranges are 1-3, 4-15, 16-31 and 32 or more. Pure data: no engine is built
here (``auto.py`` runs the table).
"""

from __future__ import annotations

import bisect

BEST_BATCH_SLACK = 0.05  # best_batch: the largest size within 5 % of the highest measured rate


def fastest(rates: dict[str, float]) -> str | None:
    """The engine with the highest images/s (``None`` for no figures); a tie goes to the
    first in ``rates``' order."""
    return max(rates, key=rates.get) if rates else None


class Choice:
    """The engine for each batch size, and the figures behind it.

    ``rates``: measured batch size -> engine name -> images/s (exact engines only);
    ``chosen``: measured batch size -> engine name (default: the fastest at that size);
    ``fallback``: the engine where nothing was measured (PyTorch).
    """

    def __init__(self, rates: dict[int, dict[str, float]], chosen: dict[int, str] | None = None,
                 fallback: str = "torch", date: str | None = None):
        self.rates = {int(b): dict(r) for b, r in rates.items()}
        picked = {b: fastest(r) or fallback for b, r in self.rates.items()}
        self.chosen = {int(b): n for b, n in chosen.items()} if chosen is not None else picked
        self.batches = sorted(self.chosen) or [1]
        self.fallback, self.date = fallback, date

    @classmethod
    def from_record(cls, record: dict) -> Choice | None:
        """The table of a record of ``measure``; ``None`` for a record without per-batch
        figures (written before them: one batch size, 16), which is measured again."""
        by_batch = record.get("images_per_s_by_batch")
        chosen = record.get("chosen_by_batch")
        if not isinstance(by_batch, dict) or not isinstance(chosen, dict) or not chosen:
            return None
        try:
            return cls({int(b): r for b, r in by_batch.items()}, {int(b): n for b, n in chosen.items()},
                       date=record.get("date"))
        except (TypeError, ValueError, AttributeError):  # a damaged record: measured again
            return None

    def measured_at(self, batch: int) -> int:
        """The measured batch size whose choice a batch of ``batch`` images takes."""
        i = bisect.bisect_right(self.batches, max(1, int(batch))) - 1
        return self.batches[max(i, 0)]

    def name_for(self, batch: int) -> str:
        """The engine for a batch of ``batch`` images."""
        return self.chosen.get(self.measured_at(batch), self.fallback)

    def images_per_s(self, batch: int) -> float | None:
        """The measured images/s of the engine for ``batch``, at the size it was measured at."""
        at = self.measured_at(batch)
        return self.rates.get(at, {}).get(self.name_for(batch))

    def best_batch(self) -> int:
        """The largest measured batch size whose chosen engine reaches within
        ``BEST_BATCH_SLACK`` of the highest measured images/s: the most images worth putting
        in one forward pass. Where the rate is flat from some size on (OpenVINO), the largest
        size, since a pipeline's costs per batch (waking the decoders, the engine's threads)
        are not in these figures; where it falls with size (PyTorch eager on 2 cores), the
        size before the fall."""
        rates = {b: self.images_per_s(b) for b in self.batches}
        known = {b: r for b, r in rates.items() if r}
        if not known:
            return self.batches[-1]
        top = max(known.values())
        return max(b for b, r in known.items() if r >= (1 - BEST_BATCH_SLACK) * top)

    def names(self) -> list[str]:
        """The engines of the table, the largest batches' first."""
        out: list[str] = []
        for b in reversed(self.batches):
            if self.chosen[b] not in out:
                out.append(self.chosen[b])
        return out

    def span(self, measured: int) -> str:
        """The batch sizes that take the choice measured at ``measured``: "4-15", "32 or more"."""
        i = self.batches.index(measured)
        lo = 1 if i == 0 else measured
        if i == len(self.batches) - 1:
            return f"{lo} or more"
        hi = self.batches[i + 1] - 1
        return str(lo) if hi == lo else f"{lo}-{hi}"

    def spans_of(self, name: str) -> list[str]:
        """The batch ranges ``name`` runs, adjacent ranges merged: ["1-3", "16 or more"]."""
        out, start = [], None
        for i, b in enumerate(self.batches):
            mine = self.chosen[b] == name
            if mine and start is None:
                start = i
            last = i == len(self.batches) - 1
            if start is not None and (not mine or last):
                end = i if mine else i - 1
                lo = 1 if start == 0 else self.batches[start]
                if end == len(self.batches) - 1:
                    out.append(f"{lo} or more")
                else:
                    hi = self.batches[end + 1] - 1
                    out.append(str(lo) if hi == lo else f"{lo}-{hi}")
                start = None
        return out

    def rows(self) -> list[dict]:
        """One row per measured size: the batches it covers, the engine chosen, every exact
        engine's images/s there (for ``imprint info`` and benchmarks)."""
        return [{"batches": self.span(b), "measured_at": b, "engine": self.chosen[b],
                 "images_per_s": dict(sorted(self.rates.get(b, {}).items(), key=lambda kv: -kv[1]))}
                for b in self.batches]
