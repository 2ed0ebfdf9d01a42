"""Picture in, characters out: detect faces, cut them upright, embed, classify.

`Recognizer` holds a loaded model and a detector; the module-level `recognize` and `detect` use a
shared recognizer with the built-in model, for the one-line API.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from kyara.bundle import ModelBundle, load_bundle, resolve_model_path
from kyara.classify import Classifier, Guess
from kyara.detection import DEFAULT_DETECTOR, DetectedFace, Detector, get_detector
from kyara.embedding import Embedder
from kyara.errors import ModelError
from kyara.imageio import DEFAULT_MAX_PIXELS, ImageSource, load_image

CROP_MARGIN = 1.4
"""Crop side / detected face side: training crops show the face with some hair around it."""
WHITE = (255, 255, 255)
CROP_LIFT = 0.05
"""Training crops sit the face slightly below centre; lift the crop by this share of its side."""
MAX_CUT_SIDE = 1024
"""Faces and fallback squares are cut at no more than this many pixels: the embedder sees 128,
and a strip picture padded to a square at full size would take gigabytes."""
MAX_CROP_SIDE = 512
"""A near-square picture no larger than this may be a face crop already."""
FACE_FILLS_CROP = 0.5
"""...and is one when its most face-like face spans at least this share of its side. Cutting the
face out again loses accuracy there: on the default model's held-out holoen crops, top-1 fell
from 0.963 (whole crops) to 0.938, and to 0.858 where the face spans 90 % of the crop."""


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


class Recognizer:
    """A loaded model plus a detector. Reuse one instance: loading the model is the slow part."""

    def __init__(
        self,
        model: str | os.PathLike | ModelBundle | None = None,
        detector: Detector | str = DEFAULT_DETECTOR,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.bundle = model if isinstance(model, ModelBundle) else load_bundle(resolve_model_path(model))
        self.detector = get_detector(detector) if isinstance(detector, str) else detector
        self.embedder = Embedder(self.bundle.onnx, self.bundle.input_size, threads)
        if self.embedder.dim != self.bundle.embedding_dim:
            raise ModelError(
                f"the model's embedder gives {self.embedder.dim}-d vectors, "
                f"its head expects {self.bundle.embedding_dim}"
            )
        self.classifier = Classifier.from_bundle(self.bundle)
        self.max_pixels = max_pixels

    def load(self, image: ImageSource) -> Image.Image:
        return load_image(image, self.max_pixels)

    def detect(self, image: ImageSource) -> list[DetectedFace]:
        return self.detector.detect(self.load(image))

    def faces(self, picture: Image.Image) -> list[DetectedFace]:
        """The faces to name in `picture` (`faces_to_name` of the detector's)."""
        return faces_to_name(picture, self.detector.detect(picture))

    def recognize(self, image: ImageSource, top_k: int = 5) -> list[FaceResult]:
        """Every face in `image` (most face-like first), each with its ranked guesses; the whole
        image, marked `fallback`, if no face is found."""
        picture = self.load(image)
        faces = self.faces(picture)
        if not faces:
            return [self._recognize_whole(picture, top_k)]
        predictions = self.classifier.predict(self.embedder.embed([face_crop(picture, f) for f in faces]), top_k)
        return [
            FaceResult(
                box=face.box,
                detector_score=face.score,
                label=p.label,
                confidence=p.confidence,
                top_k=p.top_k,
                similarity=p.similarity,
                angle=face.angle,
                landmarks=face.landmarks,
                colors=face.colors,
            )
            for face, p in zip(faces, predictions)
        ]

    def recognize_crop(self, crop: ImageSource, top_k: int = 5) -> FaceResult:
        """Classify an image that is already a face crop (no detection)."""
        picture = self.load(crop)
        p = self.classifier.predict(self.embedder.embed([picture]), top_k)[0]
        return FaceResult(
            (0, 0, picture.width, picture.height), 1.0, p.label, p.confidence, p.top_k, similarity=p.similarity
        )

    def _recognize_whole(self, picture: Image.Image, top_k: int) -> FaceResult:
        p = self.classifier.predict(self.embedder.embed([square_on_white(picture)]), top_k)[0]
        return FaceResult(
            (0, 0, picture.width, picture.height),
            0.0,
            p.label,
            p.confidence,
            p.top_k,
            fallback=True,
            similarity=p.similarity,
        )


def faces_to_name(picture: Image.Image, faces: list[DetectedFace]) -> list[DetectedFace]:
    """The crop rule of recognition (and of evaluate, explain, index, crop and enrollment): the
    detected `faces`, but one face cut as the whole picture when the picture is a face crop
    already (see `FACE_FILLS_CROP`). Training and cluster take such pictures whole without detecting."""
    if faces and looks_like_face_crop(picture):
        best = max(faces, key=lambda face: face.score)
        if max(best.box[2:]) >= FACE_FILLS_CROP * max(picture.size):
            return [whole_picture_face(picture, best.score)]
    return faces


def face_to_learn(picture: Image.Image, faces: list[DetectedFace]) -> Image.Image | None:
    """What a picture teaches (training, enrollment), given its `faces_to_name`: its most
    face-like face as recognition cuts it; a face crop in which no face is found, whole; else None."""
    if faces:
        return face_crop(picture, max(faces, key=lambda face: face.score))
    return picture if looks_like_face_crop(picture) else None


def looks_like_face_crop(image: Image.Image) -> bool:
    return crop_sized(*image.size)


def crop_sized(width: int, height: int) -> bool:
    """Small and nearly square: a picture of this size may be a face crop already."""
    return max(width, height) <= MAX_CROP_SIDE and 0.75 <= width / height <= 4 / 3


def whole_picture_face(picture: Image.Image, score: float) -> DetectedFace:
    """A face crop named as it is: its box is the whole picture, as in `recognize_crop`."""
    return DetectedFace((0, 0, picture.width, picture.height), score)


def is_whole_picture(picture: Image.Image, face: DetectedFace) -> bool:
    return face.box == (0, 0, picture.width, picture.height)


def face_crop(image: Image.Image, face: DetectedFace, margin: float = CROP_MARGIN) -> Image.Image:
    """The face cut out upright, with the margin the model was trained with (white beyond edges);
    a face whose box is the whole picture (`whole_picture_face`) is the picture itself, as
    `recognize_crop` and training take a face crop."""
    if is_whole_picture(image, face):
        return image
    cx, cy = face.center
    side = max(face.box[2], face.box[3]) * margin
    if face.angle:
        # Cut just enough around the face to hold the turned square, then straighten it.
        turn = math.radians(face.angle)
        reach = side * (abs(math.cos(turn)) + abs(math.sin(turn))) / 2 + side * CROP_LIFT
        image = _crop_on_white(image, cx, cy, 2 * reach).rotate(face.angle, Image.Resampling.BILINEAR, fillcolor=WHITE)
        side *= image.width / max(1, round(2 * reach))  # the cut may have been shrunk
        cx, cy = image.width / 2, image.height / 2
    return _crop_on_white(image, cx, cy - side * CROP_LIFT, side)


def _crop_on_white(image: Image.Image, cx: float, cy: float, side: float) -> Image.Image:
    """The square of `side` around (cx, cy), white beyond the picture, at most `MAX_CUT_SIDE` px
    across (a larger square is shrunk as it is cut: only its region is resampled)."""
    left, top = round(cx - side / 2), round(cy - side / 2)
    size = max(1, round(side))
    out = min(size, MAX_CUT_SIDE)
    scale = out / size
    canvas = Image.new("RGB", (out, out), WHITE)
    # Only the part inside the picture is copied: Image.crop would fill the rest with black.
    inside = (max(0, left), max(0, top), min(image.width, left + size), min(image.height, top + size))
    if inside[2] > inside[0] and inside[3] > inside[1]:
        if scale == 1.0:
            part = image.crop(inside)
        else:
            shrunk = (max(1, round((inside[2] - inside[0]) * scale)), max(1, round((inside[3] - inside[1]) * scale)))
            part = image.resize(shrunk, Image.Resampling.BILINEAR, box=inside)
        canvas.paste(part, (round((inside[0] - left) * scale), round((inside[1] - top) * scale)))
    return canvas


def image_report(picture: Image.Image, faces: Sequence[FaceResult | DetectedFace]) -> dict:
    """One image of `kyara recognize/detect --json` and of the web API, less its path."""
    return {"width": picture.width, "height": picture.height, "faces": [face.to_dict() for face in faces]}


def input_crops(picture: Image.Image, faces: list[DetectedFace]) -> list[Image.Image]:
    """What the embedder sees: each face upright, or the whole picture when there is none."""
    return [face_crop(picture, face) for face in faces] or [square_on_white(picture)]


def square_on_white(picture: Image.Image) -> Image.Image:
    """The whole picture padded to a square, centred (at most `MAX_CUT_SIDE` px): the input when
    no face is found."""
    return _crop_on_white(picture, picture.width / 2, picture.height / 2, max(picture.size))


@functools.lru_cache(maxsize=4)
def _shared_recognizer(model: str | None) -> Recognizer:
    return Recognizer(model)


def forget_loaded_models() -> None:
    """Drop the shared recognizers, so the next call reads models again (after enroll/forget)."""
    _shared_recognizer.cache_clear()


def default_recognizer(model: str | os.PathLike | None = None) -> Recognizer:
    return _shared_recognizer(str(Path(model)) if model else None)


def recognize(image: ImageSource, model: str | os.PathLike | None = None, top_k: int = 5) -> list[FaceResult]:
    """Which characters are in `image`? One `FaceResult` per face (see `Recognizer.recognize`)."""
    return default_recognizer(model).recognize(image, top_k)


@functools.lru_cache(maxsize=1)
def _shared_detector() -> Detector:
    return get_detector()


def detect(image: ImageSource) -> list[DetectedFace]:
    """Where are the anime faces in `image`? Boxes in original image pixels."""
    return _shared_detector().detect(load_image(image))
