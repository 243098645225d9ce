"""Tables 1 and 2 (top-1 on novel and on all classes) and Figures 3 and 4 (fine-tuning
curves) of Qi, Brown and Lowe, CVPR 2018, on cached features: `imprint reproduce tables`."""

from __future__ import annotations

from imprinting.experiments.base import Experiment, Plan, option

# Paper numbers (CUB-200-2011, InceptionV1, 100 base + 100 novel classes).
PAPER_TABLE1 = {  # novel classes
    "Rand-noFT": [0.17] * 5,
    "Imprinting": [21.26, 28.69, 39.52, 45.77, 49.32],
    "Imprinting+Aug": [21.40, 30.03, 39.35, 46.35, 49.80],
    "Rand+FT": [5.25, 13.41, 34.95, 54.33, 65.60],
    "Imprinting+FT": [18.67, 30.17, 46.08, 59.39, 68.77],
    "AllClassJoint": [3.89, 10.82, 33.00, 50.24, 64.88],
}
PAPER_TABLE2 = {  # all classes
    "Rand-noFT": [37.36] * 5,
    "Imprinting": [44.75, 48.21, 52.95, 55.99, 57.47],
    "Imprinting+Aug": [44.60, 48.48, 52.78, 56.51, 57.84],
    "Rand+FT": [39.26, 43.36, 53.69, 63.17, 68.75],
    "Imprinting+FT": [45.81, 50.41, 59.15, 64.65, 68.73],
    "AllClassJoint": [38.02, 41.89, 52.24, 61.11, 68.31],
}
PAPER_SHOTS = (1, 2, 5, 10, 20)


def plan(setup, o) -> Plan:
    """Rand-noFT, Imprinting (+Aug when views are cached), the whitened head (issue #13: the
    closed form on the backbone's features that ``imprint create`` uses) and, unless
    ``--no-finetune``, Rand+FT, Imprinting+FT and AllClassJoint, on one base model."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.experiments.runner import timed_base, train_config

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import (
        AllClassJoint,
        Finetune,
        Imprinting,
        ImprintInit,
        RandomInit,
        RandomNovel,
        WhitenedMeans,
    )

    data, cfg = setup.data, train_config(o.epochs, o.seed)
    base, seconds = timed_base(data, o.dim, cfg)
    methods = [RandomNovel(base), Imprinting(base)]
    if data.train_aug is not None:
        methods.append(Imprinting(base, augment=True))
    methods.append(WhitenedMeans(seed=o.seed))
    if not o.no_finetune:
        methods += [Finetune(base, RandomInit(), cfg), Finetune(base, ImprintInit(), cfg), AllClassJoint(o.dim, cfg)]
    eps = protocol.episodes(data, o.shots, o.draws, o.seed)
    return Plan([(methods, eps)], {"seconds_base_training": seconds, "seconds_methods": None})


def paper_comparison(rows: list[dict]) -> list[dict]:
    """Tables 1 and 2 side by side with the paper's numbers."""
    out = []
    for r in rows:
        paper1 = PAPER_TABLE1.get(r["method"])
        paper2 = PAPER_TABLE2.get(r["method"])
        i = PAPER_SHOTS.index(r["n"]) if r["n"] in PAPER_SHOTS else None
        out.append({
            "method": r["method"], "n": r["n"],
            "novel (ours)": r["novel"], "novel (paper, CUB)": paper1[i] if paper1 and i is not None else "",
            "all (ours)": r["all"], "all (paper, CUB)": paper2[i] if paper2 and i is not None else "",
            "draws": r["draws"], "seconds": r["seconds"],
        })
    return out


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.experiments.runner import write_results
    from imprinting.report import write_tables
    from imprinting.report.plots import plot_curves

    cols = ["method", "n", "novel (ours)", "novel (paper, CUB)", "all (ours)", "all (paper, CUB)", "draws", "seconds"]
    path = write_tables(r.out, "tables_1_2", "Tables 1 and 2: top-1 (%) on novel and all classes",
                        paper_comparison(protocol.summarize(r.results)), cols, r.prov)
    write_results(r, "tables_1_2_full", "Tables 1 and 2, every metric (mean ± std over draws)")
    if not r.options.no_finetune:
        plot_curves(r.results, r.out, r.prov)
    return path


EXPERIMENT = Experiment(
    name="tables",
    help="Tables 1 and 2 (novel and all classes) and Figures 3 and 4 (fine-tuning curves).",
    data="features",
    plan=plan,
    write=write,
    options=(option("--no-finetune", is_flag=True, help="Skip Rand+FT, Imprinting+FT and AllClassJoint."),),
)
