"""Train kyara's anime face detector offline, reproducibly (fixed seed), and export it to ONNX.

    python tools/build_data.py --out build/data          # the pictures, from public snapshots
    python tools/train_detector.py --data ../shared/data --pictures build/data --out kyara/models/detector.onnx

There is no public detection set with boxes, so training pictures are made on the fly (256 px):
- real illustrations of many series and styles (fan art, character portraits of thousands of
  characters, screenshots, manga pages; tools/build_data.py and docs/data.md), with the face labels
  of tools/detector-labels.json: pseudo-labels from every detector kyara had
  (tools/face_proposals.py) and faces checked by hand, confident ones are faces, weaker ones are
  left out of the loss (but on a MyAnimeList portrait with one sure face, those centred outside it
  are background), pictures where no face was sure are corrected by hand or left out (never
  taught as background).
  Each source (folder) is drawn in proportion to the square root of its size. They are seen at
  every scale, zoomed until a face is larger than the network's input and cut by the edges, and
  with `--turned-p`, some turned whole, their sure faces' angles read off the eye line by kyara's
  landmark network (`eye_angles`), so that the angle head learns the tilt of real faces;
- face crops (../shared/data and 105 moeimouto characters) pasted, with soft oval edges, onto those
  pictures and onto mosaics of non-face patches, at many sizes and tilts, mirrored, some behind
  sunglasses, a mask or a blindfold drawn on them;
- non-face patches pasted the same way, so that a pasted oval is not itself a sign of a face;
- a share of every kind in gray, half of those with screentone, as manga is printed.
No picture of the detection benchmarks (benchmarks/detection_boxes*.json) is ever used, nor any of
the characters reserved for independent evaluation (tools/build_data.py never writes them).
The network (`FaceCenterNet`) starts from the anime backbone of the default model, or with
`--start` from an exported detector: the shipped one was made so, in the steps docs/detection.md
lists under *Training* (three commands from session 9's file).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps
from tqdm import tqdm

from kyara.bundle import atomic_write_bytes, default_model_path, load_bundle
from kyara.detection import DetectedFace, containment, iou, turned_clockwise, wrapped_degrees
from kyara.imageio import list_images, load_image
from kyara.landmarks import Landmarker, eye_tilt
from kyara.train.nets import FaceCenterNet
from kyara.train.trainer import arrays_to_state, onnx_bytes

REPOSITORY = Path(__file__).resolve().parents[1]
BENCHMARK = REPOSITORY / "benchmarks" / "detection_boxes.json"
LABELS = REPOSITORY / "tools" / "detector-labels.json"
FACE_FOLDERS = ("holoen-faces", "danbooru6-faces", "newgame-faces")
MOEIMOUTO_FACES = "faces/moeimouto"
SURE_SCORE = {"cnn384": 0.5, "cnn640": 0.5, "closeup": 0.6, "animeface": 0.9, "hand": 0.0}
"""Proposal score from which a pseudo-label counts as a face, per proposer (tools/face_proposals.py);
weaker proposals are left out of the loss, neither face nor background (`portrait_labels` says
where they are background). Hand labels are always sure."""
FACE_IN_CROP = 0.75
"""Side of the face box (hairline to chin) as a share of a face crop's side, judged by eye."""
INPUT_SIDE = 384
"""Longer side kyara.detection scales a picture to for this detector."""
SHIPPED_MIN_SCORE = 0.47
"""The shipped detector's threshold, chosen on half of the benchmark (docs/detection.md)."""
KEPT_SIDE = 768
"""Longer side the training pictures are kept at in memory (they are read once)."""
MAX_EYE_ANGLE = 45.0
"""Eye lines read as turned further than this from level are not taken as a face's angle. A guard
against wild readings, not a filter of steep faces: the landmark network learned turns of up to 35
degrees (tools/train_landmarks.py) and reads steeper ones short (a crop turned by 60 degrees reads
20 to 40), so such faces are taught too small an angle. Real training faces are mostly near
upright (median 7 degrees off level): 6 of 8,022 got no angle (this or eyes too close)."""


@dataclass
class DetectorConfig:
    steps: int = 1000
    batch_size: int = 16
    canvas: int = 256
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    min_face: float = 14.0
    max_face: float = 300.0
    zoom_p: float = 0.25
    tilted_p: float = 0.4
    turned_p: float = 0.3  # 0: no turned pictures and, as before session 19, no angles for real faces
    max_turn: float = 60.0
    level_within: float = 10.0  # eye lines within this many degrees of level are taught as level
    occluded_p: float = 0.2
    gray_p: float = 0.2
    screentone_p: float = 0.5
    seed: int = 0
    threads: int = 2
    start: str = ""  # sha1 of the exported detector training starts from; "" for the anime backbone


@dataclass
class Face:
    """A training face: centre and side in canvas pixels, and the angle that stands it upright."""

    cx: float
    cy: float
    side: float
    angle: float | None = None  # unknown for pseudo-labels


@dataclass
class Sample:
    image: Image.Image
    faces: list[Face] = field(default_factory=list)
    ignore: list[tuple[float, float, float, float]] = field(default_factory=list)  # x0, y0, x1, y1


def benchmark_files() -> set[str]:
    return set(json.loads(BENCHMARK.read_text())["excluded_from_training"])


def face_crops(data: Path, pictures: Path, excluded: set[str]) -> list[Path]:
    """Every face crop of ../shared/data (less those cut out of benchmark pictures) and moeimouto's."""
    benchmark_names = {Path(name).relative_to("newgame-illustrations").as_posix() for name in excluded}
    crops = [
        path
        for folder in FACE_FOLDERS
        for character in sorted((data / folder).iterdir())
        if character.is_dir()
        for path in list_images(character)
        if not (folder == "newgame-faces" and f"{character.name}/{path.name}" in benchmark_names)
    ]
    moeimouto = list_images(pictures / MOEIMOUTO_FACES) if (pictures / MOEIMOUTO_FACES).is_dir() else []
    return crops + list_images(data / "face-patches" / "face") + moeimouto


@dataclass(frozen=True)
class Label:
    """A face box in the picture's pixels; unsure ones are left out of the loss."""

    box: tuple[int, int, int, int]
    sure: bool
    angle: float | None = None  # read off the eye line (`eye_angles`); None where no eye line is seen


def merged(labels: list[Label]) -> list[Label]:
    """One label per face: sure ones first, then unsure ones that overlap no kept label."""
    kept: list[Label] = []
    for label in sorted(labels, key=lambda item: not item.sure):
        if all(iou(label.box, other.box) < 0.4 and containment(label.box, other.box) < 0.7 for other in kept):
            kept.append(label)
    return kept


def labelled_pictures(
    labels_file: Path, roots: dict[str, Path], excluded: set[str]
) -> list[tuple[Path, list[Label], str]]:
    """The training pictures of `labels_file` (tools/face_proposals.py labels) that hold a sure face
    or were checked by hand, with their labels (`portrait_labels` applied to MyAnimeList portraits)
    and source: in the others a face may have been missed by every proposer, and must not be
    taught as background."""
    written = json.loads(labels_file.read_text())
    checked = set(written["hand_checked"])
    pictures = []
    for key, proposals in sorted(written["pictures"].items()):
        root, relative = key.split("/", 1)
        if root not in roots or relative in excluded:
            continue
        labels = labels_of(proposals)
        if source_of(key) == "mal-portraits":
            labels = portrait_labels(labels)
        if key in checked or any(label.sure for label in labels):
            pictures.append((roots[root] / relative, labels, source_of(key)))
    return pictures


def labels_of(proposals: list[dict]) -> list[Label]:
    """One label per face of a picture's proposals (tools/detector-labels.json), sure or not."""
    return merged([Label(tuple(p["box"]), p["score"] >= SURE_SCORE[p["by"]]) for p in proposals if p["box"][2] >= 6])


def portrait_labels(labels: list[Label]) -> list[Label]:
    """A MyAnimeList portrait shows one character: where exactly one face is sure, the unsure
    proposals centred outside it are hands, chests and brooches, and are taught as background. Of
    96 such portraits checked by hand, 95 held exactly that one face (docs/detection.md)."""
    sure = [label for label in labels if label.sure]
    if len(sure) != 1:
        return labels
    x, y, w, h = sure[0].box

    def inside(label: Label) -> bool:
        cx, cy = label.box[0] + label.box[2] / 2, label.box[1] + label.box[3] / 2
        return x <= cx <= x + w and y <= cy <= y + h

    return [label for label in labels if label.sure or inside(label)]


def source_of(key: str) -> str:
    """A training picture's source: the first folder of its labels key (root/relative path) below
    tools/build_data.py's `illustrations/train/`, e.g. "mal-portraits" or "newgame-illustrations"."""
    folders = key.split("/")[1:-1]
    return next(folder for folder in folders if folder not in {"illustrations", "train"})


def source_weights(sources: list[str]) -> np.ndarray:
    """How often each picture is drawn: a source of n pictures is drawn in proportion to sqrt(n),
    so that 4,900 portraits teach the portrait without crowding out 150 manga pages."""
    counts = Counter(sources)
    weights = np.array([1 / math.sqrt(counts[source]) for source in sources])
    return weights / weights.sum()


def training_patches(data: Path) -> list[Path]:
    """The non-face patches used in training: every tenth is kept back for tests."""
    return [p for i, p in enumerate(list_images(data / "face-patches" / "not-face")) if i % 10]


def _kept_small(path: Path) -> tuple[Image.Image, float]:
    image = load_image(path).convert("RGB")
    scale = min(1.0, KEPT_SIDE / max(image.size))
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    return image, scale


class SampleMaker:
    """Makes the training pictures described in the module docstring, from one seeded generator."""

    def __init__(self, data: Path, pictures: Path, config: DetectorConfig, rng: np.random.Generator) -> None:
        excluded = benchmark_files()
        self.config = config
        self.rng = rng
        self.crops = face_crops(data, pictures, excluded)
        roots = {"shared": data, "pictures": pictures}
        self.illustrations = []
        pictures_labelled = labelled_pictures(LABELS, roots, excluded)
        landmarker = Landmarker(threads=config.threads) if config.turned_p > 0 else None
        for path, labels, _ in tqdm(pictures_labelled, desc="reading pictures"):
            image, scale = _kept_small(path)
            scaled = [Label(tuple(round(v * scale) for v in label.box), label.sure) for label in labels]
            angled = eye_angles(image, scaled, landmarker, config.level_within) if landmarker else scaled
            self.illustrations.append((image, angled))
        self.weights = source_weights([source for _, _, source in pictures_labelled])
        self.patches = [np.asarray(load_image(p)) for p in training_patches(data)]

    def sample(self) -> Sample:
        kind = self.rng.random()
        if kind < 0.45:
            return self._illustration()
        base = self._illustration() if kind < 0.7 else self._mosaic()
        for _ in range(self.rng.integers(1, 5)):
            self._paste_face(base)
        for _ in range(self.rng.integers(0, 3)):
            self._paste_patch(base)
        return base

    def _illustration(self) -> Sample:
        size = self.config.canvas
        original, labels = self.illustrations[self.rng.choice(len(self.illustrations), p=self.weights)]
        sure = [label for label in labels if label.sure]
        if sure and self.rng.random() < self.config.zoom_p:
            # Close-ups: a face from 100 px to larger than the canvas, often cut by its edges.
            chosen = sure[self.rng.integers(len(sure))]
            scale = math.exp(self.rng.uniform(math.log(100), math.log(self.config.max_face))) / chosen.box[2]
        else:
            # Pictures seen with their longer side at 0.4 to 1.5 times 512 px, which covers the
            # 384 px kyara.detection runs at and faces larger and smaller than it meets there.
            scale = 512 * math.exp(self.rng.uniform(math.log(0.4), math.log(1.5))) / max(original.size)
        scale = min(scale, 3.0)
        image = original.resize(
            (max(1, round(original.width * scale)), max(1, round(original.height * scale))), Image.Resampling.BILINEAR
        )
        if image.width < size or image.height < size:
            image = _padded(image, size, self.rng)
        faces = [(Face(*_centre(label.box, scale), label.box[2] * scale, label.angle), label.sure) for label in labels]
        if self.config.turned_p and self.rng.random() < self.config.turned_p:
            image, faces = _turned(image, faces, float(self.rng.uniform(-1, 1) * self.config.max_turn), self.rng)
        sure_faces = [face for face, is_sure in faces if is_sure]
        if sure_faces and self.rng.random() < 0.7:
            face = sure_faces[self.rng.integers(len(sure_faces))]
            left = face.cx - self.rng.uniform(0.15, 0.85) * size
            top = face.cy - self.rng.uniform(0.15, 0.85) * size
        else:
            left, top = self.rng.uniform(0, image.width - size), self.rng.uniform(0, image.height - size)
        left = int(np.clip(left, 0, image.width - size))
        top = int(np.clip(top, 0, image.height - size))
        sample = Sample(image.crop((left, top, left + size, top + size)))
        for face, is_sure in faces:
            moved = Face(face.cx - left, face.cy - top, face.side, face.angle)
            if is_sure:
                sample.faces.append(moved)
            else:
                sample.ignore.append(_box_of(moved))
        return sample

    def _mosaic(self) -> Sample:
        size = self.config.canvas
        cells = int(self.rng.integers(1, 5))
        cell = math.ceil(size / cells)
        canvas = Image.new("RGB", (size, size))
        for row in range(cells):
            for col in range(cells):
                patch = Image.fromarray(self.patches[self.rng.integers(len(self.patches))])
                canvas.paste(patch.resize((cell, cell), Image.Resampling.BILINEAR), (col * cell, row * cell))
        return Sample(canvas)

    def _paste_face(self, sample: Sample) -> None:
        config = self.config
        side = math.exp(self.rng.uniform(math.log(config.min_face), math.log(config.max_face)))
        tilt = float(self.rng.uniform(-75, 75)) if self.rng.random() < config.tilted_p else float(self.rng.normal(0, 5))
        cx, cy = self.rng.uniform(0, config.canvas, size=2)
        crop = load_image(self.crops[self.rng.integers(len(self.crops))])
        # Never blown up more than twice: a blurred face would teach that blur is a face.
        crop_side = max(4, min(round(side / FACE_IN_CROP), 2 * crop.width))
        side = crop_side * FACE_IN_CROP
        box = _box_of(Face(cx, cy, side))
        if any(_overlap(box, other) > 0.15 for other in [_box_of(f) for f in sample.faces] + sample.ignore):
            return
        if self.rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        resized = crop.convert("RGB").resize((crop_side, crop_side), Image.Resampling.BILINEAR)
        if self.rng.random() < config.occluded_p:
            occlude(resized, str(self.rng.choice(OCCLUDERS)), self.rng)
        # A face sits a little below the middle of its crop (hair above, neck below); the crop's
        # centre is placed so that the face's centre lands on (cx, cy) after turning.
        offset, turn = 0.03 * crop_side, math.radians(tilt)
        _paste_oval(sample.image, resized, cx - offset * math.sin(turn), cy - offset * math.cos(turn), tilt)
        sample.faces.append(Face(cx, cy, side, -tilt))

    def _paste_patch(self, sample: Sample) -> None:
        side = math.exp(self.rng.uniform(math.log(24), math.log(200)))
        cx, cy = self.rng.uniform(0, self.config.canvas, size=2)
        box = _box_of(Face(cx, cy, side))
        if any(_overlap(box, _box_of(face)) > 0.05 for face in sample.faces):
            return
        patch = Image.fromarray(self.patches[self.rng.integers(len(self.patches))]).resize(
            (round(side), round(side)), Image.Resampling.BILINEAR
        )
        _paste_oval(sample.image, patch, cx, cy, float(self.rng.uniform(-45, 45)))

    def augmented(self) -> tuple[np.ndarray, Sample]:
        """`sample()` mirrored half the time, in gray sometimes (then screentone, sometimes), with
        light colour jitter; the picture as float32 H x W x 3 in [0, 1]."""
        sample = self.sample()
        if self.rng.random() < 0.5:
            size = self.config.canvas
            sample.image = ImageOps.mirror(sample.image)
            sample.faces = [
                Face(size - f.cx, f.cy, f.side, None if f.angle is None else -f.angle) for f in sample.faces
            ]
            sample.ignore = [(size - x1, y0, size - x0, y1) for x0, y0, x1, y1 in sample.ignore]
        if self.rng.random() < self.config.gray_p:
            gray = ImageOps.autocontrast(sample.image.convert("L"))
            if self.rng.random() < self.config.screentone_p:
                gray = screentone(gray, int(self.rng.integers(3, 7)))
            sample.image = gray.convert("RGB")
        pixels = np.asarray(sample.image, np.float32) / 255
        contrast, brightness = self.rng.uniform(0.8, 1.2), self.rng.uniform(-0.1, 0.1)
        return np.clip((pixels - 0.5) * contrast + 0.5 + brightness, 0, 1), sample


OCCLUDERS = ("sunglasses", "mask", "blindfold")


def occlude(crop: Image.Image, kind: str, rng: np.random.Generator) -> None:
    """Draw sunglasses, a face mask or a blindfold on a face crop, in place. The face box spans the
    middle FACE_IN_CROP of the crop; anime eyes sit about halfway down it, the mouth at four fifths."""
    side = crop.width
    face = FACE_IN_CROP * side
    left, top = (side - face) / 2, (side - face) / 2 + 0.03 * side
    pen = ImageDraw.Draw(crop)
    shade = tuple(int(v) for v in rng.integers(0, 70, size=3))
    if kind == "sunglasses":
        for centre in (0.32, 0.68):
            x, y, r = left + centre * face, top + 0.55 * face, 0.15 * face
            pen.ellipse([x - r, y - 0.75 * r, x + r, y + 0.75 * r], fill=shade)
        pen.line([(left + 0.45 * face, top + 0.53 * face), (left + 0.55 * face, top + 0.53 * face)], fill=shade,
                 width=max(1, round(0.03 * face)))  # fmt: skip
    elif kind == "mask":
        light = tuple(int(v) for v in rng.integers(200, 256, size=3))
        pen.rounded_rectangle([left + 0.12 * face, top + 0.66 * face, left + 0.88 * face, top + 1.02 * face],
                              radius=0.1 * face, fill=light, outline=(120, 120, 120))  # fmt: skip
    else:
        pen.rectangle([left - 0.05 * face, top + 0.42 * face, left + 1.05 * face, top + 0.64 * face], fill=shade)


def screentone(gray: Image.Image, period: int) -> Image.Image:
    """Manga printing: dark stays black, light stays white, mid-tones become a grid of dots whose
    size follows the tone."""
    pixels = np.asarray(gray, np.float32) / 255
    rows, columns = np.mgrid[0 : gray.height, 0 : gray.width]
    dot = np.hypot((rows % period) - period / 2 + 0.5, (columns % period) - period / 2 + 0.5) / (period / 2)
    toned = np.where(dot < (1 - pixels) * 1.2, 0.0, 1.0)
    out = np.where(pixels < 0.25, 0.0, np.where(pixels > 0.85, 1.0, toned))
    return Image.fromarray((out * 255).astype(np.uint8))


def _padded(image: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """A picture smaller than the canvas, on a plain canvas of a random light or dark colour."""
    canvas = Image.new("RGB", (max(size, image.width), max(size, image.height)), tuple(int(v) for v in
                       rng.integers(0, 256, size=3)))  # fmt: skip
    canvas.paste(image, (0, 0))
    return canvas


def eye_angles(image: Image.Image, labels: list[Label], landmarker: Landmarker, level_within: float) -> list[Label]:
    """`labels` with the angle that stands each sure face upright, read off its eye line by kyara's
    landmark network where it sees one (eyes at least `kyara.landmarks.MIN_EYE_GAP` of the side
    apart) and reads no more than `MAX_EYE_ANGLE` (see there: steep faces are read short): real
    pictures then teach the angle head too, turned (`turned_p`) as well as upright.
    Eye lines within `level_within` degrees of level are taught as level: the landmark network's
    eye points scatter by a few hundredths of the face's side, which tilts an eye line by up to
    about ten degrees, and a face read as tilted where it is upright is cut askew for recognition."""
    sure = [label for label in labels if label.sure]
    points = landmarker.points(image, [DetectedFace(label.box, 1.0) for label in sure])
    angles = {}
    for label, at in zip(sure, points, strict=True):
        tilt = eye_tilt(at, max(label.box[2:]))
        if tilt is not None and abs(tilt) <= MAX_EYE_ANGLE:
            angles[label] = 0.0 if abs(tilt) < level_within else -tilt
    return [replace(label, angle=angles.get(label)) for label in labels]


def _turned(
    image: Image.Image, faces: list[tuple[Face, bool]], turn: float, rng: np.random.Generator
) -> tuple[Image.Image, list[tuple[Face, bool]]]:
    """The picture turned `turn` degrees counter-clockwise (grown to hold it, corners a plain
    colour), with its faces: centres turned, angles less `turn`, unsure boxes grown to cover their
    turned square."""
    fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
    turned = image.rotate(turn, Image.Resampling.BILINEAR, expand=True, fillcolor=fill)
    offsets = np.array([[face.cx - image.width / 2, face.cy - image.height / 2] for face, _ in faces]).reshape(-1, 2)
    centres = np.array([turned.width / 2, turned.height / 2]) + turned_clockwise(offsets, -math.radians(turn))
    grown = abs(math.cos(math.radians(turn))) + abs(math.sin(math.radians(turn)))
    moved = []
    for (face, sure), (cx, cy) in zip(faces, centres.tolist(), strict=True):
        if sure:
            angle = None if face.angle is None else wrapped_degrees(face.angle - turn)
            moved.append((Face(cx, cy, face.side, angle), True))
        else:
            moved.append((Face(cx, cy, face.side * grown), False))
    return turned, moved


def _centre(box: list[int], scale: float) -> tuple[float, float]:
    x, y, w, h = box
    return (x + w / 2) * scale, (y + h / 2) * scale


def _box_of(face: Face) -> tuple[float, float, float, float]:
    half = face.side / 2
    return face.cx - half, face.cy - half, face.cx + half, face.cy + half


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def _paste_oval(canvas: Image.Image, picture: Image.Image, cx: float, cy: float, tilt: float) -> None:
    """Paste `picture` centred at (cx, cy), turned `tilt` degrees counter-clockwise, through an
    oval mask with soft edges (a square edge would tell the network where a paste is)."""
    side = picture.width
    radius = np.hypot(*np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side)))
    mask = Image.fromarray((np.clip((1 - radius) / 0.25, 0, 1) * 255).astype(np.uint8))
    if abs(tilt) > 0.5:
        picture = picture.rotate(tilt, Image.Resampling.BILINEAR, expand=True)
        mask = mask.rotate(tilt, Image.Resampling.BILINEAR, expand=True)
    canvas.paste(picture, (round(cx - picture.width / 2), round(cy - picture.height / 2)), mask)


def targets(sample: Sample, canvas: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one sample, on the output grid (canvas / stride cells a side).

    Returns the target maps (heat, x/y offset, log side, cos, sin) and the loss weights (heat:
    0 in left-out regions; box: 1 at face centres; angle: 1 at centres of faces of known angle)."""
    cells = canvas // stride
    maps = np.zeros((6, cells, cells), np.float32)
    weights = np.zeros((3, cells, cells), np.float32)
    weights[0] = 1
    inside = [f for f in sample.faces if 0 <= f.cx < canvas and 0 <= f.cy < canvas]
    # A face whose centre is cut off teaches nothing, and its visible part is not background.
    cut_off = [_box_of(f) for f in sample.faces if f not in inside]
    for x0, y0, x1, y1 in sample.ignore + cut_off:
        rows = slice(max(0, int(y0 // stride)), max(0, math.ceil(y1 / stride)))
        weights[0, rows, max(0, int(x0 // stride)) : max(0, math.ceil(x1 / stride))] = 0
    grid_y, grid_x = np.mgrid[0:cells, 0:cells]
    for face in inside:
        gx, gy = face.cx / stride, face.cy / stride
        ix, iy = int(gx), int(gy)
        sigma = max(0.6, 0.12 * face.side / stride)
        heat = np.exp(-((grid_x - ix) ** 2 + (grid_y - iy) ** 2) / (2 * sigma**2))
        maps[0] = np.maximum(maps[0], heat)
        weights[0][heat > 0.01] = 1
        maps[1:4, iy, ix] = gx - ix, gy - iy, math.log(face.side / stride)
        weights[1, iy, ix] = 1
        if face.angle is not None:
            maps[4:, iy, ix] = math.cos(math.radians(face.angle)), math.sin(math.radians(face.angle))
            weights[2, iy, ix] = 1
    return maps, weights


def detection_loss(output: torch.Tensor, maps: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """CenterNet's focal loss on the heat map plus L1 on offsets, sizes and angles at centres."""
    logits, target, heat_weight, centre = output[:, 0], maps[:, 0], weights[:, 0], weights[:, 1]
    positive = (target == 1).float()
    probability = torch.sigmoid(logits)
    focal = -(
        positive * (1 - probability) ** 2 * F.logsigmoid(logits)
        + (1 - positive) * heat_weight * (1 - target) ** 4 * probability**2 * F.logsigmoid(-logits)
    ).sum() / positive.sum().clamp(min=1)
    error = (output[:, 1:] - maps[:, 1:]).abs()
    box = (error[:, :3] * centre.unsqueeze(1)).sum() / centre.sum().clamp(min=1)
    angle = (error[:, 3:] * weights[:, 2:]).sum() / weights[:, 2].sum().clamp(min=1)
    return {"heat": focal, "box": box, "angle": angle, "total": focal + box + 0.5 * angle}


def build_detector_net() -> FaceCenterNet:
    """A FaceCenterNet whose backbone starts from the default model's anime backbone."""
    net = FaceCenterNet()
    weights = load_bundle(default_model_path()).weights
    anime = {k.removeprefix("backbone."): v for k, v in arrays_to_state(weights).items() if k.startswith("backbone.")}
    net.backbone.load_state_dict(anime)
    return net


def load_exported(net: FaceCenterNet, model: bytes) -> None:
    """Start from a detector exported before (an ONNX file), so that training goes on from what it
    learned. The export folded each batch norm into its convolution: the folded weights go to the
    convolution and the folded bias to a batch norm that then passes its input through unchanged,
    which is why training from such a start keeps batch norms frozen (`frozen_norms`)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    folded = [(arrays[n.input[1]], arrays[n.input[2]]) for n in graph.node if n.op_type == "Conv"]
    named = {k: v for k, v in arrays.items() if not k.startswith("onnx::")}
    convolutions = [m for m in _in_forward_order(net) if isinstance(m, torch.nn.Conv2d)]
    norms = {id(conv): norm for conv, norm in _conv_norm_pairs(net)}
    if len(folded) != len(convolutions):
        raise SystemExit(f"the exported detector has {len(folded)} convolutions, this network {len(convolutions)}")
    with torch.no_grad():
        for conv, (weight, bias) in zip(convolutions, folded, strict=True):
            if tuple(conv.weight.shape) != weight.shape:
                raise SystemExit(f"a convolution of shape {weight.shape} does not fit {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            norm = norms.get(id(conv))
            if norm is None:
                conv.bias.copy_(torch.from_numpy(bias))
            else:
                norm.weight.fill_(1.0)
                norm.bias.copy_(torch.from_numpy(bias))
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
        for name in ("mean", "std"):
            getattr(net, name).copy_(torch.from_numpy(named[name]))


def _in_forward_order(net: FaceCenterNet) -> list[torch.nn.Module]:
    """The modules in the order FaceCenterNet.forward runs them (the order of an export's nodes)."""
    order = [*net.backbone.features[:18].modules(), *net.lateral[1].modules(), *net.lateral[2].modules()]
    return [*order, *net.lateral[0].modules(), *net.smooth.modules(), *net.head.modules()]


def _conv_norm_pairs(net: FaceCenterNet) -> list[tuple[torch.nn.Conv2d, torch.nn.BatchNorm2d]]:
    modules = _in_forward_order(net)
    return [
        (first, second)
        for first, second in itertools.pairwise(modules)
        if isinstance(first, torch.nn.Conv2d) and isinstance(second, torch.nn.BatchNorm2d)
    ]


def frozen_norms(net: FaceCenterNet) -> None:
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()


FROZEN_STAGES = 4
"""The first backbone stages (down to stride 4) keep the default model's weights: they see edges and
strokes, which need no new learning, and their backward pass is the costliest on a CPU."""


def _freeze_stem(net: FaceCenterNet) -> None:
    for module in net.backbone.features[:FROZEN_STAGES]:
        module.requires_grad_(False)
        module.eval()


def _learning_rate(step: int, config: DetectorConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_detector(
    data: Path,
    pictures: Path,
    config: DetectorConfig,
    checkpoint: Path,
    log: Path | None = None,
    start: bytes | None = None,
) -> FaceCenterNet:
    """Train from an exported detector (`start`, whose sha1 `config.start` names) or else from the
    default model's backbone; goes on from `checkpoint` when there is one."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    net = build_detector_net()
    if start is not None:
        if hashlib.sha1(start).hexdigest() != config.start:
            raise SystemExit("the detector to start from is not the one the settings name")
        load_exported(net, start)
    maker = SampleMaker(data, pictures, config, np.random.default_rng(config.seed))
    labels = [label for _, found in maker.illustrations for label in found]
    sure = sum(label.sure for label in labels)
    angled = sum(label.angle is not None for label in labels)
    tqdm.write(
        f"{len(maker.illustrations)} pictures with {sure} sure ({angled} of known angle) and "
        f"{len(labels) - sure} unsure faces, "
        f"{len(maker.crops)} face crops, {len(maker.patches)} non-face patches"
    )
    rng = maker.rng
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["config"] != asdict(config):
            raise SystemExit(f"{checkpoint} was made with other settings; remove it to start again")
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
    net.train()
    _freeze_stem(net)
    if start is not None:
        frozen_norms(net)
    progress = tqdm(range(step, config.steps), initial=step, total=config.steps, desc="detector")
    started = time.monotonic()
    for step in progress:
        pictures_, samples = zip(*(maker.augmented() for _ in range(config.batch_size)), strict=True)
        images = torch.from_numpy(np.stack(pictures_).transpose(0, 3, 1, 2).copy())
        maps, weights = zip(*(targets(s, config.canvas, FaceCenterNet.stride) for s in samples), strict=True)
        losses = detection_loss(net(images), torch.from_numpy(np.stack(maps)), torch.from_numpy(np.stack(weights)))
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        progress.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
        if log is not None:
            record = {"step": step + 1, "seconds": round(time.monotonic() - started, 1)}
            with log.open("a") as out:
                out.write(json.dumps(record | {k: round(v.item(), 4) for k, v in losses.items()}) + "\n")
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            _save_checkpoint(checkpoint, net, optimizer, rng, step + 1, config)
    return net


def _save_checkpoint(path: Path, net, optimizer, rng: np.random.Generator, step: int, config: DetectorConfig) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "config": asdict(config),
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def export_detector(net: FaceCenterNet, settings: dict[str, float | int]) -> bytes:
    """The detector as ONNX: input `image` float32 1 x 3 x H x W in [0, 1] (sides multiples of 32),
    with its settings (kyara.detection.CNN_SETTINGS' keys) in the file's metadata."""
    dynamic_axes = {"image": {2: "height", 3: "width"}, "maps": {2: "rows", 3: "columns"}}
    return with_settings(onnx_bytes(net, torch.zeros(1, 3, 512, 512), "maps", dynamic_axes), settings)


def with_settings(model: bytes, settings: dict[str, float | int]) -> bytes:
    """The ONNX model with `settings` stored as `kyara.*` metadata (replacing earlier ones)."""
    import onnx

    proto = onnx.load_from_string(model)
    kept = [entry for entry in proto.metadata_props if entry.key.removeprefix("kyara.") not in settings]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in settings.items():
        proto.metadata_props.add(key=f"kyara.{key}", value=str(value))
    return proto.SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--pictures", type=Path, default=Path("build/data"), help="tools/build_data.py's output")
    parser.add_argument("--out", type=Path, default=Path("kyara/models/detector.onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("build/detector-checkpoint.pt"))
    parser.add_argument("--log", type=Path, default=Path("build/detector-train.jsonl"))
    parser.add_argument("--steps", type=int, default=DetectorConfig.steps)
    parser.add_argument("--lr", type=float, default=DetectorConfig.lr, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--level-within", type=float, default=DetectorConfig.level_within, help="degrees of eye tilt taught as level"
    )
    parser.add_argument(
        "--max-turn", type=float, default=DetectorConfig.max_turn, help="real pictures turned by up to this (degrees)"
    )
    parser.add_argument(
        "--turned-p", type=float, default=DetectorConfig.turned_p, help="share of real pictures turned (angles taught)"
    )
    parser.add_argument("--min-score", type=float, default=SHIPPED_MIN_SCORE, help="threshold stored in the model")
    parser.add_argument("--start", type=Path, default=None, help="an exported detector to go on from (ONNX)")
    args = parser.parse_args()
    start = args.start.read_bytes() if args.start else None
    config = DetectorConfig(
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        turned_p=args.turned_p,
        max_turn=args.max_turn,
        level_within=args.level_within,
        start=hashlib.sha1(start).hexdigest() if start else "",
    )
    net = train_detector(args.data, args.pictures, config, args.checkpoint, args.log, start)
    settings = {
        "input_side": INPUT_SIDE,
        "stride": FaceCenterNet.stride,
        "min_score": args.min_score,
        "closeup_retry": 1,
    }
    atomic_write_bytes(args.out, export_detector(net, settings))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
