"""Round 3 of the open-set benchmark, its design and its report: the scores, rates, shot counts
and far-away pairs the run measures (``benchmarks/open_set_product.py`` imports them), and the
tables and Rule 3 made from a run's numbers (``open_set_product.py --report``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np

SCORES = ("cosine", "RM-base", "RM-taught")
CANDIDATES = ("RM-base", "RM-taught")
ALPHAS = (0.05, 0.1)
SHOTS = {"cub": (1, 2, 5, 10, 20), "flowers102": (1, 2, 5, 10, 20), "omniglot": (1, 2, 5, 10)}
FAR_PAIRS = (("cub", "flowers102 test"), ("cub", "omniglot test"), ("flowers102", "cub test"),
             ("flowers102", "omniglot test"))


# -- tables and the rule -------------------------------------------------------------------------
def ms(values, digits=3) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}"


def paired(r: dict, s: str, key: str = "auroc") -> tuple[float, float]:
    diff = np.array([row[s][key] - row["cosine"][key] for row in r["draws"]])
    return float(diff.mean()), float(2 * diff.std(ddof=1) / np.sqrt(len(diff)))


def far_mean(r: dict, s: str, far: str) -> float:
    return float(np.mean([row[s][f"far {far}"] for row in r["draws"]]))


def flagged(r: dict, s: str, a: float) -> np.ndarray:
    return np.array([row[s][f"alpha {a}"]["flagged"] for row in r["draws"]])


def tables(results: dict) -> list[str]:
    L = ["#### Setup per data set (fallbacks of RM-taught, shrinkages)", "",
         ("| data set | draws | taught / never-taught classes | taught examples (mean, range) | RM-base shrinkage "
         "| RM-taught shrinkage chosen (draws) | RM-taught fallbacks | n clipped to the photos there |"),
         "|---|---|---|---|---|---|---|---|"]
    for ds, r in results.items():
        ex = [row["examples"] for row in r["draws"]]
        sh = [row.get("taught shrinkage") for row in r["draws"] if not row["fallback"]]
        shc = ", ".join(f"{k}: {sh.count(k)}" for k in sorted(set(sh))) or "-"
        fb = [row["fallback"] for row in r["draws"] if row["fallback"]]
        fbt = f"{len(fb)} of {len(r['draws'])}" + (f" ({'; '.join(sorted(set(fb)))})" if fb else "")
        taught = r["draws"][0]["taught"]
        L.append(f"| {ds} | {len(r['draws'])} | {taught} / {r['classes'] - taught} | {np.mean(ex):.0f} ({min(ex)}-{max(ex)}) "
                 f"| {r['info']['Mahalanobis shrinkage']} | {shc} | {fbt} | {sum(row['clipped'] for row in r['draws'])} |")
    L += ["", ("#### Near-class AUROC: taught classes' test photos vs never-taught classes' (mean ± std over draws), "
          "and the paired gain over the cosine (mean ± 2 SE)"), "",
          "| data set | cosine | RM-base | RM-taught | RM-base gain | RM-taught gain |", "|---|---|---|---|---|---|"]
    for ds, r in results.items():
        g = [paired(r, s) for s in CANDIDATES]
        L.append(f"| {ds} | " + " | ".join(ms([row[s]["auroc"] for row in r["draws"]]) for s in SCORES) + " | "
                 + " | ".join(f"{m:+.4f} ± {se:.4f}" for m, se in g) + " |")
    L += ["", ("#### Near-class AUROC by the shot count of the known photo's class (that class's test photos vs all "
          "never-taught photos; mean over draws; not the rule)"), "",
          "| data set | n | classes per draw (mean) | cosine | RM-base | RM-taught |", "|---|---|---|---|---|---|"]
    for ds, r in results.items():
        for n in map(str, r["shots"]):
            cells = []
            for s in SCORES:
                v = [row[s]["auroc by n"][n] for row in r["draws"] if n in row[s]["auroc by n"]]
                cells.append(f"{np.mean(v):.3f}" if v else "-")
            per = np.mean([row["classes per n"][n] for row in r["draws"]])
            L.append(f"| {ds} | {n} | {per:.1f} | " + " | ".join(cells) + " |")
    L += ["", "#### Far-away AUROC: taught classes' test photos vs far-away photos (mean ± std over draws; worst draw)",
          "", "| model | far-away photos | cosine | RM-base | RM-taught | RM-base - cosine | RM-taught - cosine |",
          "|---|---|---|---|---|---|---|"]
    for ds, r in results.items():
        for far in r["far"]:
            cells = [f"{ms([row[s][f'far {far}'] for row in r['draws']])}; {min(row[s][f'far {far}'] for row in r['draws']):.3f}"
                     for s in SCORES]
            gaps = [far_mean(r, s, far) - far_mean(r, "cosine", far) for s in CANDIDATES]
            L.append(f"| {ds} | {far} ({r['far'][far]}) | " + " | ".join(cells) + " | "
                     + " | ".join(f"{g:+.4f}" for g in gaps) + " |")
    L += ["", ("#### Conformal unknown flag with the leave-one-out threshold (as declared): share of taught-class test "
          "photos flagged (mean / worst draw), and false accepts of never-taught photos (estimated from the "
          "examples / measured; mean over draws)"), "",
          ("| data set | α | calibration examples (mean) | cosine flagged | RM-base flagged | RM-taught flagged "
          "| cosine FA est / meas | RM-base FA est / meas | RM-taught FA est / meas |"), "|---|---|---|---|---|---|---|---|---|"]
    for ds, r in results.items():
        for a in ALPHAS:
            ex = np.mean([row["cosine"]["examples"] for row in r["draws"]])
            fl = [f"{flagged(r, s, a).mean():.3f} / {flagged(r, s, a).max():.3f}" for s in SCORES]
            fa = []
            for s in SCORES:
                est = [row[s][f"alpha {a}"]["FA estimated"] for row in r["draws"]]
                est = [e for e in est if e is not None]
                meas = np.mean([row[s][f"alpha {a}"]["FA measured"] for row in r["draws"]])
                fa.append(f"{np.mean(est):.3f} / {meas:.3f}" if est else f"- / {meas:.3f}")
            L.append(f"| {ds} | {a} | {ex:.0f} | " + " | ".join(fl) + " | " + " | ".join(fa) + " |")
    L += ["", ("#### Flagged share at α = 0.05 by the shot count of the photo's class (declared LOO threshold; mean "
          "over draws; not the rule)"), "", "| data set | n | cosine | RM-base | RM-taught |", "|---|---|---|---|---|"]
    for ds, r in results.items():
        for n in map(str, r["shots"]):
            cells = []
            for s in SCORES:
                v = [row[s]["alpha 0.05"]["flagged by n"][n] for row in r["draws"]
                     if n in row[s]["alpha 0.05"]["flagged by n"]]
                cells.append(f"{np.mean(v):.3f}" if v else "-")
            L.append(f"| {ds} | {n} | " + " | ".join(cells) + " |")
    L += ["", ("#### Diagnostics, not the rule (added after the rule was declared): flagged share (mean / worst draw) "
          "with a class-balanced threshold (every calibration class weighs the same; no finite-sample correction), "
          "and RM-taught with every statistic refitted without the example (exact LOO; RM-taught flagged / FA "
          "measured)"), "",
          ("| data set | α | cosine balanced | RM-base balanced | RM-taught balanced | RM-taught exact LOO "
          "| RM-taught exact LOO, balanced | RM-taught exact LOO FA measured |"), "|---|---|---|---|---|---|---|---|"]
    for ds, r in results.items():
        for a in ALPHAS:
            key = f"alpha {a}"
            bal = [np.array([row[s][key]["balanced flagged"] for row in r["draws"]]) for s in SCORES]
            ex = np.array([row["RM-taught"]["exact"][key]["flagged"] for row in r["draws"]])
            exb = np.array([row["RM-taught"]["exact"][key]["balanced flagged"] for row in r["draws"]])
            exfa = np.mean([row["RM-taught"]["exact"][key]["FA measured"] for row in r["draws"]])
            L.append(f"| {ds} | {a} | " + " | ".join(f"{b.mean():.3f} / {b.max():.3f}" for b in bal + [ex, exb])
                     + f" | {exfa:.3f} |")
    L += ["", "#### Cost (this machine, float64 numpy, the last draw's classes; median of 7)", "",
          ("| data set | D | classes | D x D statistics (fit / score) | cosine ms per 1000 photos | RM ms per 1000 "
          "(P and P0) | RM ms per 1000 (one D x D form) | RM-taught fit s per model (mean) |"),
          "|---|---|---|---|---|---|---|---|"]
    for ds, r in results.items():
        c = r["cost"]
        fit = np.mean([row["taught fit s"] for row in r["draws"]])
        mb = 2 * c["D"] ** 2 * 4 / 2**20
        L.append(f"| {ds} | {c['D']} | {c['classes']} | 2 ({mb:.1f} MiB float32) / 1 | {c['cosine ms']:.2f} | "
                 f"{c['RM ms (P and P0)']:.2f} | {c['RM ms (one D x D form)']:.2f} | {fit:.2f} |")
    return L + [""]


def rule3(results: dict) -> tuple[list[str], dict]:
    """Rule 3 as declared: for each source, (a) near-class gain > 2 SE on >= 2 of 3 data sets,
    (b) every far-away pair's mean AUROC >= the cosine's - 0.01, (c) mean flagged share <= α + 0.02
    at α = 0.05 and 0.1 on every data set (declared LOO threshold)."""
    missing = [p for p in FAR_PAIRS if p[0] not in results or p[1] not in results[p[0]]["far"]]
    assert len(results) == 3 and not missing, f"Rule 3 needs all three data sets and every far-away pair: {missing}"
    L = ["#### Rule 3, applied by the code", "",
         ("| source | (a) gain / 2 SE per data set | (a) data sets beaten | (b) worst far-away gap (where) "
         "| (c) worst mean flagged - α (where) | (a) | (b) | (c) | adopted |"), "|---|---|---|---|---|---|---|---|---|"]
    outcome = {}
    for s in CANDIDATES:
        g = {ds: paired(r, s) for ds, r in results.items()}
        beaten = sum(m > se for m, se in g.values())
        gaps = {(ds, far): far_mean(results[ds], s, far) - far_mean(results[ds], "cosine", far) for ds, far in FAR_PAIRS}
        worst_gap = min(gaps, key=gaps.get)
        over = {(ds, a): float(flagged(r, s, a).mean() - a) for ds, r in results.items() for a in ALPHAS}
        worst_over = max(over, key=over.get)
        ok = (beaten >= 2, all(v >= -0.01 for v in gaps.values()), all(v <= 0.02 for v in over.values()))
        outcome[s] = all(ok)
        cells = "; ".join(f"{ds} {m:+.4f} / {se:.4f}{' beats' if m > se else ''}" for ds, (m, se) in g.items())
        L.append(f"| {s} | {cells} | {beaten} | {gaps[worst_gap]:+.4f} ({worst_gap[0]} model, {worst_gap[1]}) | "
                 f"{over[worst_over]:+.3f} ({worst_over[0]}, α={worst_over[1]}) | "
                 + " | ".join("yes" if x else "no" for x in ok) + f" | {'**yes**' if all(ok) else 'no'} |")
    text = {"RM-base": "models with base data (`imprint train`)",
            "RM-taught": "models with taught examples only (`imprint create --from-folder`, the service)"}
    lines = [f"- {text[s]}: **{s + ' adopted' if ok else 'not adopted: the cosine stays the default'}**"
             for s, ok in outcome.items()]
    return L + ["", "Outcome of Rule 3:", ""] + lines + [""], outcome


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores (shared), no GPU; python {platform.python_version()}"


def report(paths: list[str], out: str | None, title: str) -> int:
    """Tables and Rule 3 from the per-data-set runs' JSON files, appended to ``out``."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    results = {ds: r for run in runs for ds, r in run["results"].items()}
    head = [f"### {title}", ""]
    for run in runs:
        m = run["meta"]
        head.append(f"- {', '.join(run['results'])}: command `{m['command']}`; started {m['started']}; run time "
                    f"{m['seconds']:.0f} s; git HEAD {m['commit']}; machine {m['machine']}")
        for k in ("omniglot", "far"):
            if m.get(k):
                head.append(f"  - {m[k]}")
    m = runs[0]["meta"]
    head.append(f"- seed {m['seed']}; draw d uses numpy `default_rng([{m['seed']}, d])`; {m['draws']} draws per data "
                "set; each taught class's n uniform from " + "; ".join(f"{k} {SHOTS[k]}" for k in results))
    for ds, r in results.items():
        head.append(f"- {ds}: base stats {r['info']}; {r['queries']} novel-class test photos; far-away {r['far']}; "
                    f"{r['seconds']:.0f} s")
    body = tables(results)
    outcome = None
    if len(results) == 3:
        rl, outcome = rule3(results)
        body += rl
    text = "\n".join(head + [""] + body)
    if out:
        with open(out, "a") as f:
            f.write("\n" + text + "\n")
    print(text)
    print(f"Rule 3 outcome: {outcome}")
    return 0
