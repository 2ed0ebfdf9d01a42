"""The face check: a second look at the CNN detector's unsure candidates, with the eyes of the
recognizer (`--detector cnn-checked`).

The CNN's score separates faces from hands, buttons and speech bubbles well on pictures like its
training pictures, less well on others. Each candidate scoring inside the check's `band` is cut
as recognition cuts a face and embedded by the shipped model's embedder, which learned faces from
148 characters' crops; a logistic regression on that embedding and the CNN's logit decides whether
it is a face (its probability becomes the face's score). Candidates above the band are kept as
they are and those below dropped, so only the band costs embeddings (about two a picture).
The check and its settings travel together in `models/face-check.json`, made by
tools/face_check_study.py, which also says what it gains and costs (docs/detection.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from kyara.bundle import default_model_path, load_bundle
from kyara.cut import cut_face
from kyara.detection import CnnDetector, DetectedFace
from kyara.embedding import Embedder
from kyara.errors import ModelError

FACE_CHECK = Path(__file__).parent / "models" / "face-check.json"


def embedder_digest(onnx: bytes) -> str:
    """Which embedder a check was fitted on: the features it reads are that network's."""
    return hashlib.sha256(onnx).hexdigest()[:16]


def logit(scores: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(scores, np.float64), 1e-4, 1 - 1e-4)
    return np.log(clipped / (1 - clipped))


@dataclass(frozen=True)
class FaceCheck:
    """A logistic regression on [embedding, logit of the CNN's score]; candidates scoring in
    [band[0], band[1]) are checked, and kept when the check's probability reaches `threshold`."""

    weights: np.ndarray
    bias: float
    band: tuple[float, float]
    threshold: float
    embedder: str

    @classmethod
    def load(cls, path: Path = FACE_CHECK) -> FaceCheck:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            check = cls(
                np.asarray(saved["weights"], np.float64),
                float(saved["bias"]),
                (float(saved["band"][0]), float(saved["band"][1])),
                float(saved["threshold"]),
                str(saved["embedder"]),
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise ModelError(f"the face check {path} cannot be read ({exc}): reinstall kyara") from exc
        if check.weights.ndim != 1 or not np.isfinite(check.weights).all():
            raise ModelError(f"the face check {path} holds no usable weights")
        return check

    def to_dict(self) -> dict:
        return {
            "weights": [round(float(w), 6) for w in self.weights],
            "bias": self.bias,
            "band": list(self.band),
            "threshold": self.threshold,
            "embedder": self.embedder,
        }

    def probability(self, vectors: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The probability that each candidate (its embedding, its CNN score) is a face."""
        features = np.hstack([np.asarray(vectors, np.float64), logit(scores)[:, None]])
        if features.shape[1] != len(self.weights):
            raise ModelError(
                f"the face check reads {len(self.weights) - 1}-dimensional embeddings, not {features.shape[1] - 1}"
            )
        return 1 / (1 + np.exp(-(features @ self.weights + self.bias)))


class CheckedCnnDetector:
    """`CnnDetector` with the face check (see the module's docstring). `threshold`: the check's
    probability a candidate needs (default: the one stored with the check); 0 keeps every
    candidate of the band with its probability as its score (what the benchmark sweeps)."""

    name = "cnn-checked"

    def __init__(
        self, threshold: float | None = None, threads: int | None = None, check: FaceCheck | None = None
    ) -> None:
        self.check = FaceCheck.load() if check is None else check
        self.threshold = self.check.threshold if threshold is None else float(threshold)
        self.threads = threads
        self.detector = CnnDetector(min_score=self.check.band[0], threads=threads)
        shipped = load_bundle(default_model_path())
        if embedder_digest(shipped.onnx) != self.check.embedder:
            raise ModelError("the face check was fitted on another embedder than the shipped model's: reinstall kyara")
        self.embedder = Embedder(shipped.onnx, shipped.input_size, threads)

    def with_threads(self, threads: int) -> CheckedCnnDetector:
        return CheckedCnnDetector(self.threshold, threads, self.check)

    def __reduce__(self) -> tuple:
        return CheckedCnnDetector, (self.threshold, self.threads, self.check)

    @property
    def settings(self) -> dict:
        check = hashlib.sha1(json.dumps(self.check.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
        return {**self.detector.settings, "check": check, "check_threshold": self.threshold}

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        candidates = self.detector.detect(image)
        sure = [face for face in candidates if face.score >= self.check.band[1]]
        unsure = [face for face in candidates if face.score < self.check.band[1]]
        if not unsure:
            return sure
        vectors = self.embedder.embed([cut_face(image, face).pixels for face in unsure])
        checked = self.check.probability(vectors, np.array([face.score for face in unsure]))
        kept = [replace(face, score=float(p)) for face, p in zip(unsure, checked, strict=True) if p >= self.threshold]
        return sorted(sure + kept, key=lambda face: face.score, reverse=True)
