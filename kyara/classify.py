"""Embeddings -> ranked character guesses, with calibrated confidence and an unknown threshold.

Every character has one to four prototypes: its row of the head if it was trained, the same made
from gray copies of its training faces (models that have a gray head, such as kyara-default from
0.4.0), one made from its gallery images if pictures of it were enrolled (`gallery_prototype`), and
another from their gray copies (`enrolled_prototypes`). A face's score for a character is its best
similarity with the character's colour prototypes or, for a face drawn in gray (`kyara.cut.FaceCut.gray`:
a manga page, gray fan art), with its gray ones where it has them: gray faces meet a character as
it looks in gray, and colour faces are scored as if there were no gray prototypes (letting every
face take the nearer of both cost colour faces: docs/model-card.md). A similarity is a cosine,
or for an enrolled character an estimate of the cosine to that character's centre, which can
exceed 1 slightly (reported capped at 1).
Confidence is the softmax of the scores at a temperature fitted on validation data.

A face is unknown when its best score falls short of what that character's own faces reach: each
character has a typical similarity (the estimated length of its true mean, `estimated_concentration`:
from its training faces, or from its enrolled pictures), and the face is named only if its score is
at least the typical similarity plus the bundle's `unknown_threshold` (a negative margin fitted so
that 95 % of validation faces keep their name). Characters differ: some are drawn alike in every
picture, others vary, and one threshold for all let a new character pass as a loose one. With
95 % of known faces kept, this answers 59 % of the faces of series never trained on unknown, where
one threshold answered 40 % (AUROC 0.934 against 0.904, colour prototypes only; 0.937 with gray
ones as above, docs/heldout-characters.md). Models without typical similarities (before 0.3)
compare the best similarity itself with the threshold.
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


Prototype = tuple[np.ndarray, bool]
"""A prototype of a character, and whether it is a gray one (made from gray copies of faces)."""


def trained_prototypes(head: np.ndarray, gray_head: np.ndarray | None, row: int) -> list[Prototype]:
    """A trained character's prototypes: its row of the head, and of the gray head if there is one."""
    return [(head[row], False)] if gray_head is None else [(head[row], False), (gray_head[row], True)]


def enrolled_prototypes(colour: np.ndarray, gray: np.ndarray, prior: float) -> list[Prototype]:
    """An enrolled character's prototypes (`gallery_prototype`): of its pictures' unit embeddings
    `colour`, and of their gray copies' `gray` where they were made (rows of zeros: not made).
    Enrolled from five colour pictures each, characters of series never trained on are named on
    gray copies of their other pictures 0.79 of the time with the gray prototype
    (docs/heldout-characters.md), 0.69 without it (an exploratory run)."""
    own, made = [(gallery_prototype(colour, prior), False)], gray[gray.any(axis=1)]
    return [*own, (gallery_prototype(made, prior), True)] if len(made) else own


def _group_starts(owners: np.ndarray) -> np.ndarray:
    """Where each owner's run of prototypes begins (owners ascending)."""
    return np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]]) if len(owners) else owners


def _best(similarities: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Each row's best similarity within each run of columns beginning at `starts`."""
    return np.maximum.reduceat(similarities, starts, axis=1)


class Classifier:
    def __init__(
        self,
        labels: list[str],
        prototypes: np.ndarray,
        temperature: float,
        unknown_threshold: float,
        owners: np.ndarray | None = None,
        typical: np.ndarray | None = None,
        gray_kind: np.ndarray | None = None,
    ) -> None:
        """`prototypes[i]` belongs to `labels[owners[i]]` (owners ascending; default: one each) and
        is a gray one if `gray_kind[i]` (default: none is); `typical[j]` is `labels[j]`'s typical
        similarity (None: the threshold is absolute)."""
        self.labels = labels
        self.typical = np.zeros(len(labels)) if typical is None else np.asarray(typical, np.float64)
        self.prototypes = prototypes.astype(np.float32)
        self.temperature = temperature
        self.unknown_threshold = unknown_threshold
        owners = np.arange(len(labels)) if owners is None else np.asarray(owners)
        self.gray_kind = np.zeros(len(owners), bool) if gray_kind is None else np.asarray(gray_kind, bool)
        self._colour, self._gray = np.flatnonzero(~self.gray_kind), np.flatnonzero(self.gray_kind)
        self._colour_starts = _group_starts(owners[self._colour])
        self._gray_starts, self._gray_owners = _group_starts(owners[self._gray]), np.unique(owners[self._gray])
        if len(self._colour_starts) != len(labels):
            raise ValueError("every character needs a colour prototype")

    @classmethod
    def of_characters(
        cls,
        labels: list[str],
        prototypes: list[list[Prototype]],
        temperature: float,
        unknown_threshold: float,
        typical: np.ndarray | None,
        dim: int,
    ) -> Classifier:
        """`prototypes[j]`: `labels[j]`'s prototypes (each character has at least one)."""
        flat = [prototype for own in prototypes for prototype in own]
        vectors = np.asarray([vector for vector, _ in flat], np.float32).reshape(len(flat), dim)
        owners = np.repeat(np.arange(len(labels)), [len(own) for own in prototypes])
        gray_kind = np.array([is_gray for _, is_gray in flat], bool)
        return cls(labels, vectors, temperature, unknown_threshold, owners, typical, gray_kind)

    @classmethod
    def trained(
        cls, labels: list[str], head: np.ndarray, gray_head: np.ndarray | None, typical: np.ndarray | None
    ) -> Classifier:
        """The trained characters alone, at temperature 1 and threshold 0: what calibration scores."""
        prototypes = [trained_prototypes(head, gray_head, row) for row in range(len(labels))]
        return cls.of_characters(labels, prototypes, 1.0, 0.0, typical, head.shape[1])

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> Classifier:
        labels = bundle.all_labels()
        head_rows = {name: row for row, name in enumerate(bundle.labels)}
        prototypes, typical = [], []
        for name in labels:
            row = head_rows.get(name)
            members = [i for i, g in enumerate(bundle.gallery_labels) if g == name]
            own = [] if row is None else trained_prototypes(bundle.head, bundle.gray_head, row)
            if members:
                own += enrolled_prototypes(bundle.gallery[members], bundle.gallery_gray[members], bundle.concentration)
            prototypes.append(own)
            if bundle.typical is not None:
                typical.append(
                    bundle.typical[row]
                    if row is not None
                    else estimated_concentration(bundle.gallery[members], bundle.concentration)
                )
        return cls.of_characters(
            labels,
            prototypes,
            bundle.temperature,
            bundle.unknown_threshold,
            np.asarray(typical) if bundle.typical is not None else None,
            bundle.embedding_dim,
        )

    def similarities(self, embeddings: np.ndarray, gray: np.ndarray | None = None) -> np.ndarray:
        """Each embedding's similarity with each label (N x labels): the best with that label's
        colour prototypes, or with its gray ones for the faces that `gray` marks as drawn in gray
        (`kyara.cut.FaceCut.gray`) if it has gray ones. A cosine, or for an enrolled character
        the estimated cosine to its centre (uncapped, so that explanations and rankings keep their
        differences)."""
        every = embeddings @ self.prototypes.T
        colour = every[:, self._colour] if len(self._gray) else every
        similarities = colour if len(self._colour_starts) == colour.shape[1] else _best(colour, self._colour_starts)
        if gray is None or not len(self._gray) or not np.any(gray):
            return similarities
        rows = np.flatnonzero(gray)
        similarities[np.ix_(rows, self._gray_owners)] = _best(every[np.ix_(rows, self._gray)], self._gray_starts)
        return similarities

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

    def predict(self, embeddings: np.ndarray, top_k: int = 5, gray: np.ndarray | None = None) -> list[Prediction]:
        """Each embedding's decision; `gray` marks the faces drawn in gray (`similarities`)."""
        if len(self.labels) == 0:
            return [Prediction(None, 0.0, 0.0, []) for _ in embeddings]
        similarities = self.similarities(embeddings, gray)
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
