"""Figure 5 of Qi, Brown and Lowe, CVPR 2018: 1-shot exemplars sorted by their class's
recall@1, and random success and failure cases: `imprint reproduce fig5`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imprinting.experiments.base import Experiment, Plan

if TYPE_CHECKING:  # annotations only: torch is imported where it runs
    import torch


def plan(setup, o) -> Plan:
    """Imprinting on one 1-shot draw, its test scores kept."""
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.experiments.runner import train_config

    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    from imprinting.methods import Imprinting

    base, _ = protocol.train_base(setup.data, o.dim, train_config(o.epochs, o.seed))
    eps = protocol.episodes(setup.data, shots=(1,), draws=1, seed=o.seed)
    return Plan([([Imprinting(base)], eps)], keep_scores=True, extra={"episode": eps[0]})


def recall_and_cases(data, ep, scores: torch.Tensor, seed: int = 0, show: int = 8) -> tuple[list[dict], dict]:
    """Per-class rows (class, exemplar, recall@1), best first, and ``show`` random successes
    and failures among the novel test images."""
    import torch  # heavy: imports torch; `imprint reproduce --help` stays fast

    pred = scores.argmax(1)
    rows = []
    for c_idx, c in enumerate(data.novel, start=data.num_base):
        mask = data.test_y == c_idx
        exemplar = int(ep.shots[data.train_y[ep.shots] == c_idx][0])
        rows.append({"class": data.train.class_names[c], "exemplar": str(data.train.paths[exemplar]),
                     "recall_at_1": round(100.0 * (pred[mask] == c_idx).float().mean().item(), 2),
                     "test_images": int(mask.sum())})
    rows.sort(key=lambda r: -r["recall_at_1"])
    g = torch.Generator().manual_seed(seed)
    novel_idx = torch.nonzero(data.novel_test).flatten()
    ok = novel_idx[pred[novel_idx] == data.test_y[novel_idx]]
    bad = novel_idx[pred[novel_idx] != data.test_y[novel_idx]]
    exemplar_of = {r["class"]: r["exemplar"] for r in rows}
    names = data.names(data.order)

    def case(i):
        i = int(i)
        p = names[int(pred[i])]
        return {"test": str(data.test.paths[i]), "true": names[int(data.test_y[i])], "predicted": p,
                "predicted_exemplar": exemplar_of.get(p)}

    cases = {
        "success": [case(i) for i in ok[torch.randperm(len(ok), generator=g)[:show]]],
        "failure": [case(i) for i in bad[torch.randperm(len(bad), generator=g)[:show]]],
    }
    return rows, cases


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.report import write_tables
    from imprinting.report.plots import plot_figure_5

    (result,) = r.results
    rows, cases = recall_and_cases(r.data, r.plan.extra["episode"], result.scores, r.options.seed)
    path = write_tables(r.out, "figure_5", "Figure 5: per-class recall@1 of 1-shot imprinting (novel classes)",
                        rows, ["class", "recall_at_1", "test_images", "exemplar"], r.prov)
    plot_figure_5(rows, cases, r.out, r.prov)
    return path


EXPERIMENT = Experiment(
    name="fig5",
    help="Figure 5: 1-shot exemplars by per-class recall, and random success and failure cases.",
    data="features",
    plan=plan,
    write=write,
)
