"""The honesty checks of kyara's heat maps (after Adebayo et al., 2018, "Sanity Checks for
Saliency Maps"): a deletion curve, a copy of the model with randomized weights, and the rank
correlation of two maps. Used by tests/test_explain.py and docs/make_explanations.py."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter

from kyara.embedding import Embedder
from kyara.errors import KyaraError
from kyara.explanation import GREY, Score, input_pixels

DELETION_BLUR = 1 / 12
"""Blur radius of the deletion baseline, as a share of the crop side."""


def deletion_curve(
    embedder: Embedder,
    crop: Image.Image,
    heatmap: np.ndarray,
    score: Score,
    steps: int = 16,
    fill: Literal["blur", "grey"] = "blur",
) -> np.ndarray:
    """The score as the crop's pixels are replaced by a blurred copy (or flat grey), highest
    `heatmap` first: `steps + 1` values from the intact crop to the fully replaced one. A map that
    finds what the score rests on makes the curve fall faster than a random order does. Blur is
    the fair default: grey dots scattered at random are a pattern of their own, which the network
    reacts to more than to the loss of the pixels under them."""
    size = embedder.input_size
    if heatmap.shape != (size, size):
        raise KyaraError(f"the heat map is {heatmap.shape}, the model sees {size} x {size}")
    pixels = input_pixels(crop, size)
    if fill == "blur":
        replacement = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(size * DELETION_BLUR)))
    else:
        replacement = np.full_like(pixels, round(GREY))
    rank = np.empty(size * size, np.int64)
    rank[np.argsort(-heatmap.ravel(), kind="stable")] = np.arange(size * size)
    counts = np.round(np.linspace(0, size * size, steps + 1)).astype(np.int64)
    deleted = (rank[None, :] < counts[:, None]).reshape(steps + 1, size, size, 1)
    return score(embedder.embed([Image.fromarray(a) for a in np.where(deleted, replacement, pixels)]))


def deletion_area(curve: np.ndarray) -> float:
    """Area under a deletion curve rescaled to run from 1 (intact) to 0 (all deleted): lower means
    the map found the score's support sooner. NaN when deleting everything leaves the score as is."""
    span = float(curve[0] - curve[-1])
    if abs(span) < 1e-6:
        return math.nan
    scaled = (np.asarray(curve, np.float64) - curve[-1]) / span
    return float((scaled[1:] + scaled[:-1]).mean() / 2)


def randomized_model(model: bytes, share: float = 1.0, seed: int = 0) -> bytes:
    """A copy of an ONNX embedder whose top `share` of weight layers (Conv, Gemm, MatMul; counted
    from the output, as in cascading randomization) hold random values of the same mean and spread.
    Needs the `onnx` package (in the `train` and `test` extras)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise KyaraError("randomizing a model needs the onnx package: pip install onnx") from exc
    graph = onnx.load_from_string(model)
    stored = {tensor.name for tensor in graph.graph.initializer}
    layers = [
        [name for name in node.input[1:] if name in stored]
        for node in graph.graph.node
        if node.op_type in ("Conv", "Gemm", "MatMul")
    ]
    chosen = {name for layer in layers[len(layers) - max(1, round(share * len(layers))) :] for name in layer}
    rng = np.random.default_rng(seed)
    for tensor in graph.graph.initializer:
        if tensor.name in chosen:
            values = numpy_helper.to_array(tensor)
            noise = rng.normal(values.mean(), values.std() or 1e-3, values.shape).astype(values.dtype)
            tensor.CopyFrom(numpy_helper.from_array(noise, tensor.name))
    return graph.SerializeToString()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of the same shape."""
    ranks = [np.argsort(np.argsort(m.ravel(), kind="stable"), kind="stable") for m in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])
