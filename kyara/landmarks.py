"""Landmarks and colours of faces found by a detector that gives boxes only (kyara's CNN).

Eyes, nose, mouth and chin come from a small network (kyara/models/landmarks.onnx, trained by
tools/train_landmarks.py on animeface-2009's points) that looks at each face as recognition cuts
it (kyara.cut) and places the five points in the cut, which `FaceCut.to_picture` maps back into
the picture. Hair, skin and eye colours are then read off the picture around those points
(`colours_at`). `WithLandmarks` wraps a detector so that every face it finds carries both, named
as animeface names them: `left_eye` is the character's left eye (on the picture's right).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from kyara.bundle import check_model_file
from kyara.cut import cut_face
from kyara.detection import AnimeFaceDetector, DetectedFace, Detector, hex_colour, wrapped_degrees
from kyara.embedding import crops_input
from kyara.errors import KyaraError, ModelError
from kyara.runtime import model_settings, open_session

LANDMARK_MODEL = Path(__file__).parent / "models" / "landmarks.onnx"
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth", "chin")
INPUT_SIDE = 64
"""The cut is shown to the network at this side (pixels)."""
TILT_GAP = 20.0
"""Degrees between the eye line and the detector's tilt from which the eyes' tilt is taken..."""
MAX_CORRECTION = 60.0
"""...up to this many. The network learned turns of up to 35 degrees beyond the detector's and
reads larger ones short, which still stands a face more upright than a reading of 0, as the
detector gives for a tilt it misses (held-out crops turned by 45 degrees: benchmarks/tilted_faces.py);
beyond, a reading is more likely wrong."""
MIN_EYE_GAP = 0.1
"""Share of the face's side: eyes closer than this are no eye line (the network sees no face)."""
COLOUR_SPOTS = {
    # name: (from which point, how far up the face and the window's side, as shares of the face's
    # side, and the band of brightness whose median is the colour, as percentiles)
    "hair": ("eyes", 0.35, 0.14, (25, 75)),
    "skin": ("below_eyes", 0.0, 0.08, (25, 75)),
    "left_eye": ("left_eye", 0.0, 0.1, (0, 50)),
    "right_eye": ("right_eye", 0.0, 0.1, (0, 50)),
}
"""Where each colour is read: hair above the middle of the eyes (the fringe), skin half way from
the eyes' middle to the nose, each eye at its centre, from its darker half (the iris, not the white
and the highlights). Chosen against animeface's colours on New Game! illustrations, which
neither the landmark network nor the benchmark uses (tools/train_landmarks.py)."""


class Landmarker:
    """Places the five points (`LANDMARKS`) on faces and reads their colours."""

    def __init__(self, model: str | os.PathLike | bytes = LANDMARK_MODEL, threads: int | None = None) -> None:
        if isinstance(model, bytes):
            self.weights = model
        elif Path(model) == LANDMARK_MODEL and not LANDMARK_MODEL.is_file():
            raise KyaraError(f"the landmark model {model} is missing: reinstall kyara")
        else:
            self.weights = check_model_file(Path(model), model).read_bytes()
        self.threads = threads
        self.session = open_session(self.weights, "the landmark model", threads)
        stored = model_settings(self.session)
        if stored.get("landmarks") != ",".join(LANDMARKS) or stored.get("input_side") != str(INPUT_SIDE):
            raise ModelError(f"the landmark model places {stored.get('landmarks')!r} at {stored.get('input_side')} px")
        self.model_digest = hashlib.sha1(self.weights).hexdigest()[:12]

    def __reduce__(self) -> tuple:
        return Landmarker, (self.weights, self.threads)

    def locate(self, picture: Image.Image, faces: list[DetectedFace]) -> list[DetectedFace]:
        """`faces` with landmarks and colours; those that already have landmarks are kept as they are."""
        todo = [i for i, face in enumerate(faces) if not face.landmarks]
        if not todo:
            return list(faces)
        picture = picture if picture.mode == "RGB" else picture.convert("RGB")
        located = list(faces)
        for i, at in zip(todo, self.points(picture, [faces[i] for i in todo]), strict=True):
            landmarks = {name: (round(x), round(y)) for name, (x, y) in at.items()}
            face = faces[i]
            colours = colours_at(picture, landmarks, max(face.box[2:]))
            located[i] = replace(face, angle=upright_angle(face, at), landmarks=landmarks, colors=colours)
        return located

    def points(self, picture: Image.Image, faces: list[DetectedFace]) -> list[dict[str, tuple[float, float]]]:
        """The five points (`LANDMARKS`) of each face, in picture pixels, unrounded."""
        if not faces:
            return []
        cuts = [cut_face(picture, face) for face in faces]
        (points,) = self.session.run(None, {"image": crops_input([cut.pixels for cut in cuts], INPUT_SIDE)})
        return [
            {name: (float(x), float(y)) for name, (x, y) in zip(LANDMARKS, cut.to_picture(face_points), strict=True)}
            for cut, face_points in zip(cuts, points.reshape(len(cuts), len(LANDMARKS), 2), strict=True)
        ]


def upright_angle(face: DetectedFace, landmarks: dict[str, tuple[float, float]]) -> float:
    """The face's `angle`, read off its eye line where that tilts `TILT_GAP` to `MAX_CORRECTION`
    degrees from the detector's reading: the CNN reads a slight tilt short (held-out crops turned by
    15 degrees: a median of 1 read; the detector before session 19 read little of any tilt), and
    faces cut upright by their eyes are named better (benchmarks/tilted_faces.py)."""
    tilt = eye_tilt(landmarks, max(face.box[2:]))
    if tilt is None:
        return face.angle
    gap = wrapped_degrees(tilt + face.angle)  # the face's angle stands it upright: -tilt when right
    return float(-round(tilt)) if TILT_GAP <= abs(gap) <= MAX_CORRECTION else face.angle


def eye_tilt(landmarks: dict[str, tuple[float, float]], side: float) -> float | None:
    """Degrees counter-clockwise (on the screen) that the eye line of a face of `side` pixels is
    turned from level; None where the eyes are closer than `MIN_EYE_GAP` of the side (no eye line:
    the network sees no face)."""
    (left_x, left_y), (right_x, right_y) = landmarks["left_eye"], landmarks["right_eye"]
    if math.hypot(left_x - right_x, left_y - right_y) < MIN_EYE_GAP * side:
        return None
    return math.degrees(math.atan2(right_y - left_y, left_x - right_x))


def colours_at(picture: Image.Image, landmarks: dict[str, tuple[int, int]], side: float) -> dict[str, str]:
    """Hair, skin and eye colours (`COLOUR_SPOTS`) of a face of `side` pixels with these landmarks,
    each the median of a band of a small window's tones, as #rrggbb (the part of the window inside
    the picture); a colour whose window lies wholly outside (a fringe cut off by the frame) is left
    out."""
    points = {name: np.asarray(point, np.float64) for name, point in landmarks.items()}
    points["eyes"] = (points["left_eye"] + points["right_eye"]) / 2
    points["below_eyes"] = (points["eyes"] + points["nose"]) / 2
    # "Up" is the face's up: from the mouth towards the eyes' middle, whatever the face's tilt.
    up = points["eyes"] - points["mouth"]
    up = up / max(float(np.linalg.norm(up)), 1e-6)
    colours = {}
    for name, (where, lift, window, tones) in COLOUR_SPOTS.items():
        tone = _median_tone(picture, points[where] + side * lift * up, max(2.0, window * side), tones)
        if tone is not None:
            colours[name] = hex_colour(tone)
    return colours


def colour_distance(a: str, b: str) -> float:
    """Distance between two #rrggbb colours in RGB (0 to 441)."""
    return float(np.linalg.norm(np.array(_rgb(a), float) - _rgb(b)))


def with_landmarks(detector: Detector, landmarker: Landmarker | None = None) -> Detector:
    """`detector`, its faces with landmarks and colours: animeface's come with its own."""
    return detector if detector.name == AnimeFaceDetector.name else WithLandmarks(detector, landmarker)


class WithLandmarks:
    """A detector whose faces also carry landmarks and colours (`Landmarker`)."""

    def __init__(self, detector: Detector, landmarker: Landmarker | None = None) -> None:
        self.detector = detector
        self.landmarker = landmarker or Landmarker(threads=getattr(detector, "threads", None))
        self.name = detector.name

    @property
    def settings(self) -> dict:
        return {**getattr(self.detector, "settings", {}), "landmarks": self.landmarker.model_digest}

    def with_threads(self, threads: int) -> WithLandmarks:
        threaded = getattr(self.detector, "with_threads", None)
        return WithLandmarks(
            threaded(threads) if threaded else self.detector, Landmarker(self.landmarker.weights, threads)
        )

    def detect(self, image: Image.Image) -> list[DetectedFace]:
        return self.landmarker.locate(image, self.detector.detect(image))


def _median_tone(
    picture: Image.Image, centre: np.ndarray, window: float, tones: tuple[float, float]
) -> tuple[int, int, int] | None:
    half = window / 2
    box = (
        max(0, round(centre[0] - half)),
        max(0, round(centre[1] - half)),
        min(picture.width, round(centre[0] + half) + 1),
        min(picture.height, round(centre[1] + half) + 1),
    )
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    pixels = np.asarray(picture.crop(box).convert("RGB")).reshape(-1, 3)
    luma = pixels @ (0.299, 0.587, 0.114)
    low, high = np.percentile(luma, tones)
    band = pixels[(luma >= low) & (luma <= high)]
    return tuple(int(v) for v in np.median(band if len(band) else pixels, axis=0).round())


def _rgb(colour: str) -> tuple[int, int, int]:
    if not isinstance(colour, str) or not re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
        raise KyaraError(f"not a #rrggbb colour: {colour!r}")
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
