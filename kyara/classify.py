"""Embeddings -> ranked character guesses, with calibrated confidence and an unknown threshold.

Every character has one to three prototypes: its row of the head if it was trained, the same made
from gray copies of its training faces (models that have a gray head, such as kyara-default from
0.4.0: gray and manga faces are named better, docs/model-card.md), and one made from its gallery
images if pictures of it were enrolled (`gallery_prototype`). A face's score for a
character is its best similarity with them: a cosine, or for an enrolled character an estimate of
the cosine to that character's centre, which can exceed 1 slightly (reported capped at 1).
Confidence is the softmax of the scores at a temperature fitted on validation data.

A face is unknown when its best score falls short of what that character's own faces reach: each
character has a typical similarity (the estimated length of its true mean, `estimated_concentration`:
from its training faces, or from its enrolled pictures), and the face is named only if its score is
at least the typical similarity plus the bundle's `unknown_threshold` (a negative margin fitted so
that 95 % of validation faces keep their name). Characters differ: some are drawn alike in every
picture, others vary, and one threshold for all let a new character pass as a loose one. With
95 % of known faces kept, this answers 59 % of the faces of series never trained on unknown, where
one threshold answered 40 % (AUROC 0.934 against 0.904; docs/heldout-characters.md, measured with
colour prototypes only: the gray ones leave the AUROC on colour faces at 0.935). Models
without typical similarities (before 0.3) compare the best similarity itself with the threshold.
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


MIN_CONCENTRATION = 0.3
"""Floor of an enrolled character's estimated concentration: a few wildly different pictures
must not inflate its scores without bound."""


def estimated_concentration(vectors: np.ndarray, prior: float) -> float:
    """The length r of the true mean of the unit `vectors`' distribution, estimated from them.

    The mean of n unit vectors has expected squared length r^2 + (1 - r^2) / n, so its own
    length runs high when n is small. From one vector r cannot be estimated: `prior` is used.
    """
    count, mean = len(vectors), vectors.mean(axis=0)
    squared = (count * float(mean @ mean) - 1) / (count - 1) if count > 1 else prior**2
    return float(np.sqrt(min(max(squared, MIN_CONCENTRATION**2), 1.0)))


def gallery_prototype(vectors: np.ndarray, prior: float) -> np.ndarray:
    """The prototype of a character enrolled from unit `vectors`: their mean, divided by the
    estimated length of the character's true mean, so that its dot product with a face
    estimates the cosine to the character's centre. The plain cosine to the mean of n pictures
    is biased low when n is small, so characters enrolled from five pictures lost to trained
    ones. `prior` is the model's typical concentration, for a single picture."""
    return vectors.mean(axis=0) / estimated_concentration(vectors, prior)


def trained_prototypes(head: np.ndarray, gray_head: np.ndarray | None, row: int) -> list[np.ndarray]:
    """A trained character's prototypes: its row of the head, and of the gray head if there is one."""
    return [head[row]] if gray_head is None else [head[row], gray_head[row]]


class Classifier:
    def __init__(
        self,
        labels: list[str],
        prototypes: np.ndarray,
        temperature: float,
        unknown_threshold: float,
        owners: np.ndarray | None = None,
        typical: np.ndarray | None = None,
    ) -> None:
        """`prototypes[i]` belongs to `labels[owners[i]]` (owners ascending; default: one each);
        `typical[j]` is `labels[j]`'s typical similarity (None: the threshold is absolute)."""
        self.labels = labels
        self.typical = np.zeros(len(labels)) if typical is None else np.asarray(typical, np.float64)
        self.prototypes = prototypes.astype(np.float32)
        self.temperature = temperature
        self.unknown_threshold = unknown_threshold
        owners = np.arange(len(labels)) if owners is None else np.asarray(owners)
        self._starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]]) if len(owners) else owners

    @classmethod
    def trained(
        cls, labels: list[str], head: np.ndarray, gray_head: np.ndarray | None, typical: np.ndarray | None
    ) -> Classifier:
        """The trained characters alone, at temperature 1 and threshold 0: what calibration scores."""
        rows = [trained_prototypes(head, gray_head, row) for row in range(len(labels))]
        prototypes = np.asarray([p for own in rows for p in own], np.float32).reshape(-1, head.shape[1])
        owners = np.repeat(np.arange(len(labels)), [len(own) for own in rows])
        return cls(labels, prototypes, 1.0, 0.0, owners, typical)

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> Classifier:
        labels = bundle.all_labels()
        head_rows = {name: row for row, name in enumerate(bundle.labels)}
        rows, owners, typical = [], [], []
        for index, name in enumerate(labels):
            row = head_rows.get(name)
            members = [i for i, g in enumerate(bundle.gallery_labels) if g == name]
            if row is not None:
                own = trained_prototypes(bundle.head, bundle.gray_head, row)
                rows += own
                owners += [index] * len(own)
            if members:
                rows.append(gallery_prototype(bundle.gallery[members], bundle.concentration))
                owners.append(index)
            if bundle.typical is not None:
                typical.append(
                    bundle.typical[row]
                    if row is not None
                    else estimated_concentration(bundle.gallery[members], bundle.concentration)
                )
        prototypes = np.asarray(rows, np.float32).reshape(len(rows), bundle.embedding_dim)
        return cls(
            labels,
            prototypes,
            bundle.temperature,
            bundle.unknown_threshold,
            np.asarray(owners, np.int64),
            np.asarray(typical) if bundle.typical is not None else None,
        )

    def similarities(self, embeddings: np.ndarray) -> np.ndarray:
        """Best similarity of each embedding with each label's prototypes (N x labels): a cosine,
        or for an enrolled character the estimated cosine to its centre (uncapped, so that
        explanations and rankings keep their differences)."""
        every = embeddings @ self.prototypes.T
        if len(self._starts) == every.shape[1]:
            return every
        return np.maximum.reduceat(every, self._starts, axis=1)

    def familiarity(self, similarities: np.ndarray) -> np.ndarray:
        """Each face's best score minus its best character's typical similarity: the face is named
        when this reaches `unknown_threshold`."""
        best = similarities.argmax(axis=1)
        return similarities[np.arange(len(best)), best] - self.typical[best]

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
        familiar = self.familiarity(similarities) >= self.unknown_threshold
        predictions = []
        for sims, probs, known in zip(similarities, probabilities, familiar):
            order = np.argsort(-probs)[: max(1, top_k)]
            best = int(order[0])
            predictions.append(
                Prediction(
                    label=self.labels[best] if known else None,
                    confidence=float(probs[best]),
                    similarity=min(float(sims[best]), 1.0),
                    top_k=[Guess(self.labels[i], float(probs[i])) for i in order],
                )
            )
        return predictions
