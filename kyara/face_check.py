"""The face check: a second look at the CNN detector's unsure candidates, with the eyes of the
recognizer (`--detector cnn-checked`).

The CNN's score separates faces from hands, buttons and speech bubbles well on pictures like its
training pictures, less well on others. Each candidate scoring inside the check's `band` is cut
as recognition cuts a face and embedded by the shipped model's embedder, which learned faces from
148 characters' crops; a logistic regression on that embedding and the CNN's logit gives the
probability that it is a face. Candidates above the band are kept as they are and those below
dropped, so only the band costs embeddings (about two a picture). A checked face's score is its
probability mapped into the band (`rescored`), so that it ranks below every face the CNN was sure
of and "most face-like first" keeps its meaning. The check and its settings travel together in
`models/face-check.json`, made by tools/face_check_study.py (docs/detection.md says what it gains
and costs).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from kyara.bundle import shipped_embedder
from kyara.cut import cut_face
from kyara.detection import CnnDetector, DetectedFace
from kyara.embedding import Embedder
from kyara.errors import KyaraError, ModelError
from kyara.runtime import DEFAULT_PRECISION, FLOAT32, check_precision

FACE_CHECK = Path(__file__).parent / "models" / "face-check.json"


def embedder_digest(onnx: bytes) -> str:
    """Which embedder a check was fitted on: the features it reads are that network's."""
    return hashlib.sha256(onnx).hexdigest()[:16]


@functools.cache
def _shipped_digest() -> str:
    """`embedder_digest` of the shipped embedder, hashed once however many detectors are made."""
    return embedder_digest(shipped_embedder().onnx)


def logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, np.float64), 1e-4, 1 - 1e-4)
    return np.log(clipped / (1 - clipped))


def rescored(band: tuple[float, float], scores: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The scores a checked detection reports: the CNN's at or above the band, 0 under it, and in
    it the check's probability mapped into the band (0 -> its bottom, 1 -> its top)."""
    low, high = band
    scores = np.asarray(scores, np.float64)
    inside = low + (high - low) * np.asarray(probabilities, np.float64)
    return np.where(scores >= high, scores, np.where(scores < low, 0.0, inside))


def _fraction(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise KyaraError(f"{what} must be a number from 0 to 1, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class FaceCheck:
    """A logistic regression on [embedding, logit of the CNN's score] (`weights`, `bias`) for the
    candidates scoring in [band[0], band[1]); a face is kept when its `rescored` score reaches
    `min_score`. `embedder`: the digest of the embedder it was fitted on."""

    weights: np.ndarray
    bias: float
    band: tuple[float, float]
    min_score: float
    embedder: str

    @classmethod
    def load(cls, path: Path = FACE_CHECK) -> FaceCheck:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            low, high = (_fraction(value, "the band's ends") for value in saved["band"])
            check = cls(
                np.asarray(saved["weights"], np.float64),
                float(saved["bias"]),
                (low, high),
                _fraction(saved["min_score"], "min_score"),
                str(saved["embedder"]),
            )
        except (OSError, ValueError, KeyError, TypeError, KyaraError) as exc:
            raise ModelError(f"the face check {path} cannot be read ({exc}): reinstall kyara") from exc
        if not low < high or check.weights.ndim != 1 or not np.isfinite([*check.weights, check.bias]).all():
            raise ModelError(f"the face check {path} holds no usable band or weights: reinstall kyara")
        return check

    @functools.cached_property
    def digest(self) -> str:
        """Which check this is (detection caches key on it), hashed once: crops ask per picture."""
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]

    def to_dict(self) -> dict:
        return {
            "weights": [round(float(w), 6) for w in self.weights],
            "bias": self.bias,
            "band": list(self.band),
            "min_score": self.min_score,
            "embedder": self.embedder,
        }

    def probability(self, vectors: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The probability that each candidate (its embedding, its CNN score) is a face."""
        features = np.hstack([np.asarray(vectors, np.float64), logit(scores)[:, None]])
        return 1 / (1 + np.exp(-(features @ self.weights + self.bias)))


class CheckedCnnDetector:
    """`CnnDetector` with the face check (see the module's docstring). `min_score`: the score a
    face needs (default: the one stored with the check); 0 keeps every candidate of the band with
    its score (what the benchmark sweeps). Float32 only: the check reads the float embedder."""

    name = "cnn-checked"

    def __init__(
        self,
        min_score: float | None = None,
        threads: int | None = None,
        precision: str = DEFAULT_PRECISION,
        check: FaceCheck | None = None,
    ) -> None:
        if check_precision(precision) != FLOAT32:
            raise KyaraError(f"the cnn-checked detector runs in float32 only, not {precision}")
        self.check = FaceCheck.load() if check is None else check
        self.min_score = self.check.min_score if min_score is None else _fraction(min_score, "min_score")
        self.threads = threads
        self.detector = CnnDetector(min_score=self.check.band[0], threads=threads)
        if _shipped_digest() != self.check.embedder:
            raise ModelError("the face check was fitted on another embedder than the shipped model's: reinstall kyara")
        shipped = shipped_embedder()
        self.embedder = Embedder(shipped.onnx, shipped.input_size, threads)
        if len(self.check.weights) != self.embedder.dim + 1:
            raise ModelError(
                f"the face check reads {len(self.check.weights) - 1} numbers, the embedder gives {self.embedder.dim}"
            )

    def with_threads(self, threads: int) -> CheckedCnnDetector:
        return CheckedCnnDetector(self.min_score, threads, FLOAT32, self.check)

    def __reduce__(self) -> tuple:
        return CheckedCnnDetector, (self.min_score, self.threads, FLOAT32, self.check)

    @property
    def settings(self) -> dict:
        return {**self.detector.settings, "check": self.check.digest, "check_min_score": self.min_score}

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        candidates = self.detector.detect(image)
        faces = self._checked(image, candidates)
        if not faces and candidates and self.detector.closeup_retry:
            # The CNN alone looks again where it is sure of nothing (`CnnDetector.detect`); its
            # candidates here kept that second look from happening.
            faces = self._checked(image, self.detector.closeup(image))
        return faces

    def _checked(self, image: Image.Image, candidates: list[DetectedFace]) -> list[DetectedFace]:
        scores = np.array([face.score for face in candidates])
        unsure = [i for i, score in enumerate(scores) if score < self.check.band[1]]
        probabilities = np.zeros(len(candidates))
        if unsure:
            vectors = self.embedder.embed([cut_face(image, candidates[i]).pixels for i in unsure])
            probabilities[unsure] = self.check.probability(vectors, scores[unsure])
        kept = [
            replace(face, score=float(score))
            for face, score in zip(candidates, rescored(self.check.band, scores, probabilities), strict=True)
            if score >= self.min_score
        ]
        return sorted(kept, key=lambda face: face.score, reverse=True)
