"""Anime face detection behind one small interface, with box merging shared by every backend.

A `Detector` takes an RGB image and returns `DetectedFace`s in original image pixels. Two backends:
- `CnnDetector` ("cnn"): kyara's own CNN (a MobileNetV2 CenterNet trained by `tools/train_detector.py`,
  shipped as ONNX). It finds tilted, side and monochrome faces itself and estimates each face's tilt.
- `AnimeFaceDetector` ("animeface"): nagadomi's animeface-2009 (the `animeface` package). It only
  sees roughly upright faces, so it also looks at rotated copies of the picture and maps what it
  finds back, with animeface's own landmarks and hair/eye colours (kyara.landmarks gives the CNN's
  faces theirs).
Duplicates (the same face found at several angles or cells) are merged by `non_max_suppression`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import PIL
from PIL import Image

from kyara.errors import KyaraError, ModelError
from kyara.runtime import DEFAULT_PRECISION, FLOAT32, INT8, check_precision, model_settings, open_session

Point = tuple[float, float]


@dataclass(frozen=True)
class DetectedFace:
    """One face. `box` is [x, y, w, h] of the face square (original pixels, centred on the face);
    `angle` is the rotation (degrees, counter-clockwise) that stands the face upright: 0 for an
    upright face, -25 for a face tilted 25 degrees counter-clockwise."""

    box: tuple[int, int, int, int]
    score: float
    angle: float = 0.0
    landmarks: dict[str, tuple[int, int]] = field(default_factory=dict)
    colors: dict[str, str] = field(default_factory=dict)

    @property
    def center(self) -> Point:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2

    def to_dict(self) -> dict:
        return {
            "box": list(self.box),
            "score": round(self.score, 4),
            "angle": self.angle,
            "landmarks": {k: list(v) for k, v in self.landmarks.items()},
            "colors": dict(self.colors),
        }


class Detector(Protocol):
    """What kyara needs of a detector. One may also offer `with_threads(threads) -> Detector`, a
    copy that runs each picture on `threads` threads (`Recognizer.with_threads`); one without it
    is shared as it is."""

    name: str

    def detect(self, image: Image.Image) -> list[DetectedFace]: ...


DEFAULT_ANGLES = (0.0, -25.0, 25.0, -50.0, 50.0)
DEFAULT_MIN_SCORE = 0.6
"""animeface likelihood below which a detection is dropped. Calibrated on the hand-checked set of
benchmarks/detection_boxes.json (docs/detection.md): with the rotated retries it removes 11 of 39
false detections and 1 of 152 faces; 0.9 is the threshold for precision >= 0.90, at 0.07 of recall."""


class AnimeFaceDetector:
    """animeface-2009 with retries on rotated copies (`angles`, degrees) and duplicate merging."""

    name = "animeface"

    def __init__(
        self, angles: Sequence[float] = DEFAULT_ANGLES, max_side: int = 1024, min_score: float = DEFAULT_MIN_SCORE
    ) -> None:
        _require_working_animeface()
        self.angles = tuple(angles)
        self.max_side = max_side
        self.min_score = min_score

    @property
    def settings(self) -> dict:
        return {"angles": self.angles, "max_side": self.max_side, "min_score": self.min_score}

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        scale = min(1.0, self.max_side / max(image.size))
        small = (
            image
            if scale == 1.0
            else image.resize(
                (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BILINEAR
            )
        )
        found = [face for angle in self.angles for face in self._detect_at(small, angle, scale)]
        return non_max_suppression([f for f in found if f.score >= self.min_score])

    def _detect_at(self, image: Image.Image, angle: float, scale: float) -> list[DetectedFace]:
        import animeface

        rotated = (
            image
            if angle == 0
            else image.rotate(angle, Image.Resampling.BILINEAR, expand=True, fillcolor=(255, 255, 255))
        )
        to_original = _inverse_rotation(image.size, rotated.size, angle, scale)
        faces = []
        for face in animeface.detect(rotated):
            box = face.face.pos
            cx, cy = to_original(box.x + box.width / 2, box.y + box.height / 2)
            side = max(box.width, box.height) / scale
            landmarks = {
                "left_eye": _box_center(face.left_eye.pos),
                "right_eye": _box_center(face.right_eye.pos),
                "mouth": _box_center(face.mouth.pos),
                "nose": (face.nose.pos.x, face.nose.pos.y),
                "chin": (face.chin.pos.x, face.chin.pos.y),
            }
            faces.append(
                DetectedFace(
                    box=(round(cx - side / 2), round(cy - side / 2), round(side), round(side)),
                    score=float(face.likelihood),
                    angle=float(angle),
                    landmarks={k: _rounded(to_original(*p)) for k, p in landmarks.items()},
                    colors={
                        "hair": hex_colour(face.hair.color),
                        "skin": hex_colour(face.skin.color),
                        "left_eye": hex_colour(face.left_eye.color),
                        "right_eye": hex_colour(face.right_eye.color),
                    },
                )
            )
        return faces


def _require_working_animeface() -> None:
    try:
        import animeface  # noqa: F401
    except ImportError as exc:
        raise KyaraError("the animeface detector is an extra: pip install 'kyara[animeface]'") from exc
    if int(PIL.__version__.split(".")[0]) >= 12:
        # animeface's C code reads Image.getdata(), which changed in Pillow 12: it then finds
        # nothing, silently. Refuse loudly instead.
        raise KyaraError(
            f"animeface-2009 finds no faces with Pillow {PIL.__version__}; pip install 'kyara[animeface]' (pillow<12)"
        )


def _inverse_rotation(size: tuple[int, int], rotated_size: tuple[int, int], angle: float, scale: float):
    """Map a point of the rotated (expanded) copy back to original, unscaled image pixels."""
    centre = np.array([size[0] / 2, size[1] / 2])
    rotated_centre = np.array([rotated_size[0] / 2, rotated_size[1] / 2])

    def to_original(x: float, y: float) -> Point:
        # PIL rotates counter-clockwise on screen (y down), so undo it clockwise.
        (original,) = (centre + turned_clockwise(np.array([[x, y]]) - rotated_centre, math.radians(angle))) / scale
        return float(original[0]), float(original[1])

    return to_original


def turned_clockwise(offsets: np.ndarray, radians: float) -> np.ndarray:
    """Offsets from a centre (N x 2, picture axes: y downwards) turned by `radians` clockwise on the
    screen; a negative turn is counter-clockwise, the way PIL's `Image.rotate` turns a picture."""
    offsets = np.asarray(offsets, np.float64).reshape(-1, 2)
    cos, sin = math.cos(radians), math.sin(radians)
    return np.stack([offsets[:, 0] * cos - offsets[:, 1] * sin, offsets[:, 0] * sin + offsets[:, 1] * cos], axis=1)


def wrapped_degrees(degrees: float) -> float:
    """The same turn as `degrees`, within [-180, 180): how far apart two angles really are."""
    return (degrees + 180) % 360 - 180


def _box_center(box) -> Point:
    return box.x + box.width / 2, box.y + box.height / 2


def _rounded(point: Point) -> tuple[int, int]:
    return round(point[0]), round(point[1])


def hex_colour(colour) -> str:
    """A colour as faces carry it, #rrggbb, from an (r, g, b) sequence or animeface's colour object."""
    r, g, b = (colour.r, colour.g, colour.b) if hasattr(colour, "r") else colour
    return f"#{r:02x}{g:02x}{b:02x}"


def _intersection(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two [x, y, w, h] boxes."""
    inter = _intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def non_max_suppression(faces: Sequence[DetectedFace], threshold: float = 0.3) -> list[DetectedFace]:
    """Keep the best-scoring face of every cluster of overlapping boxes (any backend, any angle).

    A small box mostly inside a kept one (a face found again at another angle and scale) counts
    as overlapping too, so the same face is never reported twice.
    """
    kept: list[DetectedFace] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(iou(face.box, k.box) <= threshold and containment(face.box, k.box) < 0.7 for k in kept):
            kept.append(face)
    return kept


def containment(a: Sequence[float], b: Sequence[float]) -> float:
    """Share of box `a`'s area that lies inside box `b`."""
    return _intersection(a, b) / (a[2] * a[3]) if a[2] * a[3] > 0 else 0.0


CNN_MODEL = Path(__file__).parent / "models" / "detector.onnx"
CNN_MODELS = {FLOAT32: CNN_MODEL, INT8: CNN_MODEL.with_name("detector-int8.onnx")}
"""The shipped detector at each precision (`kyara.runtime.PRECISIONS`)."""
CNN_SETTINGS = {"input_side": 384, "stride": 8, "min_score": 0.46}
"""The CNN's settings where its ONNX file carries none (`kyara.*` metadata, written by
tools/train_detector.py): the longer side the picture is scaled to, the output grid's cell, and the
lowest heat-map peak kept as a face. Each detector file states its own, chosen on the benchmark."""


class CnnDetector:
    """kyara's own CNN face detector (`tools/train_detector.py`), run with ONNX Runtime.

    The picture is scaled so that its longer side is `input_side` pixels; the network marks face
    centres on a grid of `stride`-pixel cells with each face's side and tilt; peaks above `min_score`
    become faces (in original pixels), and overlapping ones are merged as for every backend.
    `input_side` and `min_score` default to the settings stored in the model file; `model`, to the
    shipped detector at `precision`.
    """

    name = "cnn"

    def __init__(
        self,
        input_side: int | None = None,
        min_score: float | None = None,
        threads: int | None = None,
        model: Path | bytes | None = None,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        model = CNN_MODELS[check_precision(precision)] if model is None else model
        if isinstance(model, Path) and not model.is_file():
            raise KyaraError(f"the detector model {model} is missing: reinstall kyara")
        weights = model.read_bytes() if isinstance(model, Path) else model
        self.session = open_session(weights, "the face detector", threads, varying_shapes=True)
        stored = {**CNN_SETTINGS, **model_settings(self.session)}
        try:
            self.stride = int(stored["stride"])
            self.input_side = int(input_side if input_side is not None else stored["input_side"])
            self.min_score = float(min_score if min_score is not None else stored["min_score"])
            self.closeup_retry = bool(int(stored.get("closeup_retry", 0)))
        except ValueError as exc:
            raise ModelError(f"the face detector's settings are not numbers: {exc}") from exc
        self.model_digest = hashlib.sha1(weights).hexdigest()[:12]
        self.weights, self.threads = weights, threads

    def with_threads(self, threads: int) -> CnnDetector:
        return CnnDetector(self.input_side, self.min_score, threads, self.weights)

    def __reduce__(self) -> tuple:
        return CnnDetector, (self.input_side, self.min_score, self.threads, self.weights)

    @property
    def settings(self) -> dict:
        # The digest makes caches of detections (kyara.crop) forget them when the weights change.
        return {"input_side": self.input_side, "min_score": self.min_score, "model": self.model_digest}

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        faces = _inside(image, self._detect_at(image, self.input_side, margin=0))
        return faces if faces or not self.closeup_retry else self.closeup(image)

    def closeup(self, image: Image.Image) -> list[DetectedFace]:
        """The second pass `detect` makes on a picture where it found nothing: a face larger than
        the network ever saw (a close-up cut by the frame) shows as a face once the picture is
        shrunk to half inside a margin that continues its edges."""
        return _inside(image, self._detect_at(image, self.input_side // 2, margin=self.input_side // 4))

    def _detect_at(self, image: Image.Image, side: int, margin: int) -> list[DetectedFace]:
        """Faces with the picture's longer side scaled to `side` px, `margin` px of edge pixels around."""
        pixels, scale = network_input(image, side, margin)
        (maps,) = self.session.run(None, {"image": pixels})
        shift = round(margin / scale)
        return [_shifted(face, -shift) for face in _decode(maps[0], self.min_score, self.stride / scale)]


def _inside(image: Image.Image, faces: list[DetectedFace]) -> list[DetectedFace]:
    """Faces centred on the picture (not in the padding around it), duplicates merged."""
    return non_max_suppression([f for f in faces if f.center[0] < image.width and f.center[1] < image.height])


def network_input(image: Image.Image, side: int, margin: int = 0) -> tuple[np.ndarray, float]:
    """The CNN's input for a picture (1 x 3 x H x W, RGB in [0, 1], sides multiples of 32): its
    longer side scaled to `side` px, `margin` px around it; and the scale applied."""
    scale = side / max(image.size)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    small = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), np.float32) / 255
    # Edge pixels continue the picture into the padding: a border would be new to the network.
    right = _round_up(width + 2 * margin, 32) - width - margin
    bottom = _round_up(height + 2 * margin, 32) - height - margin
    pixels = np.pad(small, ((margin, bottom), (margin, right), (0, 0)), "edge")
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None]), scale


def _shifted(face: DetectedFace, by: int) -> DetectedFace:
    x, y, w, h = face.box
    return DetectedFace((x + by, y + by, w, h), face.score, face.angle)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _decode(maps: np.ndarray, min_score: float, cell: float) -> Iterator[DetectedFace]:
    """Faces from the network's output maps: local maxima (3 x 3) of the centre heat map."""
    heat = 1 / (1 + np.exp(-np.clip(maps[0], -30, 30)))
    padded = np.pad(heat, 1, constant_values=0)
    rows, columns = heat.shape
    neighbours = np.max([padded[dy : dy + rows, dx : dx + columns] for dy in range(3) for dx in range(3)], axis=0)
    for y, x in zip(*np.nonzero((heat >= neighbours) & (heat >= min_score)), strict=True):
        side = math.exp(maps[3, y, x]) * cell
        cx, cy = (x + maps[1, y, x]) * cell, (y + maps[2, y, x]) * cell
        angle = round(math.degrees(math.atan2(maps[5, y, x], maps[4, y, x])))
        yield DetectedFace(
            box=(round(cx - side / 2), round(cy - side / 2), round(side), round(side)),
            score=float(heat[y, x]),
            angle=float(angle),
        )
