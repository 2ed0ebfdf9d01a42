"""Which pixels the embedder sees for a face: the cut, decided here and nowhere else.

A `FaceCut` is one face as the embedder sees it. A detected face is cut upright with the margin the
model was trained with; a picture that is a face crop already is used as it is; a picture where no
face is found is padded to a square. What a picture gives depends on what it is used for:

- `cuts_to_name` (recognize, evaluate, explain, index, search): its faces, one face cut as the
  whole picture when it is a face crop already (cutting the face out again costs accuracy), the
  whole picture padded to a square when no face is found.
- `cuts_to_learn` (enroll, `kyara crop`): the same faces, most face-like first; a face crop in
  which no face is found is still taken whole; any other picture without a face gives nothing.
- `cuts_to_train` (training, cluster): a face crop is taken whole without detecting (in those
  folders it is one, and detecting 10,000 of them would add minutes); else `cuts_to_learn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps, ImageStat

from kyara.detection import DetectedFace, turned_clockwise
from kyara.errors import KyaraError

Box = tuple[int, int, int, int]
FindFaces = Callable[[Image.Image], list[DetectedFace]]

CROP_MARGIN = 1.4
"""Crop side / detected face side: training crops show the face with some hair around it."""
WHITE = (255, 255, 255)
CROP_LIFT = 0.05
"""Training crops sit the face slightly below centre; lift the crop by this share of its side."""
MAX_CUT_SIDE = 1024
"""Faces and fallback squares are cut at no more than this many pixels: the embedder sees 128,
and a strip picture padded to a square at full size would take gigabytes."""
MAX_CROP_SIDE = 512
"""A near-square picture no larger than this may be a face crop already..."""
MIN_CROP_SIDE = 32
"""...and no smaller than this: a few pixels show no face, and enrolled as one they would draw
every faceless picture to that name."""
FLAT_STDDEV = 2.0
"""...and is no face at all when no colour channel varies by this much (`flat`)."""
FACE_FILLS_CROP = 0.5
"""...and is one when its most face-like face spans at least this share of its side. Cutting the
face out again loses accuracy there: on the default model's held-out holoen crops, top-1 fell
from 0.963 (whole crops) to 0.938, and to 0.858 where the face spans 90 % of the crop."""
COLOURFUL = 24
"""A pixel is coloured when max(R, G, B) - min(R, G, B) exceeds this (gray scans and JPEG noise stay
well below it)."""
PAPER = 235
"""Pixels brighter than this in every channel are paper or padding, left out of `GRAY_SHARE`."""
GRAY_SHARE = 0.02
"""A face is drawn in gray (a manga page, gray fan art) when under this share of its other pixels
is coloured, on a `GRAY_PROBE_SIDE`-pixel copy: it is then named against gray prototypes
(kyara.classify). Of the 11,222 character face crops of ../shared/data, 144 are (gray art, some
with coloured eyes, a few washed-out colour pictures), and as many (143) once pasted into white
pictures twice their size; a rule on mean chroma called 3,177 of those gray, misled by the white."""
GRAY_PROBE_SIDE = 64


@dataclass(frozen=True)
class FaceCut:
    """One face as the embedder sees it.

    `face` is the detected face (None: none was found, or a face crop was taken without
    detecting); `box` its box in picture pixels (the whole picture when there is no face);
    `square` the square cut from the picture, in its pixels, before it is turned upright by the
    face's angle; `pixels` what the embedder is given; `whole`: the picture itself, as it is.
    """

    face: DetectedFace | None
    box: Box
    square: Box
    pixels: Image.Image
    whole: bool

    @property
    def fallback(self) -> bool:
        """No face was found: the whole picture, padded to a square, stands for one."""
        return self.face is None and not self.whole

    @property
    def score(self) -> float:
        return self.face.score if self.face else 0.0

    @property
    def angle(self) -> float:
        return self.face.angle if self.face else 0.0

    @property
    def gray(self) -> bool:
        """Whether the face is drawn in gray (`GRAY_SHARE`)."""
        probe = self.pixels.convert("RGB").resize((GRAY_PROBE_SIDE, GRAY_PROBE_SIDE), Image.Resampling.BICUBIC)
        return bool(gray_faces(np.asarray(probe)[None])[0])

    def to_picture(self, points: np.ndarray) -> np.ndarray:
        """Points of the cut (N x 2, as shares of its width and height from its top left corner,
        the face upright) in picture pixels."""
        centre, size, turn = self._frame()
        # The cut was turned upright by `angle` about its centre: turn back the other way.
        return centre + turned_clockwise((np.asarray(points, np.float64).reshape(-1, 2) - 0.5) * size, turn)

    def to_cut(self, points: np.ndarray) -> np.ndarray:
        """Picture pixels (N x 2) as points of the cut, the inverse of `to_picture`."""
        centre, size, turn = self._frame()
        return turned_clockwise(np.asarray(points, np.float64).reshape(-1, 2) - centre, -turn) / size + 0.5

    def _frame(self) -> tuple[np.ndarray, np.ndarray, float]:
        """The cut's centre and size in the picture, and the turn (radians) that stood it upright."""
        x, y, width, height = self.square
        turn = 0.0 if self.whole else math.radians(self.angle)  # a whole picture is never turned
        return np.array([x + width / 2, y + height / 2]), np.array([width, height], np.float64), turn

    def of(self, picture: Image.Image) -> FaceCut:
        """The same cut of another copy of the picture, of the same size (its grayscale copy)."""
        if self.whole:
            return replace(self, pixels=picture)
        return cut_face(picture, self.face) if self.face else padded_whole(picture)


def gray_faces(pixels: np.ndarray) -> np.ndarray:
    """Which of these faces (uint8, N x H x W x 3) are drawn in gray (`GRAY_SHARE`)."""
    pixels = pixels[..., :3].reshape(len(pixels), -1, 3)
    coloured = pixels.max(axis=-1).astype(np.int16) - pixels.min(axis=-1) > COLOURFUL
    inked = pixels.min(axis=-1) <= PAPER
    return (coloured & inked).sum(axis=1) < GRAY_SHARE * np.maximum(inked.sum(axis=1), 1)


def drawn_gray(cuts: list[FaceCut]) -> np.ndarray:
    """Which of `cuts` are drawn in gray (`FaceCut.gray`), as classification takes it."""
    return np.array([cut.gray for cut in cuts], bool)


def gray_copy(picture: Image.Image) -> Image.Image:
    """`picture` in gray (Pillow's luma, kept as three channels): how a face of a manga page
    looks, for gray prototypes and for grayscale evaluation."""
    return ImageOps.grayscale(picture).convert("RGB")


def gray_cuts(picture: Image.Image, cuts: list[FaceCut]) -> list[FaceCut]:
    """The same `cuts` of `picture`'s gray copy (`gray_copy`)."""
    gray = gray_copy(picture)
    return [cut.of(gray) for cut in cuts]


def cut_face(picture: Image.Image, face: DetectedFace, margin: float = CROP_MARGIN) -> FaceCut:
    """`face` cut out upright with the margin the model was trained with (white beyond the
    picture's edges); a face whose box is the whole picture is the picture itself."""
    whole_box = (0, 0, picture.width, picture.height)
    if face.box == whole_box:
        return FaceCut(face, face.box, whole_box, picture, whole=True)
    if not all(math.isfinite(value) for value in (*face.box, face.angle)):
        raise KyaraError(f"a face's box and angle must be finite numbers, not {face.box} at {face.angle}")
    cx, cy = face.center
    side = max(face.box[2], face.box[3]) * margin
    turn = math.radians(face.angle)
    # The lift is applied in the upright frame: in the picture it points along the turned vertical.
    lifted = cx + side * CROP_LIFT * math.sin(turn), cy - side * CROP_LIFT * math.cos(turn)
    square = (round(lifted[0] - side / 2), round(lifted[1] - side / 2), round(side), round(side))
    return FaceCut(face, face.box, square, _upright(picture, face, side), whole=False)


def padded_whole(picture: Image.Image) -> FaceCut:
    """The whole picture padded to a square, centred (at most `MAX_CUT_SIDE` px): the input when
    no face is found."""
    side = max(picture.size)
    square = (-round((side - picture.width) / 2), -round((side - picture.height) / 2), side, side)
    pixels = _square_on_white(picture, picture.width / 2, picture.height / 2, side)
    return FaceCut(None, (0, 0, *picture.size), square, pixels, whole=False)


def as_is(picture: Image.Image) -> FaceCut:
    """A picture known to be a face crop, used as it is without detecting."""
    whole_box = (0, 0, picture.width, picture.height)
    return FaceCut(None, whole_box, whole_box, picture, whole=True)


def crop_sized(width: int, height: int) -> bool:
    """Small (not tiny) and nearly square: a picture of this size may be a face crop already."""
    sides_fit = min(width, height) >= MIN_CROP_SIDE and max(width, height) <= MAX_CROP_SIDE
    return sides_fit and 0.75 <= width / height <= 4 / 3


def flat(picture: Image.Image) -> bool:
    """One colour all over (a blank or a solid fill): no face to learn, whatever its size. Taken
    whole, it would teach its name to every picture where no face is found."""
    return max(ImageStat.Stat(picture).stddev) < FLAT_STDDEV


def cuts_to_name(picture: Image.Image, faces: list[DetectedFace]) -> list[FaceCut]:
    """The faces to name in `picture`, given the detector's `faces` (in their order): a face crop
    whose most face-like face fills it (`FACE_FILLS_CROP`) is one face, the whole picture; no
    face: the whole picture, padded, marked `fallback`."""
    return cuts_of(picture, _faces_to_name(picture, faces))


def cuts_of(picture: Image.Image, faces: list[DetectedFace]) -> list[FaceCut]:
    """Each of `faces` cut as recognition cuts it (faces stored earlier, kept as they were); the
    whole picture, padded, when there is none."""
    return [cut_face(picture, face) for face in faces] or [padded_whole(picture)]


def cuts_to_learn(picture: Image.Image, faces: list[DetectedFace], margin: float = CROP_MARGIN) -> list[FaceCut]:
    """What a picture teaches, most face-like first: the faces `cuts_to_name` finds; a face crop
    in which no face is found, whole; else nothing."""
    named = sorted(_faces_to_name(picture, faces), key=lambda face: face.score, reverse=True)
    if not named:
        return [as_is(picture)] if crop_sized(*picture.size) and not flat(picture) else []
    return [cut_face(picture, face, margin) for face in named]


def cuts_to_train(picture: Image.Image, find_faces: FindFaces, margin: float = CROP_MARGIN) -> list[FaceCut]:
    """`cuts_to_learn` for training and cluster folders, where a small, nearly square picture is
    a face crop: it is taken whole without calling `find_faces`."""
    if crop_sized(*picture.size):
        return [as_is(picture)]
    return cuts_to_learn(picture, find_faces(picture), margin)


def _faces_to_name(picture: Image.Image, faces: list[DetectedFace]) -> list[DetectedFace]:
    if faces and crop_sized(*picture.size):
        best = max(faces, key=lambda face: face.score)
        if max(best.box[2:]) >= FACE_FILLS_CROP * max(picture.size):
            return [replace(best, box=(0, 0, picture.width, picture.height), angle=0.0)]
    return faces


def _upright(picture: Image.Image, face: DetectedFace, side: float) -> Image.Image:
    cx, cy = face.center
    if face.angle:
        # Cut just enough around the face to hold the turned square, then straighten it.
        turn = math.radians(face.angle)
        reach = side * (abs(math.cos(turn)) + abs(math.sin(turn))) / 2 + side * CROP_LIFT
        picture = _square_on_white(picture, cx, cy, 2 * reach).rotate(
            face.angle, Image.Resampling.BILINEAR, fillcolor=WHITE
        )
        side *= picture.width / max(1, round(2 * reach))  # the cut may have been shrunk
        cx, cy = picture.width / 2, picture.height / 2
    return _square_on_white(picture, cx, cy - side * CROP_LIFT, side)


def _square_on_white(picture: Image.Image, cx: float, cy: float, side: float) -> Image.Image:
    """The square of `side` around (cx, cy), white beyond the picture, at most `MAX_CUT_SIDE` px
    across (a larger square is shrunk as it is cut: only its region is resampled)."""
    left, top = round(cx - side / 2), round(cy - side / 2)
    size = max(1, round(side))
    out = min(size, MAX_CUT_SIDE)
    scale = out / size
    canvas = Image.new("RGB", (out, out), WHITE)
    # Only the part inside the picture is copied: Image.crop would fill the rest with black.
    inside = (max(0, left), max(0, top), min(picture.width, left + size), min(picture.height, top + size))
    if inside[2] > inside[0] and inside[3] > inside[1]:
        if scale == 1.0:
            part = picture.crop(inside)
        else:
            shrunk = (max(1, round((inside[2] - inside[0]) * scale)), max(1, round((inside[3] - inside[1]) * scale)))
            part = picture.resize(shrunk, Image.Resampling.BILINEAR, box=inside)
        canvas.paste(part, (round((inside[0] - left) * scale), round((inside[1] - top) * scale)))
    return canvas
