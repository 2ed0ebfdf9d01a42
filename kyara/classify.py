"""Embeddings -> ranked character guesses, with calibrated confidence and an unknown threshold.

Every character has one or two unit vectors: its row of the head if it was trained, and the mean
of its gallery images if pictures of it were enrolled. A face's score for a character is the best
cosine similarity with its vectors.
Confidence is the softmax of the scores at a temperature fitted on validation data; a face whose
best similarity is below the bundle's `unknown_threshold` gets no label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kyara.bundle import ModelBundle


@dataclass(frozen=True)
class Guess:
    label: str
    confidence: float

    def to_dict(self) -> dict:
        return {"label": self.label, "confidence": round(self.confidence, 4)}


@dataclass(frozen=True)
class Prediction:
    """The decision for one embedding: `label` is None when the character is unknown."""

    label: str | None
    confidence: float
    similarity: float
    top_k: list[Guess]


class Classifier:
    def __init__(
        self,
        labels: list[str],
        prototypes: np.ndarray,
        temperature: float,
        unknown_threshold: float,
        owners: np.ndarray | None = None,
    ) -> None:
        """`prototypes[i]` belongs to `labels[owners[i]]` (owners ascending; default: one each)."""
        self.labels = labels
        self.prototypes = prototypes.astype(np.float32)
        self.temperature = temperature
        self.unknown_threshold = unknown_threshold
        owners = np.arange(len(labels)) if owners is None else np.asarray(owners)
        self._starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]]) if len(owners) else owners

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> Classifier:
        labels = bundle.all_labels()
        rows, owners = [], []
        for index, name in enumerate(labels):
            if name in bundle.labels:
                rows.append(bundle.head[bundle.labels.index(name)])
                owners.append(index)
            members = [i for i, g in enumerate(bundle.gallery_labels) if g == name]
            if members:
                rows.append(bundle.gallery[members].mean(axis=0))
                owners.append(index)
        prototypes = np.asarray(rows, np.float32).reshape(len(rows), bundle.embedding_dim)
        prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
        return cls(labels, prototypes, bundle.temperature, bundle.unknown_threshold, np.asarray(owners, np.int64))

    def similarities(self, embeddings: np.ndarray) -> np.ndarray:
        """Best cosine similarity of each embedding with each label's vectors (N x labels)."""
        every = embeddings @ self.prototypes.T
        if len(self._starts) == every.shape[1]:
            return every
        return np.maximum.reduceat(every, self._starts, axis=1)

    def probabilities(self, similarities: np.ndarray) -> np.ndarray:
        logits = similarities / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def predict(self, embeddings: np.ndarray, top_k: int = 5) -> list[Prediction]:
        if len(self.labels) == 0:
            return [Prediction(None, 0.0, 0.0, []) for _ in embeddings]
        similarities = self.similarities(embeddings)
        probabilities = self.probabilities(similarities)
        predictions = []
        for sims, probs in zip(similarities, probabilities):
            order = np.argsort(-probs)[: max(1, top_k)]
            best = int(order[0])
            known = sims[best] >= self.unknown_threshold
            predictions.append(
                Prediction(
                    label=self.labels[best] if known else None,
                    confidence=float(probs[best]),
                    similarity=float(sims[best]),
                    top_k=[Guess(self.labels[i], float(probs[i])) for i in order],
                )
            )
        return predictions
