"""Face crop -> L2-normalised embedding, with the bundle's ONNX model on ONNX Runtime (no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from kyara.errors import ModelError
from kyara.runtime import open_session


class Embedder:
    """Runs the embedder of a model bundle. `embed` takes RGB crops of any size."""

    def __init__(self, onnx: bytes, input_size: int, threads: int | None = None) -> None:
        self._session = open_session(onnx, "the model's embedder", threads)
        self._input = self._session.get_inputs()[0].name
        self.input_size = input_size
        try:  # a batch of two: an embedder fixed to one picture would fail on the second face
            probe = self._session.run(None, {self._input: np.zeros((2, 3, input_size, input_size), np.float32)})[0]
        except Exception as exc:
            raise ModelError(f"the model's embedder does not run on batches of {input_size} px input: {exc}") from exc
        if probe.ndim != 2 or len(probe) != 2:
            raise ModelError(f"the model's embedder returns shape {probe.shape}, expected (batch, dimension)")
        self.dim = int(probe.shape[1])

    batch_size = 32
    """Crops run at once (`embed`'s default). ONNX Runtime keeps the memory of the largest batch
    each thread has run, several MB per crop: the server runs smaller batches."""

    def embed(self, crops: Sequence[Image.Image], batch_size: int | None = None) -> np.ndarray:
        """One unit vector per crop, as an N x D float32 array."""
        batch_size = batch_size or self.batch_size
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        chunks = [
            self._session.run(None, {self._input: self.to_input(crops[i : i + batch_size])})[0]
            for i in range(0, len(crops), batch_size)
        ]
        vectors = np.concatenate(chunks).astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def to_input(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """RGB crops -> float32 N x 3 x S x S in [0, 1], as the model was trained."""
        return crops_input(crops, self.input_size)


def crops_input(crops: Sequence[Image.Image], side: int) -> np.ndarray:
    """Face crops as kyara's face networks take them (the embedder, the landmark network): each
    resized to `side` x `side`, float32 N x 3 x side x side, RGB in [0, 1]."""
    size = (side, side)
    arrays = [np.asarray(crop.convert("RGB").resize(size, Image.Resampling.BILINEAR), np.float32) for crop in crops]
    return np.stack(arrays).transpose(0, 3, 1, 2) / 255.0
