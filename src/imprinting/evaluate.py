"""How good is a model on labelled images: ``evaluate(model, folder)`` (``imprint evaluate``).

The folder holds one sub-folder per class, named as the model's class, with images at any
depth below it (``read_tree``). Every image is embedded once through the model's engine
pipeline (``imprinting.imprint.embed_files``) and predicted with ``model.predict_embeddings``;
the metrics come from scikit-learn: top-1 and top-k accuracy, recall per class, the
confusion matrix and, from it, the pairs of classes confused most often. With a coverage
(``imprinting.conformal``), also the prediction sets' empirical coverage, mean size and share of
single-class sets; and always the risk-coverage curve: the accuracy of the photos accepted, by
best cosine (the unknown flag's score), against the share accepted.

``find_images`` is the walk ``imprint predict`` uses for files and nested folders.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from imprinting.calibration import expected_calibration_error
from imprinting.data import DatasetError, ImageSet
from imprinting.data.images import IMAGE_EXTENSIONS, ImageError
from imprinting.imprint import embed_files


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _visible(path: Path, root: Path) -> bool:
    """No hidden part (``.git``, ``.DS_Store``, ...) between ``root`` and ``path``."""
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def images_below(folder: Path) -> list[Path]:
    """Every image file at any depth below ``folder`` (hidden entries skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if _visible(p, folder) and _is_image(p))


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files, and every image at any depth below each folder, in the order given
    (each folder's images sorted). A missing path or a folder without images is an ``ImageError``."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = images_below(p)
            if not found:
                raise ImageError(f"{p}: no image files in this folder or below it ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise ImageError(f"{p}: no such file or folder")
    return out


def read_tree(path: str | os.PathLike) -> ImageSet:
    """A folder of class folders with images at any depth below each; label = index of the
    sorted class folder name. A class folder without images is a ``DatasetError``."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{path}: folder has no class folders (expected <class name>/.../<images>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(class_dirs):
        files = images_below(folder)
        if not files:
            raise DatasetError(f"{folder}: class folder has no image files at any depth ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(files)
        labels.extend([label] * len(files))
    return ImageSet(f"folder/{path.name}", paths, labels, [p.name for p in class_dirs])


@dataclass
class Evaluation:
    """The result of ``evaluate``: metrics, and each image's answer."""

    k: int
    top1: float  # share of images whose best class is the true one (0..1)
    topk: float  # share of images whose true class is among the k best
    unknown_rate: float  # share flagged unknown (best cosine below the model's threshold)
    recall: dict[str, float]  # per class of the folder
    support: dict[str, int]  # images per class of the folder
    confused: list[dict]  # the most confused pairs: true, predicted, count, share of the true class
    labels: list[str]  # the confusion matrix's rows and columns (the folder's classes, then others predicted)
    confusion: np.ndarray  # (L, L) counts, rows = true class, columns = predicted class
    images: list[dict] = field(repr=False, default_factory=list)  # one row per image
    confidence: float = 0.0  # mean probability of the best class
    ece: float = 0.0  # expected calibration error of that probability (imprinting.calibration)
    sets: dict | None = None  # with a coverage: target, coverage, mean_size, single, empty (shares 0..1)
    risk_coverage: dict = field(default_factory=dict)  # accepted (shares), accuracy (of those), aurc

    def summary(self) -> dict:
        """JSON-able: everything but the per-image rows."""
        return {"images": len(self.images), "k": self.k, "top1": self.top1, f"top{self.k}": self.topk,
                "unknown_rate": self.unknown_rate, "mean_confidence": self.confidence, "ece": self.ece, "recall": self.recall, "support": self.support,
                "most_confused": self.confused, "labels": self.labels, "confusion": self.confusion.tolist(),
                "prediction_sets": self.sets, "risk_coverage_area": self.risk_coverage.get("aurc")}

    def write(self, out: str | os.PathLike) -> dict[str, Path]:
        """``summary.json``, ``per_class.csv``, ``predictions.csv`` and ``confusion.png`` in ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files = {"summary": out / "summary.json", "per_class": out / "per_class.csv",
                 "predictions": out / "predictions.csv", "confusion": out / "confusion.png",
                 "risk_coverage": out / "risk_coverage.png"}
        files["summary"].write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
        with open(files["per_class"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["class", "images", "recall", "most_often_confused_with", "times"])
            for name in self.recall:
                row = self.confusion[self.labels.index(name)].copy()
                row[self.labels.index(name)] = 0
                worst = int(row.argmax())
                w.writerow([name, self.support[name], f"{self.recall[name]:.4f}",
                            self.labels[worst] if row[worst] else "", int(row[worst])])
        with open(files["predictions"], "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(self.images[0]))
            w.writeheader()
            w.writerows(self.images)
        plot_confusion(self.confusion, self.labels, files["confusion"], len(self.recall))
        plot_risk_coverage(self.risk_coverage, files["risk_coverage"])
        return files


def evaluate(model, folder: str | os.PathLike, k: int = 5, unknown_threshold: float | None = None,
             embed: Callable[[Sequence[Path]], object] | None = None, top_pairs: int = 10,
             coverage: float | None = None) -> Evaluation:
    """Predict every image of ``folder`` (``read_tree``) with ``model`` and score the answers.

    Every class folder must name a class of the model. ``embed(files)`` returns the
    embeddings (default ``embed_files(model, files)``; the CLI passes one with a progress bar).
    ``coverage``: also score the prediction sets at that coverage (a calibrated model)."""
    data = read_tree(folder)
    missing = [n for n in data.class_names if not model.has_class(n)]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"{folder}: class folder(s) {shown} name no class of the model "
                           f"({model.num_classes} classes; see `imprint info`)")
    embeddings = (embed or (lambda files: embed_files(model, files)))(data.paths)
    predictions = model.predict_embeddings(embeddings, k, unknown_threshold, coverage)
    truth = [data.class_names[y] for y in data.labels]
    result = score(data.paths, truth, predictions, k, top_pairs)
    if coverage is not None:
        result.sets = {"target": coverage, **set_metrics(truth, predictions)}
    return result


def set_metrics(truth: Sequence[str], predictions: Sequence) -> dict:
    """Of prediction sets: the share holding the true class (empirical coverage), the mean
    size, and the shares of single-class and of empty sets."""
    sizes = np.array([len(p.set) for p in predictions])
    return {"coverage": float(np.mean([t in p.set for t, p in zip(truth, predictions)])),
            "mean_size": float(sizes.mean()), "single": float(np.mean(sizes == 1)), "empty": float(np.mean(sizes == 0))}


def risk_coverage(scores: np.ndarray, correct: np.ndarray) -> dict:
    """The risk-coverage curve of a rejection score: accepting the photos of the highest scores
    first, the accuracy of the accepted ones against the share accepted (ties accepted
    together); ``aurc``: the mean risk (1 - accuracy) over the shares accepted (lower is better)."""
    scores, correct = np.asarray(scores, np.float64), np.asarray(correct, np.float64)
    order = np.argsort(-scores, kind="stable")
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(order) + 1)
    last_of_tie = np.r_[scores[order][1:] != scores[order][:-1], True]
    accepted, accuracy = (n / len(order))[last_of_tie], (hits / n)[last_of_tie]
    return {"accepted": accepted.tolist(), "accuracy": accuracy.tolist(),
            "aurc": float(np.mean(1 - hits / n)) if len(order) else None}


def score(paths: Sequence, truth: Sequence[str], predictions: Sequence, k: int = 5, top_pairs: int = 10) -> Evaluation:
    """The metrics of ``predictions`` (``Prediction`` objects, best first) against the true names."""
    # slow import: scikit-learn (~1 s) only when scoring (imprint predict and calibrate import this module)
    from sklearn.metrics import accuracy_score, confusion_matrix, recall_score

    if not len(truth):
        raise DatasetError("no images to evaluate")
    best = [p.classes[0] for p in predictions]
    folder_classes = sorted(set(truth))
    labels = folder_classes + sorted(set(best) - set(folder_classes))
    matrix = confusion_matrix(truth, best, labels=labels)
    recall = recall_score(truth, best, labels=folder_classes, average=None, zero_division=0)
    support = {n: int(matrix[i].sum()) for i, n in enumerate(folder_classes)}
    off = matrix[: len(folder_classes)].copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top_pairs]
    confused = []
    for flat in order:
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] == 0:
            break
        confused.append({"true": labels[i], "predicted": labels[j], "count": int(off[i, j]),
                         "share": float(off[i, j] / support[labels[i]])})
    hits = [t in p.classes[:k] for t, p in zip(truth, predictions)]
    rows = [{"image": str(path), "true": t, "predicted": p.classes[0], "correct": t == p.classes[0],
             "probability": round(p.probabilities[0], 6), "cosine": round(p.cosines[0], 6), "unknown": p.unknown,
             f"in_top{k}": hit}
            for path, t, p, hit in zip(paths, truth, predictions, hits)]
    confidence = np.array([p.probabilities[0] for p in predictions])
    correct = np.array([t == b for t, b in zip(truth, best)])
    curve = risk_coverage(np.array([max(p.cosines) for p in predictions]), correct)
    return Evaluation(k, float(accuracy_score(truth, best)), float(np.mean(hits)),
                      float(np.mean([p.unknown for p in predictions])),
                      {n: float(r) for n, r in zip(folder_classes, recall)}, support, confused, labels, matrix, rows,
                      float(confidence.mean()), expected_calibration_error(confidence, correct), None, curve)


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: Path, rows: int) -> None:
    """The confusion matrix as a PNG: the folder's classes as rows (each row as shares of its
    images), every predicted class as a column; names shown up to 60 classes."""
    # slow import: matplotlib only when plotting (imprint predict and calibrate import this module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix[:rows].astype(float)
    m /= np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.18 * len(labels), 24)
    fig, ax = plt.subplots(figsize=(size, min(3 + 0.18 * rows, 24)))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="share of the true class's images")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(labels) <= 60:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(rows), labels[:rows], fontsize=7)
    ax.set_title(f"confusion matrix ({int(matrix.sum())} images)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_risk_coverage(curve: dict, path: Path) -> None:
    """The risk-coverage curve as a PNG: accuracy of the accepted photos against the share
    accepted, accepting the highest best cosines first."""
    # slow import: matplotlib only when plotting (imprint predict and calibrate import this module)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(100 * np.asarray(curve.get("accepted", [])), 100 * np.asarray(curve.get("accuracy", [])), lw=1.5)
    ax.set_xlabel("photos accepted (%), highest best cosine first")
    ax.set_ylabel("accuracy of the accepted photos (%)")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    aurc = curve.get("aurc")
    ax.set_title("risk-coverage" + (f" (mean risk {aurc:.3f})" if aurc is not None else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
