"""Every plot of the project (PNG, with the command that made it): the curves and lines of
the paper's figures and the benchmark's accuracy-against-time chart. matplotlib (Agg) is
imported on first use only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from imprinting import protocol

CURVE_STYLES = {"Imprinting+FT": "-", "Rand+FT": "--", "AllClassJoint": ":",
                "Imprinting+FT (end to end)": "-.", "Rand+FT (end to end)": (0, (1, 3))}


def plot_curves(results, out_dir: Path, prov: dict, stem: str = "figures_3_4") -> Path:
    """Figures 3 and 4: per-epoch test accuracy of the fine-tuned models (mean over draws)."""
    # slow import: matplotlib only when plotting (imprint reproduce's commands import this module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric, title in ((axes[0], "novel", "Figure 3: novel classes"), (axes[1], "all", "Figure 4: all classes")):
        for method, style in CURVE_STYLES.items():
            for n in sorted({r.n for r in results}):
                hs = [r.history for r in results if r.method == method and r.n == n and r.history]
                if not hs or metric not in hs[0][0]:
                    continue
                curve = np.mean([[h[metric] for h in hist] for hist in hs], axis=0)
                ax.plot(range(1, len(curve) + 1), curve, linestyle=style, label=f"{method} n={n}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 (%)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.suptitle(prov["command"], fontsize=7)
    fig.tight_layout()
    path = out_dir / f"{stem}.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lines(results, out_dir: Path, stem: str, metric: str, title: str, prov: dict) -> Path:
    """A line per method of ``metric`` against n (Figures 6 and 7)."""
    # slow import: matplotlib only when plotting (imprint reproduce's commands import this module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = protocol.summarize(results)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        ax.errorbar([r["n"] for r in rs], [r[f"{metric}_mean"] for r in rs], [r[f"{metric}_std"] for r in rs],
                    marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xticks(sorted({r["n"] for r in rows}), [str(n) for n in sorted({r["n"] for r in rows})])
    ax.set_xlabel("n (examples per novel class)")
    ax.set_ylabel(f"top-1 (%), {metric.replace('_', ' ')}")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.text(0.01, 0.01, prov["command"], fontsize=5)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_dims(results, out_dir: Path, prov: dict) -> Path:
    """Figure 7: top-1 against embedding size, a line per (method, n)."""
    # slow import: matplotlib only when plotting (imprint reproduce's commands import this module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = protocol.summarize(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("novel", "all")):
        lines: dict = {}
        for r in rows:
            method, dim = r["method"].rsplit(" D=", 1)
            lines.setdefault((method, r["n"]), []).append((int(dim), r[f"{metric}_mean"], r[f"{metric}_std"]))
        for (method, n), pts in sorted(lines.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], marker="o", capsize=3,
                        label=f"{method} n={n}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("embedding size D")
        ax.set_ylabel(f"top-1 (%), {metric} classes")
        ax.legend(fontsize=7)
    fig.suptitle(f"Figure 7 - {prov['command']}", fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "figure_7.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_figure_5(rows: list[dict], cases: dict, out_dir: Path, prov: dict, show: int = 8) -> Path:
    """Figure 5: the exemplars of the best and worst classes, random successes and failures."""
    # slow import: matplotlib only when plotting (imprint reproduce's commands import this module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = rows[:show] + rows[-show:]
    fig, axes = plt.subplots(4, show, figsize=(1.7 * show, 8.4))
    for ax, r in zip(axes[:2].flat, picks):
        ax.imshow(Image.open(r["exemplar"]).convert("RGB"))
        ax.set_title(f"{r['class'][:16]}\nrecall {r['recall_at_1']:.0f}%", fontsize=6)
    for row, kind in ((2, "success"), (3, "failure")):
        for ax, c in zip(axes[row], cases[kind]):
            ax.imshow(Image.open(c["test"]).convert("RGB"))
            color = "green" if kind == "success" else "red"
            ax.set_title(f"true {c['true'][:14]}\npred {c['predicted'][:14]}", fontsize=6, color=color)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Figure 5: 1-shot exemplars, best and worst classes (rows 1-2); random successes and failures "
                 f"(rows 3-4)\n{prov['command']}", fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "figure_5.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_accuracy_vs_time(summary: list[dict], path: Path) -> None:
    """benchmarks/compare.py: top-1 against the time to add the novel classes, a line per
    method, a column per data set, a row per metric (novel, all)."""
    # slow import: matplotlib only when plotting (imprint reproduce's commands import this module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(s["dataset"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    fig, axes = plt.subplots(2, len(datasets), figsize=(7.5 * len(datasets), 10), squeeze=False)
    ours_colors = iter(["tab:blue", "tab:red", "black", "tab:cyan"])
    peer_colors = ["tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:gray",
                   "gold", "teal", "magenta", "lime", "navy", "salmon", "sienna"]
    family = {s["method"]: s["family"] for s in summary}
    color = {}
    for m in methods:
        color[m] = next(ours_colors, "tab:blue") if family[m] == "ours" else peer_colors[len(color) % len(peer_colors)]
    markers = "o^sDv<>ph*Xd8P"
    for j, ds in enumerate(datasets):
        for i, metric in enumerate(("novel", "all")):
            ax = axes[i][j]
            for k, m in enumerate(methods):
                pts = sorted((s for s in summary if s["dataset"] == ds and s["method"] == m), key=lambda s: s["n"])
                if not pts:
                    continue
                x = [max(s["add_s"], 1e-5) * 1e3 for s in pts]
                y = [s[f"{metric}_mean"] for s in pts]
                ours_style = pts[0]["family"] == "ours"
                ax.plot(x, y, marker=markers[k % len(markers)], color=color[m], label=m,
                        linewidth=2.5 if ours_style else 1, markersize=8 if ours_style else 6)
                for s, xi, yi in zip(pts, x, y):
                    ax.annotate(f"{s['n']}", (xi, yi), textcoords="offset points", xytext=(4, 3), fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel("time to add the novel classes (ms, log scale; backbone forward excluded)")
            ax.set_ylabel(f"{metric} top-1 (%)")
            ax.set_title(f"{ds}: {metric}-class top-1 vs time to learn (labels: n)")
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
