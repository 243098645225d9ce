"""benchmarks/compare.py's report: the Markdown tables, where a peer beats us and why, and the
data files (CSV, JSON). Everything here is computed from the summary rows alone, so
``compare.py --render`` can redo it from a saved JSON."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

REFERENCE = "Imprinting (paper: FC 64 + cosine)"  # ratios in the tables are to this row


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def _x(ratio: float) -> str:
    if ratio != ratio:
        return ""
    return f"{ratio:,.0f}×" if ratio >= 100 else f"{ratio:.1f}×" if ratio >= 1 else f"{ratio:.2f}×"


def _kib(nbytes: int) -> str:
    return f"{nbytes / 1024:,.0f}" if nbytes >= 10 * 1024 else f"{nbytes / 1024:.1f}"


_NUMERIC = re.compile(r"^[-+*]*[\d,.]+\**( ± [\d.]+)?( \([-+][\d.]+\))?(×|%)?$|^$")


def _table(header: list[str], lines: list[list[str]]) -> str:
    """A Markdown table; columns whose cells are all numbers are right-aligned."""
    numeric = [all(_NUMERIC.match(line[i]) for line in lines) for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if num else "---" for num in numeric) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def accuracy_table(summary: list[dict], dataset: str, shots: list[int]) -> str:
    methods = list(dict.fromkeys(s["method"] for s in summary if s["dataset"] == dataset))
    get = {(s["method"], s["n"]): s for s in summary if s["dataset"] == dataset}
    header = ["method"] + [f"novel n={n}" for n in shots] + [f"all n={n}" for n in shots]
    best = {(metric, n): max((s[f"{metric}_mean"] for (m, k), s in get.items() if k == n), default=None)
            for metric in ("novel", "all") for n in shots}
    lines = []
    for m in methods:
        cells = [m if m != REFERENCE else f"**{m}**"]
        for metric in ("novel", "all"):
            for n in shots:
                s = get.get((m, n))
                if s is None:
                    cells.append("")
                    continue
                cell = f"{s[f'{metric}_mean']:.1f} ± {s[f'{metric}_std']:.1f}"
                if s[f"{metric}_mean"] == best[(metric, n)]:
                    cell = f"**{s[f'{metric}_mean']:.1f}** ± {s[f'{metric}_std']:.1f}"
                if m != REFERENCE and f"{metric}_delta" in s:
                    cell += f" ({s[f'{metric}_delta']:+.1f})"
                cells.append(cell)
        lines.append(cells)
    return _table(header, lines)


def cost_table(summary: list[dict], dataset: str, shots: list[int]) -> str:
    methods = list(dict.fromkeys(s["method"] for s in summary if s["dataset"] == dataset))
    get = {(s["method"], s["n"]): s for s in summary if s["dataset"] == dataset}
    mid, last = shots[len(shots) // 2], shots[-1]
    header = (["method"] + [f"add ms, n={n}" for n in shots] + [f"add ×, n={mid}"]
              + [f"predict ms, n={mid}", "predict ×", f"memory KiB, n={last}", "memory ×", "base setup s"])
    lines = []
    for m in methods:
        cells = [m if m != REFERENCE else f"**{m}**"]
        cells += [_ms(get[(m, n)]["add_s"]) if (m, n) in get else "" for n in shots]
        s_mid, s_last = get.get((m, mid)), get.get((m, last))
        cells.append(_x(s_mid.get("add_s_ratio", float("nan"))) if s_mid else "")
        cells += [_ms(s_mid["predict_s"]), _x(s_mid.get("predict_s_ratio", float("nan")))] if s_mid else ["", ""]
        cells += [_kib(s_last["bytes"]), _x(s_last.get("bytes_ratio", float("nan")))] if s_last else ["", ""]
        cells.append(f"{get[(m, shots[0])]['setup_s']:.2f}")
        lines.append(cells)
    return _table(header, lines)


# Why a peer can beat us: matched against the method name, first match wins.
WHY = [
    ("LogisticRegression",
     "a discriminative linear classifier on all 1280 features learns which directions separate each novel class "
     "from the base classes; averaging the shots cannot. It needs examples for that: at n = 1 it fails (a "
     "regularized fit barely moves a class seen once against about 30 examples per base class; "
     "class_weight='balanced' helps a little), while imprinting gives every class a unit-norm template whatever "
     "its count"),
    ("Fine-tune",
     "the same network as imprinting, but the FC layer and every class vector train on base + novel examples, "
     "so the embedding adapts to the novel classes, which imprinting never does. At n = 1 it over-fits and "
     "falls below imprinting"),
    ("SimpleShot",
     "easyfsl's SimpleShot with CL2N is our RawFeatureNCM with centring but without the power transform: the "
     "gap is the power transform, which helps from n = 5 and costs about a point at n = 1"),
    ("PrototypicalNetworks",
     "class means in the full 1280-d features keep information that the paper's 64-d FC embedding, trained on "
     "base classes only, discards; without normalization it is poor at n = 1"),
    ("easyfsl Finetune",
     "prototypes fine-tuned on the support set; the support is dominated by base examples, so at n = 1 the "
     "tuning pulls decisions towards base classes and novel top-1 drops below SimpleShot's"),
    ("k-NN", "stored examples keep multi-modal classes in the full 1280-d features; with 20 shots the nearest "
             "example beats the 64-d imprinted mean"),
    ("FAISS", "the same exact cosine search as scikit-learn's k-NN (same predictions), so the same reason"),
]


def _why(method: str) -> str:
    return next((text for key, text in WHY if key in method), "")


def peer_wins(summary: list[dict], margin: float = 0.0) -> list[dict]:
    """Every (dataset, n, metric) where a peer's mean top-1 beats the better of our entries."""
    wins = []
    ours_names = {s["method"] for s in summary if s["family"] == "ours"}
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        for n in sorted({s["n"] for s in summary if s["dataset"] == ds}):
            at = [s for s in summary if s["dataset"] == ds and s["n"] == n]
            for metric in ("novel", "all"):
                best = max((s for s in at if s["method"] in ours_names), key=lambda s: s[f"{metric}_mean"])
                for s in at:
                    gap = s[f"{metric}_mean"] - best[f"{metric}_mean"]
                    if s["method"] in ours_names or gap <= margin:
                        continue
                    noise = s.get(f"{metric}_std", 0.0) + best.get(f"{metric}_std", 0.0)
                    wins.append({"dataset": ds, "n": n, "metric": metric, "peer": s["method"],
                                 "peer_top1": s[f"{metric}_mean"], "ours": best["method"],
                                 "ours_top1": best[f"{metric}_mean"], "gap": gap, "clear": gap > noise,
                                 "peer_add_s": s["add_s"], "ours_add_s": best["add_s"]})
    return wins


def wins_markdown(wins: list[dict]) -> str:
    if not wins:
        return "- Nowhere: no peer's mean top-1 exceeds our best entry.\n"
    header = ["data set", "n", "metric", "peer", "peer top-1", "our best entry", "ours top-1", "gap (points)",
              "beyond draw noise?", "peer add ms", "ours add ms"]
    lines = [[w["dataset"], str(w["n"]), w["metric"], w["peer"], f"{w['peer_top1']:.1f}", w["ours"],
              f"{w['ours_top1']:.1f}", f"+{w['gap']:.1f}", "yes" if w["clear"] else "no (gap ≤ sum of stds)",
              _ms(w["peer_add_s"]), _ms(w["ours_add_s"])] for w in wins]
    by_reason: dict[str, list[str]] = {}
    for m in dict.fromkeys(w["peer"] for w in wins):
        by_reason.setdefault(_why(m), []).append(m)
    why = [f"- {', '.join(f'**{m}**' for m in ms)}: {reason}." for reason, ms in by_reason.items()]
    return _table(header, lines) + "\n\nWhy, probably:\n\n" + "\n".join(why) + "\n"


def cheaper(summary: list[dict], below: float = 0.8) -> list[str]:
    """Where a peer costs less than Imprinting (ratio below ``below`` at every n)."""
    out = []
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        for method in dict.fromkeys(s["method"] for s in summary if s["dataset"] == ds):
            rs = [s for s in summary if s["dataset"] == ds and s["method"] == method]
            if method == REFERENCE or not rs or "add_s_ratio" not in rs[0]:
                continue
            same_arrays = all(s["bytes_ratio"] == 1.0 for s in rs)  # same network: same prediction cost
            for key, what in (("add_s", "adds the novel classes"), ("predict_s", "predicts"),
                              ("bytes", "holds less memory")):
                if same_arrays and key != "add_s":
                    continue
                ratios = [s[f"{key}_ratio"] for s in rs]
                if max(ratios) < below:
                    out.append(f"{ds}: **{method}** {what} "
                               + ("" if key == "bytes" else "faster ")
                               + f"than Imprinting: {min(ratios):.2f}× to {max(ratios):.2f}× across n.")
    return out


def update_section(path: Path, name: str, text: str, title: str = "# Benchmarks") -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``
    (appended when absent); whatever else the file holds is kept."""
    begin, end = f"<!-- {name}:begin (generated; do not edit by hand) -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else f"{title}\n"
    pattern = re.compile(re.escape(f"<!-- {name}:begin") + r".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: block, old) if pattern.search(old) else old.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def section(summary: list[dict], prov: dict, shots: list[int], plot_name: str) -> str:
    """The report's section: provenance, accuracy and cost tables per data set, the plot, and
    where a peer beats us or costs less."""
    ours = list(dict.fromkeys(s["method"] for s in summary if s["family"] == "ours"))
    head = "\n".join(f"- {k}: `{v}`" if k == "command" else f"- {k}: {v}" for k, v in prov.items())
    parts = ["## Side by side on cached features (`benchmarks/compare.py`)", "", head, "",
             "Accuracy cells: mean ± std over draws (difference to Imprinting in points; the best of each column "
             "in bold). Costs: fastest of repeated calls, median over draws; ratios are to **Imprinting** at the "
             "same n. \"add\" = from the base model to a classifier "
             "with the novel classes (backbone forwards excluded: they are the same for everyone); \"predict\" = "
             "scores for the whole test set from its backbone features; \"memory\" = arrays kept to predict; "
             "\"base setup\" = one-off work on base data only (base-model training for the methods built on it).",
             ""]
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        m = next(s["test_images"] for s in summary if s["dataset"] == ds)
        parts += [f"### {ds}: top-1 (%)", "", accuracy_table(summary, ds, shots), "",
                  f"### {ds}: cost ({m} test images)", "", cost_table(summary, ds, shots), ""]
    parts += [f"![accuracy against time to learn]({plot_name})", "",
              "### Where a peer beats us (generated from the numbers above)", "",
              "Every case where a peer's mean top-1 is above the best of our entries "
              f"({'; '.join(ours)}):", "", wins_markdown(peer_wins(summary)),
              "Where a peer is cheaper than Imprinting (cost ratio below 0.8 at every n; same-architecture "
              "methods predict at the same cost, so smaller differences are timing noise):", ""]
    parts += [f"- {c}" for c in cheaper(summary)] or ["- Nowhere."]
    return "\n".join(parts) + "\n"


def write_data(out: Path, rows: list[dict], summary: list[dict], prov: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks_compare.json").write_text(json.dumps({"provenance": prov, "summary": summary, "rows": rows},
                                                            indent=1))
    cols = ["dataset", "method", "family", "n", "draws", "novel_mean", "novel_std", "all_mean", "all_std",
            "novel_delta", "all_delta", "add_s", "add_s_ratio", "predict_s", "predict_s_ratio", "bytes",
            "bytes_ratio", "setup_s", "test_images"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(summary)
    (out / "benchmarks_compare.csv").write_text("".join(f"# {k}: {v}\n" for k, v in prov.items()) + buf.getvalue())
