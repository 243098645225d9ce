"""The class table's closed-form head: its rows and the biases in use (numpy only, no torch).

``ClassTable`` (``imprinting.classes``) scores with ``s * cos`` unless it holds a head
(``head``, e.g. ``imprinting.heads.WhitenedHead``). Then every class also has the head's
rows in the table's per-class buffers (``head_w``, the correction-free bias ``head_b0``,
``head_lift`` and, with a correction rule, ``head_ref``), which add / remove / snapshot
carry along with the other fields. This mixin is the bookkeeping of those rows, kept apart
from the table's own fields because it is a concept of its own: which head, its rows
computed once (``set_head``), one changed class's rows recomputed alone (``_head_row``),
and the biases that follow the correction chosen for the classes held now (``_rechoose``,
``head_rows``, ``head_info``).

The table provides ``dim``, ``_rows`` (name -> ``imprinting.rows.Rows``), ``_names``,
``sums``, ``counts`` and ``templates``; the mixin owns ``head``, ``_head_b`` (the biases in
use) and ``_head_state`` (the correction rule's choice, ``imprinting.heads.rule.RuleState``).
"""

from __future__ import annotations

import numpy as np

from imprinting.errors import ClassError
from imprinting.rows import Rows


class TableHead:
    """The closed-form head of a ``ClassTable``: set, rows, biases and description."""

    head: object | None  # the head object (``None``: ``s * cos``)
    _head_b: np.ndarray | None
    _head_state: object | None

    def set_head(self, head) -> None:
        """Score with ``head`` (``None``: the paper's ``s * cos``); every row is computed once."""
        if head is not None and head.dim != self.dim:
            raise ClassError(f"a {head.dim}-d head for {self.dim}-d classes")
        self.head = head
        self.version = getattr(self, "version", 0) + 1  # new scores: calibration results are recomputed
        for key in [k for k in self._rows if k.startswith("head_")]:
            del self._rows[key]
        self._head_b = self._head_state = None
        if head is None:
            return
        self._rows.update({k: Rows(v) for k, v in head.table_rows(self.sums, self.counts, self.templates).items()})
        self._rechoose()

    def head_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The head's scoring rows (W (C, D), b (C,), float32, read-only)."""
        if self.head is None:
            raise ClassError("this table has no closed-form head")
        w, b = self._rows["head_w"].view.view(), self._head_b.view()
        w.flags.writeable = b.flags.writeable = False
        return w, b

    def head_rows_of(self, sums, counts, templates) -> tuple[np.ndarray, np.ndarray]:
        """The head's rows for classes with these sums, counts and templates, at the corrections
        this table would give them now (e.g. a class less one example, for leave-one-out)."""
        return self.head.rows(sums, counts, templates, self._head_state)

    def head_info(self) -> dict:
        """What the head is, for ``imprint info``: its settings and the corrections in use now."""
        if self.head is None:
            return {"kind": "normalized-mean"}
        info = {k: v for k, v in self.head.header().items() if k != "rule"}
        if self.head.rule is not None:
            info["correction"] = {str(k): v for k, v in self._head_state.corrections(self.counts).items()}
            info["rule"] = {"reference_rows": len(self.head.rule.labels), "chosen": "for the classes held now"}
        return info

    def _head_row(self, index: int, added: bool = False) -> None:
        """Recompute one class's head rows (O(D^2)), then the biases (``_rechoose``)."""
        if self.head is not None:
            i = slice(index, index + 1)
            for key, value in self.head.table_rows(self.sums[i], self.counts[i], self.templates[i]).items():
                self._rows[key].view[index] = value[0]
            self._rechoose(index if added else None)

    def _rechoose(self, added: int | None = None) -> None:
        """The head's biases for the classes held now: with a correction rule, its choice for
        them, updated for one ``added`` class in O(R D) or rebuilt (``heads.rule.RuleState``)."""
        head, rows = self.head, self._rows
        if head.rule is not None:
            state = self._head_state
            if added is None or state is None or not state.add(self._names[added], rows["head_ref"].view[added],
                                                               rows["head_lift"].view[added]):
                self._head_state = head.choice_state(self._names, self.sums, self.counts, rows["head_ref"].view,
                                                     rows["head_lift"].view)
        strength = head.strengths(self.counts, self._head_state)
        self._head_b = (rows["head_b0"].view + strength * rows["head_lift"].view).astype(np.float32)
