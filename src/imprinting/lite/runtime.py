"""The lite model: an ONNX embedder, the classes, and imprinting, with numpy and onnxruntime."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from imprinting.lite import format as fmt
from imprinting.lite.preprocess import image_mode, to_batch
from imprinting.prediction import Prediction, UnknownClassError  # noqa: F401  (shared with the PyTorch model)


class _Rows:
    """An (n, ...) array that grows by appending rows with capacity doubling."""

    def __init__(self, initial: np.ndarray):
        self._buf = np.array(initial, copy=True)
        self._n = initial.shape[0]

    def __len__(self) -> int:
        return self._n

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self._n]

    def append(self, rows: np.ndarray) -> None:
        k = rows.shape[0]
        if self._n + k > self._buf.shape[0]:
            cap = max(2 * self._buf.shape[0], self._n + k, 16)
            grown = np.zeros((cap, *self._buf.shape[1:]), dtype=self._buf.dtype)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : self._n + k] = rows
        self._n += k

    def delete(self, index: int) -> None:
        self._buf = np.delete(self.view, index, axis=0)
        self._n -= 1


def _session(path: Path, threads: int | None, providers: Sequence[str] | None):
    import onnxruntime as ort

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

    ``imprint(images, name)`` teaches a class (or adds examples to an imprinted one) by
    adding the images' L2-normalized embeddings to the class's float64 running sum; the
    class vector is the normalized sum. ``predict(images)`` returns top-k classes with the
    unknown flag. ``save()`` writes the classes file, atomically, in the format that
    ``imprinting.export.import_classes`` reads into a PyTorch model.
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
        self.manifest = fmt.read_manifest(self.folder)
        self.recipe = fmt.read_preprocess(self.folder)
        files = self.manifest.get("files", {})
        name = files.get("embedder_int8" if quantized else "embedder")
        if not name:
            what = "int8 embedder (export with --quantize)" if quantized else "embedder"
            raise fmt.ExportFormatError(f"{self.folder / fmt.MANIFEST}: the export has no {what}")
        self.quantized = quantized
        self.session = _session(self.folder / name, threads, providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.dim = int(self.manifest["embedding_dim"])
        self.embedder_id = self.manifest.get("embedder_id")
        self.classes_path = Path(classes) if classes is not None else self.folder / files.get("classes", fmt.CLASSES)
        self._load_classes(fmt.load_classes(self.classes_path))

    # -- classes -----------------------------------------------------------------
    def _load_classes(self, data: fmt.ClassesData) -> None:
        if data.dim != self.dim:
            raise fmt.ExportFormatError(f"{self.classes_path}: {data.dim}-d classes for a {self.dim}-d embedder")
        if data.embedder_id and self.embedder_id and data.embedder_id != self.embedder_id:
            raise fmt.ExportFormatError(
                f"{self.classes_path}: the classes were made with another embedder "
                f"({data.embedder_id[:12]}, this export has {self.embedder_id[:12]})"
            )
        self.class_names = list(data.class_names)
        self._index = {n: i for i, n in enumerate(self.class_names)}
        self._weights = _Rows(data.weights)
        self._sums = _Rows(data.sums)
        self._counts = _Rows(data.counts)
        self._scale = _Rows(data.scale)
        self.per_class_scale = data.per_class_scale
        self.initial_scale = data.initial_scale
        self.unknown_threshold = data.unknown_threshold
        self._extra = dict(data.extra)
        self._templates = None

    def classes_data(self) -> fmt.ClassesData:
        """The classes as a ``ClassesData`` (copies)."""
        return fmt.ClassesData(
            class_names=list(self.class_names),
            weights=self.weights.copy(),
            scale=self.scale.copy(),
            sums=self.sums.copy(),
            counts=self.counts.copy(),
            dim=self.dim,
            per_class_scale=self.per_class_scale,
            initial_scale=self.initial_scale,
            unknown_threshold=self.unknown_threshold,
            embedder_id=self.embedder_id,
            extra=dict(self._extra),
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def weights(self) -> np.ndarray:
        """Class vectors (C, D) float32, as stored (normalized at use)."""
        return self._weights.view

    @property
    def sums(self) -> np.ndarray:
        """Per-class float64 sums of L2-normalized embeddings (C, D)."""
        return self._sums.view

    @property
    def counts(self) -> np.ndarray:
        """Examples per class (C,); 0 = trained base class."""
        return self._counts.view

    @property
    def scale(self) -> np.ndarray:
        return self._scale.view

    def has_class(self, name: str) -> bool:
        return name in self._index

    def index_of(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise UnknownClassError(f"unknown class {name!r} (the model has {self.num_classes} classes)") from None

    def is_imprinted(self, name: str) -> bool:
        return int(self.counts[self.index_of(name)]) > 0

    def templates(self) -> np.ndarray:
        """L2-normalized class vectors (C, D) float32."""
        if self._templates is None:
            self._templates = fmt.normalize_rows(self.weights.astype(np.float32))
        return self._templates

    # -- images ------------------------------------------------------------------
    def load_images(self, images: Iterable) -> list:
        """Paths or PIL images -> PIL images in the embedder's mode (errors name the file)."""
        from imprinting.data.images import load_image

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
            raise ValueError("no images to embed")
        out = [
            self.session.run([self.output_name], {self.input_name: batch[i : i + batch_size]})[0]
            for i in range(0, batch.shape[0], batch_size)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)

    def embed(self, images: Sequence, batch_size: int = 32) -> np.ndarray:
        """Unit-length embeddings (N, D) of image files or PIL images."""
        images = list(images)
        if not images:
            raise ValueError("no images to embed")
        out = [self.embed_array(self.preprocess(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
        return np.concatenate(out)

    # -- imprinting --------------------------------------------------------------
    def imprint(self, images: Sequence, name: str) -> int:
        """Teach class ``name`` from image files or PIL images: a new class is added, an
        imprinted class takes the examples. Returns the class index."""
        return self.imprint_embeddings(self.embed(images), name)

    def imprint_embeddings(self, embeddings: np.ndarray, name: str) -> int:
        """``imprint`` from embeddings (n, D) instead of images."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError("the class name is empty")
        e = np.asarray(embeddings)
        if e.ndim != 2 or e.shape[1] != self.dim or e.shape[0] == 0:
            raise ValueError(f"expected embeddings of shape (n >= 1, {self.dim}), got {e.shape}")
        # like ClassSums.add: float32 embeddings, normalized again in float64, summed
        added = fmt.normalize_rows(e.astype(np.float32).astype(np.float64)).sum(axis=0)
        if self.has_class(name):
            index = self.index_of(name)
            if not self.counts[index]:
                raise ValueError(f"class {name!r} is a trained base class; only imprinted classes take examples")
            self.sums[index] += added
            self.counts[index] += e.shape[0]
            self.weights[index] = fmt.normalize_rows(self.sums[index]).astype(np.float32)
        else:
            index = self.num_classes
            self._sums.append(added[None])
            self._counts.append(np.array([e.shape[0]], dtype=np.int64))
            self._weights.append(fmt.normalize_rows(added).astype(np.float32)[None])
            if self.per_class_scale:
                fill = float(self.scale.mean()) if len(self._scale) else self.initial_scale
                self._scale.append(np.array([fill], dtype=np.float32))
            self.class_names.append(name)
            self._index[name] = index
        self._templates = None
        return index

    def remove_class(self, name: str) -> None:
        """Remove an imprinted class (base classes are protected)."""
        index = self.index_of(name)
        if not self.counts[index]:
            raise ValueError(f"class {name!r} is a base class and cannot be removed")
        for rows in (self._weights, self._sums, self._counts):
            rows.delete(index)
        if self.per_class_scale:
            self._scale.delete(index)
        del self.class_names[index]
        self._index = {n: i for i, n in enumerate(self.class_names)}
        self._templates = None

    # -- prediction --------------------------------------------------------------
    def cosines(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(embeddings, dtype=np.float32) @ self.templates().T

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """s * cos(w_c, e): the PyTorch model's logits, (N, C)."""
        return self.scale * self.cosines(embeddings)

    def predict(self, images: Sequence, k: int = 5, unknown_threshold: float | None = None) -> list[Prediction]:
        """Top-k predictions for image files or PIL images."""
        return self.predict_embeddings(self.embed(images), k, unknown_threshold)

    def predict_embeddings(self, embeddings: np.ndarray, k: int = 5, unknown_threshold: float | None = None) -> list[Prediction]:
        if self.num_classes == 0:
            raise ValueError("the model has no classes yet: imprint one first")
        cos = self.cosines(embeddings)
        logits = self.scale * cos
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        k = max(1, min(int(k), self.num_classes))
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        threshold = self.unknown_threshold if unknown_threshold is None else unknown_threshold
        out = []
        for p_row, c_row, i_row in zip(probs, cos, top):
            unknown = threshold is not None and float(c_row.max()) < threshold
            out.append(
                Prediction(
                    [self.class_names[i] for i in i_row],
                    [float(p_row[i]) for i in i_row],
                    [float(c_row[i]) for i in i_row],
                    unknown,
                )
            )
        return out

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
