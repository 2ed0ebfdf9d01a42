"""Picture in, characters out: detect faces, cut them (`kyara.cut`), embed, classify.

`Recognizer` holds a loaded model and a detector, and is how the Python API takes a model
(`Model`: a recognizer, or the path that makes one); the module-level `recognize` and `detect`
use a shared recognizer with the built-in model, for the one-line API.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from kyara.bundle import ModelBundle, load_bundle, resolve_model_path
from kyara.classify import Classifier, Guess, Prediction
from kyara.cut import CROP_MARGIN as CROP_MARGIN  # kyara.server sizes enrolled boxes with it
from kyara.cut import FaceCut, as_is, cut_face, cuts_to_learn, cuts_to_name, drawn_gray
from kyara.detection import DetectedFace, Detector
from kyara.detectors import DEFAULT_DETECTOR, get_detector
from kyara.embedding import Embedder
from kyara.errors import KyaraError, ModelError, count
from kyara.imageio import DEFAULT_MAX_PIXELS, ImageSource, load_image
from kyara.runtime import DEFAULT_PRECISION, FLOAT32


@dataclass(frozen=True)
class FaceResult:
    """One recognized face. `label` is None when the character is unknown to the model."""

    box: tuple[int, int, int, int]
    detector_score: float
    label: str | None
    confidence: float
    top_k: list[Guess]
    fallback: bool = False
    similarity: float = 0.0
    angle: float = 0.0
    landmarks: dict[str, tuple[int, int]] = field(default_factory=dict)
    colors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "box": list(self.box),
            "detector_score": round(self.detector_score, 4),
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "similarity": round(self.similarity, 4),
            "top_k": [g.to_dict() for g in self.top_k],
            "fallback": self.fallback,
            "angle": self.angle,
            "landmarks": {k: list(v) for k, v in self.landmarks.items()},
            "colors": dict(self.colors),
        }

    @classmethod
    def of(cls, cut: FaceCut, prediction: Prediction) -> FaceResult:
        face = cut.face
        return cls(
            box=cut.box,
            detector_score=cut.score,
            label=prediction.label,
            confidence=prediction.confidence,
            top_k=prediction.top_k,
            fallback=cut.fallback,
            similarity=prediction.similarity,
            angle=cut.angle,
            landmarks=face.landmarks if face else {},
            colors=face.colors if face else {},
        )


class Recognizer:
    """A loaded model plus a detector. Reuse one instance: loading the model is the slow part.

    `model`: a .kyara file, None for the user's copy of the default model (or the built-in one
    before any enrollment), or a bundle already in memory (`from_memory`). `precision`: run the
    embedder and a detector given by name in float32 or in 8-bit integers (`kyara.runtime`).
    """

    def __init__(
        self,
        model: str | os.PathLike | ModelBundle | None = None,
        detector: Detector | str = DEFAULT_DETECTOR,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        threads = None if threads is None else count(threads, "threads")
        max_pixels = count(max_pixels, "max_pixels")
        if not isinstance(detector, str) and not callable(getattr(detector, "detect", None)):
            raise KyaraError(f"detector: a detector's name or an object with detect(image), not {detector!r}")
        self.bundle = model if isinstance(model, ModelBundle) else load_bundle(resolve_model_path(model))
        self.from_memory = isinstance(model, ModelBundle)
        self.model_file = None if self.from_memory else model
        self.precision = precision
        self.detector = get_detector(detector, precision) if isinstance(detector, str) else detector
        self.embedder_weights = self.bundle.embedder_onnx(precision)
        self.embedder = Embedder(self.embedder_weights, self.bundle.input_size, threads)
        if self.embedder.dim != self.bundle.embedding_dim:
            raise ModelError(
                f"the model's embedder makes embeddings of {self.embedder.dim} numbers but its head's rows have "
                f"{self.bundle.embedding_dim}: the head was not made for this embedder"
            )
        self.classifier = Classifier.from_bundle(self.bundle)
        self.max_pixels = max_pixels
        self.threads = threads

    def with_threads(self, threads: int) -> Recognizer:
        """The same model and detector with `threads` inference threads per call. Work spread over
        the cores by the caller (`kyara index`: one picture per core at once) needs one: on
        networks this small, a second thread per call buys little."""
        threaded = getattr(self.detector, "with_threads", None)  # see kyara.detection.Detector
        detector = threaded(threads) if threaded else self.detector
        copy = Recognizer(self.bundle, detector, threads, self.max_pixels, self.precision)
        copy.from_memory, copy.model_file = self.from_memory, self.model_file
        return copy

    @property
    def name(self) -> str:
        """The model's name, and its precision unless float32 (an index's metadata, report titles)."""
        precision = self.precision
        return self.bundle.name if precision == FLOAT32 else f"{self.bundle.name} ({precision})"

    def describe(self) -> dict:
        """The model as JSON answers name it (`kyara recognize --json`, the server): the bundle's
        summary and the precision its networks run at."""
        return {**self.bundle.describe(), "precision": self.precision}

    def __reduce__(self) -> tuple:
        # ONNX Runtime sessions do not pickle: a copy sent to another process (a Ray worker) opens
        # the same bundle and detector again there.
        return Recognizer, (self.bundle, self.detector, self.threads, self.max_pixels, self.precision)

    def __copy__(self) -> Recognizer:
        copy = object.__new__(Recognizer)  # shares the loaded sessions, unlike __reduce__
        copy.__dict__.update(self.__dict__)
        return copy

    def load(self, image: ImageSource) -> Image.Image:
        return load_image(image, self.max_pixels)

    def detect(self, image: ImageSource) -> list[DetectedFace]:
        return self.detector.detect(self.load(image))

    def cuts_to_name(self, picture: Image.Image) -> list[FaceCut]:
        """The faces recognition names in `picture` (`kyara.cut.cuts_to_name`)."""
        return cuts_to_name(picture, self.detector.detect(picture))

    def cuts_to_learn(self, picture: Image.Image) -> list[FaceCut]:
        """What `picture` teaches, most face-like first (`kyara.cut.cuts_to_learn`)."""
        return cuts_to_learn(picture, self.detector.detect(picture))

    def embed(self, cuts: Sequence[FaceCut]) -> np.ndarray:
        """One unit vector per cut, as the model's embedder sees it."""
        return self.embedder.embed([cut.pixels for cut in cuts])

    def classify(self, vectors: np.ndarray, top_k: int = 5, gray: np.ndarray | None = None) -> list[Prediction]:
        """Decisions for embedded faces; `gray` marks those drawn in gray (`kyara.cut.drawn_gray`)."""
        return self.classifier.predict(vectors, checked_top_k(top_k), gray)

    def recognize(self, image: ImageSource, top_k: int = 5) -> list[FaceResult]:
        """Every face in `image` (most face-like first), each with its ranked guesses; the whole
        image, marked `fallback`, if no face is found."""
        checked_top_k(top_k)  # before the work, not after it
        cuts = self.cuts_to_name(self.load(image))
        predictions = self.classify(self.embed(cuts), top_k, drawn_gray(cuts))
        return [FaceResult.of(cut, prediction) for cut, prediction in zip(cuts, predictions)]

    def recognition_report(self, image: ImageSource, top_k: int = 5) -> dict:
        """`recognize` as one image of `kyara recognize --json` and of the web API, less its path."""
        picture = self.load(image)
        return image_report(picture, self.recognize(picture, top_k))

    def recognize_crop(self, crop: ImageSource, top_k: int = 5) -> FaceResult:
        """Classify an image that is already a face crop (no detection)."""
        cut = as_is(self.load(crop))
        (prediction,) = self.classify(self.embed([cut]), top_k, drawn_gray([cut]))
        return replace(FaceResult.of(cut, prediction), detector_score=1.0)


def checked_top_k(top_k: object) -> int:
    """`top_k` as the API takes it: a whole number of guesses, at least one."""
    return count(top_k, "top_k")


def face_crop(picture: Image.Image, face: DetectedFace) -> Image.Image:
    """`cut_face(picture, face).pixels`, for kyara.server (which cuts enrolled boxes with it)."""
    return cut_face(picture, face).pixels


def image_report(picture: Image.Image, faces: Sequence[FaceResult | DetectedFace]) -> dict:
    """One image of `kyara recognize/detect --json` and of the web API, less its path."""
    return {"width": picture.width, "height": picture.height, "faces": [face.to_dict() for face in faces]}


def detection_report(image: ImageSource, detector: Detector, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """The faces `detector` finds in `image`, as one image of `kyara detect --json` and of the web
    API, less its path."""
    picture = load_image(image, max_pixels)
    return image_report(picture, detector.detect(picture))


@functools.lru_cache(maxsize=4)
def _shared_recognizer(model: str | None) -> Recognizer:
    return Recognizer(model)


def forget_loaded_models() -> None:
    """Drop the shared recognizers, so the next call reads models again (after enroll/forget)."""
    _shared_recognizer.cache_clear()


def default_recognizer(model: str | os.PathLike | None = None) -> Recognizer:
    return _shared_recognizer(str(Path(model)) if model else None)


Model = str | os.PathLike | Recognizer | None
"""How the Python API takes a model: a `Recognizer`, or what makes one (a .kyara path; None for
the user's copy of the default model)."""


def as_recognizer(model: Model) -> Recognizer:
    """`model` itself, or the shared recognizer of that model file."""
    return model if isinstance(model, Recognizer) else default_recognizer(model)


def recognize(image: ImageSource, model: Model = None, top_k: int = 5) -> list[FaceResult]:
    """Which characters are in `image`? One `FaceResult` per face (see `Recognizer.recognize`)."""
    return as_recognizer(model).recognize(image, top_k)


@functools.lru_cache(maxsize=1)
def _shared_detector() -> Detector:
    return get_detector()


def detect(image: ImageSource) -> list[DetectedFace]:
    """Where are the anime faces in `image`? Boxes in original image pixels."""
    return _shared_detector().detect(load_image(image))
