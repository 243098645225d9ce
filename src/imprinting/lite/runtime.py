"""The lite model: an ONNX embedder, the classes, and imprinting, with numpy and onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from imprinting.calibration import in_force
from imprinting.conformal import set_q
from imprinting.data.images import ImageError, load_image
from imprinting.errors import ClassError
from imprinting.lite import format as fmt
from imprinting.lite.preprocess import image_mode, to_batch
from imprinting.prediction import Prediction, UnknownClassError, top_k  # noqa: F401  (shared with the PyTorch model)


def _session(path: Path, threads: int | None, providers: Sequence[str] | None):
    import onnxruntime as ort  # optional: onnxruntime (pip install 'imprinting[lite]')

    if not path.is_file():
        raise fmt.ExportFormatError(f"{path}: no such ONNX file")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise fmt.ExportFormatError(f"{path}: not a loadable ONNX model ({exc.__class__.__name__}: {exc})") from None


class LiteModel:
    """An exported embedder plus the classes, without PyTorch.

    ``imprint(name, images)`` teaches a class (or adds examples to an imprinted one) by
    adding the images' L2-normalized embeddings to the class's float64 running sum in the
    class table (``classes``, the same ``ClassTable`` the PyTorch model keeps); the class
    vector is the normalized sum. ``predict(images)`` returns top-k classes with the
    unknown flag. ``save()`` writes the classes file, atomically, in the format that
    ``imprinting.export.import_classes`` reads into a PyTorch model.

    Loading checks everything before using it: the manifest's and the recipe's fields and
    that every file the manifest names stays inside the folder (``imprinting.lite.format``),
    and the classes file's array sizes (before allocating them) and values
    (``imprinting.classes_file``); a bad folder is one ``ExportFormatError`` naming the file
    and the field.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        quantized: bool = False,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        classes: str | os.PathLike | None = None,
    ):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise fmt.ExportFormatError(f"{self.folder}: no such export folder")
        self.manifest = fmt.read_manifest(self.folder)  # every field checked, every file inside the folder
        self.recipe = fmt.read_preprocess(self.folder)
        key = "embedder_int8" if quantized else "embedder"
        if key not in self.manifest["files"]:
            what = "int8 embedder (export with --quantize)" if quantized else "embedder"
            raise fmt.ExportFormatError(f"{self.folder / fmt.MANIFEST}: the export has no {what}")
        self.quantized = quantized
        self.session = _session(fmt.export_file(self.folder, self.manifest, key), threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.dim = self.manifest["embedding_dim"]
        self.embedder_id = self.manifest.get("embedder_id")
        # the caller's own classes file is the caller's choice; the export's must stay in its folder
        self.classes_path = (Path(classes) if classes is not None
                             else fmt.export_file(self.folder, self.manifest, "classes", fmt.CLASSES))
        self._load_classes(fmt.load_classes(self.classes_path, dim=self.dim))

    # -- classes -----------------------------------------------------------------
    def _load_classes(self, data: fmt.ClassesData) -> None:
        if data.dim != self.dim:
            raise fmt.ExportFormatError(f"{self.classes_path}: {data.dim}-d classes for a {self.dim}-d embedder")
        if data.embedder_id and self.embedder_id and data.embedder_id != self.embedder_id:
            raise fmt.ExportFormatError(
                f"{self.classes_path}: the classes were made with another embedder "
                f"({data.embedder_id[:12]}, this export has {self.embedder_id[:12]})"
            )
        self.classes = data.table()  # with its kept calibration examples, if any (imprinting.calibration_set)
        self.unknown_threshold = data.unknown_threshold
        self.threshold_follows = data.threshold_follows
        self.conformal = data.conformal  # calibration's scores for prediction sets (imprinting.conformal), or None
        self._extra = {k: v for k, v in data.extra.items() if k != "conformal"}

    # what calibration gives follows the classes, as in the PyTorch model (imprinting.calibration_set)
    unknown_threshold = property(lambda self: in_force(self.classes, self._threshold, self._conformal,
                                                        self.threshold_follows)[0])

    @unknown_threshold.setter
    def unknown_threshold(self, value: float | None) -> None:
        self._threshold, self.threshold_follows = value, False

    conformal = property(lambda self: in_force(self.classes, self._threshold, self._conformal, False)[1])

    @conformal.setter
    def conformal(self, value) -> None:
        self._conformal = value

    def classes_data(self) -> fmt.ClassesData:
        """The classes as a ``ClassesData`` (copies)."""
        return fmt.ClassesData.from_table(self.classes, self.unknown_threshold, self.embedder_id, self._extra,
                                          conformal=self.conformal, threshold_follows=self.threshold_follows)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes.names)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def weights(self) -> np.ndarray:
        """Class vectors (C, D) float32, as stored (read-only)."""
        return self.classes.weights

    @property
    def sums(self) -> np.ndarray:
        """Per-class float64 sums of L2-normalized embeddings (C, D) (read-only)."""
        return self.classes.sums

    @property
    def counts(self) -> np.ndarray:
        """Examples per class (C,); 0 = trained base class (read-only)."""
        return self.classes.counts

    @property
    def scale(self) -> np.ndarray:
        return self.classes.scale

    @property
    def per_class_scale(self) -> bool:
        return self.classes.per_class_scale

    def has_class(self, name: str) -> bool:
        return name in self.classes

    def index_of(self, name: str) -> int:
        return self.classes.index_of(name)

    def is_imprinted(self, name: str) -> bool:
        return self.classes.is_imprinted(name)

    def templates(self) -> np.ndarray:
        """L2-normalized class vectors (C, D) float32."""
        return self.classes.templates

    # -- images ------------------------------------------------------------------
    def load_images(self, images: Iterable) -> list:
        """Paths or PIL images -> PIL images in the embedder's mode (errors name the file)."""
        mode = image_mode(self.recipe)
        return [img.convert(mode) if hasattr(img, "convert") else load_image(img, mode) for img in images]

    def preprocess(self, images: Iterable) -> np.ndarray:
        """Paths or PIL images -> float32 (N, C, H, W), as the embedder expects."""
        return to_batch(self.load_images(images), self.recipe)

    def embed_array(self, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings (N, D) float32 of preprocessed images (N, C, H, W)."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        size = int(self.recipe["image_size"])
        want = (int(self.recipe["in_chans"]), size, size)
        if batch.ndim != 4 or batch.shape[1:] != want:
            raise ValueError(f"expected preprocessed images of shape (N, {', '.join(map(str, want))}), got {batch.shape}")
        if batch.shape[0] == 0:
            raise ImageError("no images to embed")
        out = [
            self.session.run([self.output_name], {self.input_name: batch[i : i + batch_size]})[0]
            for i in range(0, batch.shape[0], batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed(self, images: Sequence, batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings (N, D) of image files or PIL images."""
        images = list(images)
        if not images:
            raise ImageError("no images to embed")
        out = [self.embed_array(self.preprocess(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(out)

    # -- imprinting --------------------------------------------------------------
    def imprint(self, name: str, images: Sequence) -> int:
        """Teach class ``name`` from image files or PIL images: a new class is added, an
        imprinted class takes the examples. Returns the class index."""
        if not isinstance(name, str) and isinstance(images, str):
            raise TypeError("imprint takes the class name first: imprint(name, images)")
        return self.imprint_embeddings(name, self.embed(images))

    def imprint_embeddings(self, name: str, embeddings: np.ndarray) -> int:
        """``imprint`` from embeddings (n, D) instead of images."""
        if not isinstance(name, str) and isinstance(embeddings, str):
            raise TypeError("imprint_embeddings takes the class name first: imprint_embeddings(name, embeddings)")
        return self.classes.imprint(name, embeddings)

    def remove_class(self, name: str) -> None:
        """Remove an imprinted class (base classes are protected)."""
        self.classes.remove(name)

    # -- prediction --------------------------------------------------------------
    def cosines(self, embeddings: np.ndarray) -> np.ndarray:
        return self.classes.cosines(embeddings)

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """s * cos(w_c, e): the PyTorch model's logits, (N, C)."""
        return self.classes.logits(self.cosines(embeddings), embeddings)

    def predict(self, images: Sequence, k: int = 5, unknown_threshold: float | None = None,
                coverage: float | None = None) -> list[Prediction]:
        """Top-k predictions for image files or PIL images."""
        return self.predict_embeddings(self.embed(images), k, unknown_threshold, coverage)

    def predict_embeddings(self, embeddings: np.ndarray, k: int = 5, unknown_threshold: float | None = None,
                           coverage: float | None = None) -> list[Prediction]:
        """Top-k predictions; with ``coverage`` (e.g. 0.9), each one's set of the classes the
        photo could be (``imprinting.conformal``; needs a calibrated classes file)."""
        if self.num_classes == 0:
            raise ClassError("the model has no classes yet: imprint one first")
        cos = self.cosines(embeddings)
        threshold = self.unknown_threshold if unknown_threshold is None else unknown_threshold
        return top_k(cos, self.classes.logits(cos, embeddings), self.classes.name_at, k, threshold,
                     set_q(self.conformal, coverage))

    # -- saving ------------------------------------------------------------------
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the classes file (default: the export's own ``classes.npz``), atomically."""
        target = Path(path) if path is not None else self.classes_path
        fmt.save_classes(self.classes_data(), target)
        return target

    def __repr__(self) -> str:
        imprinted = int((self.counts > 0).sum())
        return (
            f"LiteModel({str(self.folder)!r}, {self.manifest.get('backbone', '?')}, {self.dim}-d, "
            f"{self.num_classes} classes ({imprinted} imprinted){', int8' if self.quantized else ''})"
        )


def load(folder: str | os.PathLike, quantized: bool = False, threads: int | None = None, **kwargs) -> LiteModel:
    """Open an export folder written by ``imprint export`` / ``imprinting.export.export``."""
    return LiteModel(folder, quantized=quantized, threads=threads, **kwargs)
