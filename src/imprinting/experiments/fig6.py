"""Figure 6 of Qi, Brown and Lowe, CVPR 2018: averaged embeddings vs nearest neighbour,
softmax vs lifted structured loss (novel-only top-1): `imprint reproduce fig6`."""

from __future__ import annotations

from imprinting.experiments.base import Experiment, Plan


def plan(setup, o) -> Plan:
    # slow import: imprinting.methods loads scikit-learn (~1 s), only when the plan runs, not for --help
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting import protocol
    from imprinting.experiments.runner import train_config
    from imprinting.methods import Imprinting, LiftedEmbedding, NearestNeighbour
    from imprinting.methods.lifted import train_lifted_embedder

    data, cfg = setup.data, train_config(o.epochs, o.seed)
    base, _ = protocol.train_base(data, o.dim, cfg)
    lifted = train_lifted_embedder(data, o.dim, epochs=cfg.epochs, seed=o.seed)
    methods = [Imprinting(base), NearestNeighbour(base), LiftedEmbedding(lifted, "average"),
               LiftedEmbedding(lifted, "nearest")]
    return Plan([(methods, protocol.episodes(data, o.shots, o.draws, o.seed))])


def write(r):
    # heavy: imports torch; `imprint reproduce --help` stays fast
    from imprinting.experiments.runner import write_results
    from imprinting.report.plots import plot_lines

    path = write_results(r, "figure_6", "Figure 6: novel-only top-1, averaging vs nearest neighbour")
    plot_lines(r.results, r.out, "figure_6", "novel_only", "Figure 6: novel classes (novel-only)", r.prov)
    return path


EXPERIMENT = Experiment(
    name="fig6",
    help="Figure 6: averaged embeddings vs nearest neighbour; softmax vs lifted structured loss.",
    data="features",
    plan=plan,
    write=write,
)
