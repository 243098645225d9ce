"""Imprinting: class weights from the embeddings of a few examples (paper Sec. 3.2).

The weight of a novel class is the re-normalized mean of the L2-normalized embeddings of
its examples. The running sums and counts that let examples be added one call at a time
live in the class table (``imprinting.classes.ClassTable``); these are the batch forms.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imprinting import heads
from imprinting.classes import ClassTable
from imprinting.data.folder import read_folder
from imprinting.data.images import ImageError
from imprinting.errors import ClassError
from imprinting.layers import power_transform


def normalized_mean(embeddings: torch.Tensor) -> torch.Tensor:
    """normalize(mean(normalize(e_i))) for embeddings (n, D) -> (D,)."""
    return F.normalize(F.normalize(embeddings.double(), dim=1).sum(dim=0), dim=0).float()


def imprint_weights(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Imprinted weights for every class at once: (C, D) from embeddings (N, D) and labels (N,).

    A class with no example gets a zero row (it cannot be imprinted).
    """
    sums = torch.zeros(num_classes, embeddings.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels.long(), F.normalize(embeddings.double(), dim=1))
    return F.normalize(sums, dim=1).float()


def random_weights(num_classes: int, dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Xavier-uniform random class vectors, (C, D): the paper's Rand baseline."""
    return nn.init.xavier_uniform_(torch.empty(num_classes, dim), generator=generator)


def embed_files(model, files: Sequence, views: int = 1, batch_size: int = 32,
                progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """``model.embed_images`` of ``files`` (decoded in parallel with the forward pass, in
    batches of ``batch_size``), calling ``progress(k)`` after each batch of k images."""
    if not len(files):
        raise ImageError("no images to embed")
    return model.embed_images(list(files), views=views, batch_size=batch_size, progress=progress)


def imprint_folder(model, folder, views: int = 1, progress: Callable[[int], None] | None = None,
                   head: str | None = None) -> dict:
    """Imprint one class per sub-folder of ``folder`` (a path, or the ``ImageSet`` that
    ``imprinting.data.folder.read_folder`` made of it: its name, its images), embedding every
    image in one pass and calling ``progress(k)`` after each batch of k images. With ``head``
    (a name of ``imprinting.heads.HEADS``), the head is then fitted on these examples
    (``fit_model_head``). Returns ``{"classes": the class names in order, "head": what the head
    choice measured or None, "embeddings": (N * views, D), "labels": (N * views,) class indices}``."""
    images = folder if hasattr(folder, "class_names") else read_folder(folder)
    embeddings = embed_files(model, images.paths, views, progress=progress)  # each image's views together
    labels = np.repeat(np.asarray(images.labels), views)
    for label, name in enumerate(images.class_names):
        model.imprint_embeddings(name, embeddings[torch.from_numpy(labels == label)])
    report = fit_model_head(model, embeddings.numpy(), labels, head, names=images.class_names) if head is not None else None
    return {"classes": list(images.class_names), "head": report, "embeddings": embeddings, "labels": labels}


def fit_model_head(model, embeddings, labels, choice: str = "auto", source: str = "examples", seed: int = 0,
                   names=None) -> dict:
    """Fit the model's closed-form head (``imprinting.heads.fit_head``) on labelled embeddings
    the model made (its taught examples, or its base training data) and install it in the
    class table (or keep the paper's head, as the choice rule says). ``names[label]`` is the
    class of each label value (default: the model's classes in order); the head's correction
    rule knows its reference rows by these names. Returns what was measured."""
    if choice != "normalized-mean" and model.spec.power is None:
        raise ClassError("the closed-form heads work on power-transformed embeddings: create the model with "
                         "a head (imprint create --head auto) or power=0.5")
    try:
        names = list(model.class_names) if names is None else list(names)
        head, report = heads.fit_head(embeddings, labels, choice, source, seed, names=names)
    except ValueError as exc:
        raise ClassError(str(exc)) from None
    model.classes.set_head(head)
    return report


def fit_trained_head(model, features, labels, choice: str = "auto", seed: int = 0) -> dict:
    """After ``imprint train``: fit the closed-form head on the base training data (backbone
    ``features`` (N, F) and ``labels``). The choice rule (``imprinting.heads.fit_head``) runs on
    the power-transformed embeddings of the trained embedder; if it keeps the paper's head, the
    model is left as trained. Otherwise the embedder gets the power transform and every class
    becomes the class mean of its training embeddings, scored by the whitened head (so the
    classes then take examples like any imprinted class). Returns what was measured."""
    if model.spec.power is not None:
        raise ClassError("this model already has a power-transformed embedder")
    with torch.no_grad():  # the embedding the model will have once it takes the power transform
        z = power_transform(model.embedder.forward_head(torch.as_tensor(features, dtype=torch.float32)), 0.5)
    y = np.asarray(labels)
    try:
        head, report = heads.fit_head(z.numpy(), y, choice, "base", seed, names=list(model.class_names))
    except ValueError as exc:
        raise ClassError(str(exc)) from None
    if head is None:
        return report
    del model.embedder.power
    model.embedder.register_buffer("power", torch.tensor(0.5))
    model.spec = dataclasses.replace(model.spec, power=0.5)
    names = model.class_names
    table = ClassTable(model.embedder.dim, model.classes.per_class_scale, model.spec.scale)
    for c, name in enumerate(names):
        table.add(name, z.numpy()[y == c])
    table.set_head(head)
    model.set_classes(table, copy=False)
    return report


__all__ = [
    "fit_trained_head",
    "embed_files",
    "fit_model_head",
    "imprint_folder",
    "imprint_weights",
    "normalized_mean",
    "random_weights",
]
