"""From labelled pixels to a model bundle: train, calibrate on validation data, export.

Shared by `kyara train` and the build of the default model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from torch import nn

import kyara
from kyara.bundle import ModelBundle
from kyara.classify import Classifier, estimated_concentration
from kyara.cut import gray_copy, gray_faces
from kyara.metrics import fit_temperature, threshold_at_acceptance
from kyara.train.data import LabelledImages, split_by_group
from kyara.train.readout import fit_readout
from kyara.train.trainer import (
    EmbeddingNet,
    TrainConfig,
    arrays_to_state,
    embed_pixels,
    export_onnx,
    state_to_arrays,
    train,
)

KNOWN_ACCEPTANCE = 0.95
"""Share of validation faces of known characters that must keep their name (the rest: unknown)."""
DEFAULT_TEMPERATURE = 0.05
MIN_IMAGES_PER_CHARACTER = 5


def package(
    net: EmbeddingNet,
    head: np.ndarray,
    classes: list[str],
    train_set: LabelledImages,
    val: LabelledImages,
    config: TrainConfig,
    readout: str | None = None,
) -> ModelBundle:
    """Export the embedder, calibrate confidence and the unknown threshold on `val`, bundle it all.

    `readout` "layer": the trained layer and head are exported (what a `linear` model does:
    MoeFlow's method, kept as the baseline). "features": whitened backbone features, each
    character being the mean of its training faces (kyara/train/readout.py); the default for a
    fine-tuned network.
    """
    readout = readout or ("features" if config.mode == "finetune" else "layer")
    embedder: nn.Module = net
    concentration, typical, gray_head = 1.0, None, None
    if readout == "features":
        embedder, embeddings = fit_readout(net, train_set.pixels, config.input_size)
        head, typical = class_means(embeddings, train_set)
        concentration = float(np.median(typical))
        gray_head = gray_prototypes(lambda pixels: embed_pixels(embedder, pixels, config.input_size), train_set)
    val_top1 = None
    if len(val.labels):
        val_embeddings = embed_pixels(embedder, val.pixels, config.input_size)
        temperature, threshold, val_top1 = calibrated(classes, head, gray_head, typical, val_embeddings, val)
    else:
        # Nothing to calibrate on: name every face (with typical similarities the threshold is a
        # margin, and -1 lets any cosine pass).
        temperature, threshold = DEFAULT_TEMPERATURE, (0.0 if typical is None else -1.0)
    return ModelBundle(
        onnx=export_onnx(embedder, config.input_size),
        labels=classes,
        head=head,
        unknown_threshold=threshold,
        temperature=temperature,
        input_size=config.input_size,
        concentration=concentration,
        typical=None if typical is None else typical.tolist(),
        gray_head=gray_head,
        weights=state_to_arrays(net),
        # The exported readout's own score: a fine-tuned model's features are not the trained layer
        # that early stopping watched.
        metadata={"metrics": {"val_top1": val_top1}},
    )


def calibrated(
    classes: list[str],
    head: np.ndarray,
    gray_head: np.ndarray | None,
    typical: np.ndarray | None,
    val_embeddings: np.ndarray,
    val: LabelledImages,
) -> tuple[float, float, float]:
    """The softmax temperature and the unknown threshold fitted on validation faces of the trained
    characters (`KNOWN_ACCEPTANCE` of them keep their name), and their top-1. Faces drawn in gray
    are named as recognition names them, against gray prototypes."""
    classifier = Classifier.trained(classes, head, gray_head, typical)
    similarities = classifier.similarities(val_embeddings, gray_faces(val.pixels))
    threshold = threshold_at_acceptance(classifier.familiarity(similarities), KNOWN_ACCEPTANCE)
    top1 = float((similarities.argmax(axis=1) == val.labels).mean())
    return fit_temperature(similarities, val.labels), threshold, top1


def gray_prototypes(embed: Callable[[np.ndarray], np.ndarray], train_set: LabelledImages) -> np.ndarray:
    """Each character's normalised mean embedding (`embed`: uint8 NHWC pixels -> unit vectors) of
    gray copies of its training faces. A gray face (a manga page) lies nearer its character's gray
    faces than its colour ones: on the default model's test split, gray copies were named right
    0.825 of the time against these, 0.788 against the colour means alone (docs/model-card.md)."""
    pixels, chunk = train_set.pixels, 1024  # in chunks: a gray copy of every face at once takes gigabytes
    gray = [embed(gray_copies(pixels[i : i + chunk])) for i in range(0, len(pixels), chunk)]
    return class_means(np.concatenate(gray), train_set)[0]


def gray_copies(pixels: np.ndarray) -> np.ndarray:
    """uint8 NHWC pixels in gray, each as `kyara.cut.gray_copy` makes it (three channels)."""
    return np.stack([np.asarray(gray_copy(Image.fromarray(picture))) for picture in pixels]) if len(pixels) else pixels


def class_means(embeddings: np.ndarray, data: LabelledImages) -> tuple[np.ndarray, np.ndarray]:
    """Each character's normalised mean embedding, and the estimated length of its true mean (how
    tightly its faces cluster: its typical similarity, kyara.classify)."""
    means, lengths = [], []
    for label, name in enumerate(data.classes):
        members = embeddings[data.labels == label]
        if len(members) == 0:
            raise kyara.KyaraError(f"{name}: no training picture left after the validation split; add pictures")
        mean = members.mean(axis=0)
        means.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        lengths.append(estimated_concentration(members, prior=1.0) if len(members) > 1 else np.nan)
    lengths = np.asarray(lengths)
    # One picture says nothing of how a character varies: it gets the typical character's value.
    measured = lengths[~np.isnan(lengths)]
    lengths[np.isnan(lengths)] = float(np.median(measured)) if len(measured) else 1.0
    return np.asarray(means, np.float32), lengths


def fit_folders(
    data: LabelledImages,
    config: TrainConfig,
    start: ModelBundle | None = None,
    val_fraction: float = 0.15,
    checkpoint: Path | None = None,
    name: str = "kyara-custom",
) -> ModelBundle:
    """Train a model on `data` (split into train/validation by near-duplicate group).

    `start`: fine-tune from this bundle's network (its anime backbone) instead of ImageNet.
    """
    train_idx, val_idx = split_by_group(data.labels, data.groups, (1 - val_fraction, val_fraction), config.seed)
    if start is not None:
        if "project.weight" not in start.weights:
            raise kyara.ModelError("the starting model carries no network weights to fine-tune from")
        backbone = start.metadata.get("backbone", config.backbone)
        # The network's own layer width: the head's may be a readout's (fit.package).
        config = replace(config, backbone=backbone, embedding_dim=int(start.weights["project.weight"].shape[0]))
    initial = arrays_to_state(start.weights) if start is not None else None
    result = train(data.subset(train_idx), data.subset(val_idx), config, start=initial, checkpoint=checkpoint)
    bundle = package(result.net, result.head, data.classes, data.subset(train_idx), data.subset(val_idx), config)
    bundle.metadata = {
        "name": name,
        "version": "1",
        "kyara_version": kyara.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": config.backbone,
        "training": {
            "started_from": start.name if start is not None else "imagenet",
            "images": {"train": len(train_idx), "val": len(val_idx)},
            "characters": data.counts(),
            "skipped": [str(path) for path, _ in data.skipped],
            "config": asdict(config),
            "history": result.history,
            "seconds": round(result.seconds, 1),
        },
        "metrics": bundle.metadata["metrics"],
    }
    return bundle


def too_few(data: LabelledImages, minimum: int = MIN_IMAGES_PER_CHARACTER) -> dict[str, int]:
    """Characters with fewer than `minimum` images: they train, but poorly and untested."""
    return {name: count for name, count in data.counts().items() if count < minimum}
