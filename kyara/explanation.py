"""Why this character? A heat map over each face, computed from the ONNX model alone.

The face crop is shown to the embedder many times with random cells of an 8 x 8 grid hidden
under flat grey (with soft edges); a ridge regression of the explained score on which cells were
visible gives each cell its share of the score. This is RISE (Petsiuk et al., 2018) with the
average over masks replaced by a regression, which is less noisy for the same number of masks.
The score is the face's similarity to a character (`Classifier.similarities`: a cosine, or the
estimated cosine to an enrolled character's centre) or, for "why A and not B", the similarity to
A minus the similarity to B.

The checks that a map is honest (after Adebayo et al., 2018, "Sanity Checks for Saliency Maps":
a deletion curve, a copy of the model with randomized weights) are in tests/explanation_checks.py.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from kyara.bundle import atomic_write_bytes, check_writable
from kyara.classify import Classifier
from kyara.cut import FaceCut, as_is
from kyara.embedding import Embedder
from kyara.errors import KyaraError, count
from kyara.imageio import ImageSource, load_image, resolved
from kyara.pipeline import Model, Recognizer, as_recognizer

GRID = 8
"""Cells per side of the crop: finer grids need more masks for the same noise."""
MASKS = 160
"""Masked copies per face: about 0.5 s on 2 idle cores with the default model (benchmarks/explain_speed.py)."""
KEEP = 0.5
GREY = 128.0
"""What a hidden cell shows: flat grey takes away shape and colour alike."""
RIDGE = 1.0

OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MUTED_COLOUR = 0.35
TAG_BACKGROUND, FOR_COLOUR, AGAINST_COLOUR = (35, 35, 40), (255, 170, 60), (120, 190, 255)

Score = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Explanation:
    """What one face's score for `label` (minus its score for `versus`, if set) rests on.

    `heatmap` is in crop coordinates (model input size, rows first): the share of the score each
    region carries, in score units per grid cell; positive regions speak for the label, negative
    ones against it (for `versus`). The crop is what `crop_box` (x, y, w, h in image pixels)
    covers once the picture is turned `angle` degrees counter-clockwise about the box's centre,
    which stands the face upright (as `DetectedFace.angle`). `known` tells whether the model
    names the face `label` (its best guess, above the unknown threshold).
    """

    box: tuple[int, int, int, int]
    crop_box: tuple[int, int, int, int]
    angle: float
    label: str
    versus: str | None
    score: float
    heatmap: np.ndarray
    known: bool
    fallback: bool = False

    def to_dict(self, cells: int = 32) -> dict:
        """JSON-ready, with the heat map averaged down to `cells` x `cells`."""
        cells = count(cells, "cells")
        small = Image.fromarray(self.heatmap.astype(np.float32)).resize((cells, cells), Image.Resampling.BOX)
        return {
            "box": list(self.box),
            "crop_box": list(self.crop_box),
            "angle": self.angle,
            "label": self.label,
            "versus": self.versus,
            "score": round(self.score, 4),
            "known": self.known,
            "fallback": self.fallback,
            "heatmap": np.round(np.asarray(small), 5).tolist(),
        }

    @property
    def caption(self) -> str:
        """What the picture says beside the face: `label score`, `label vs other difference`;
        a `?` after a label the model would not name (below the unknown threshold, or not its best guess)."""
        return "".join(text for text, _ in _caption_parts(self))


def explain(
    image: ImageSource,
    model: Model = None,
    label: str | None = None,
    versus: str | None = None,
    max_faces: int | None = None,
) -> list[Explanation]:
    """A heat map for every face in `image` (the whole picture if none is found), explaining
    `label` (default: each face's best guess), or "`label` and not `versus`". A face whose label
    is `versus` itself is explained against its runner-up. `max_faces`: only the most face-like
    ones (each map takes about 0.4 s on 2 cores)."""
    if max_faces is not None:
        max_faces = count(max_faces, "max_faces")
    recognizer = as_recognizer(model)
    _check_labels(recognizer.classifier, label, versus)
    cuts = recognizer.cuts_to_name(recognizer.load(image))
    return [_explain(recognizer, cut, label, versus) for cut in cuts[:max_faces]]


@dataclass(frozen=True)
class ExplainedPicture:
    """What `explain_to_file` drew, and the model that made it."""

    explanations: list[Explanation]
    model: dict
    """The model's description (`ModelBundle.describe`), as `kyara explain --json` prints it."""


def explain_to_file(
    image: ImageSource,
    output: Path,
    model: Model = None,
    label: str | None = None,
    versus: str | None = None,
) -> ExplainedPicture:
    """`kyara explain`: `explain` every face of `image`, then write the picture with the heat maps
    to `output` (`write_overlay`; a format other than .png, .jpg, .webp is refused before any work).
    Where `output` cannot be written is said before any work; it never writes over `image` itself."""
    output = Path(output)
    output_format(output)
    check_writable(output, "the picture")
    if isinstance(image, str | os.PathLike) and Path(image).exists() and resolved(image) == resolved(output):
        raise KyaraError(f"{output}: is the picture being explained; write the heat maps elsewhere")
    recognizer = model if isinstance(model, Recognizer) else Recognizer(model)
    explanations = explain(image, recognizer, label, versus)
    write_overlay(output, recognizer.load(image), explanations)
    return ExplainedPicture(explanations, recognizer.describe())


def explain_crop(
    crop: ImageSource,
    model: Model = None,
    label: str | None = None,
    versus: str | None = None,
) -> Explanation:
    """Like `explain` for a picture that is already a face crop (no detection)."""
    recognizer = as_recognizer(model)
    _check_labels(recognizer.classifier, label, versus)
    return _explain(recognizer, as_is(recognizer.load(crop)), label, versus)


def _check_labels(classifier: Classifier, label: str | None, versus: str | None) -> None:
    if not classifier.labels:
        raise KyaraError("the model knows no characters: there is nothing to explain")
    for name in (label, versus):
        if name is not None and name not in classifier.labels:
            raise KyaraError(f"the model does not know {name!r} (see `kyara characters`)")
    if label is not None and label == versus:
        raise KyaraError(f"explaining {label!r} against itself: give two different characters")


def _explain(recognizer: Recognizer, cut: FaceCut, label: str | None, versus: str | None) -> Explanation:
    pixels = input_pixels(cut.pixels, recognizer.embedder.input_size)
    embedding, gray = recognizer.embedder.embed([Image.fromarray(pixels)]), cut.gray
    prediction = recognizer.classifier.predict(embedding, top_k=2, gray=np.array([gray]))[0]
    guesses = [guess.label for guess in prediction.top_k]
    label = label or guesses[0]
    if versus == label:
        versus = next((g for g in guesses if g != label), None)
    score = scorer(recognizer.classifier, label, versus, gray)
    intact, heatmap = saliency_map(recognizer.embedder, pixels, score)
    known = prediction.label == label
    return Explanation(cut.box, cut.square, cut.angle, label, versus, intact, heatmap, known, cut.fallback)


def scorer(classifier: Classifier, label: str, versus: str | None = None, gray: bool = False) -> Score:
    """Embeddings -> the score being explained: similarity to `label`, minus that to `versus`
    (against their gray prototypes if the face is drawn in `gray`)."""
    first = classifier.labels.index(label)
    second = None if versus is None else classifier.labels.index(versus)

    def score(embeddings: np.ndarray) -> np.ndarray:
        similarities = classifier.similarities(embeddings, np.full(len(embeddings), gray))
        return similarities[:, first] - (0.0 if second is None else similarities[:, second])

    return score


def input_pixels(crop: Image.Image, size: int) -> np.ndarray:
    """The crop as the embedder sees it: size x size x 3 uint8 (resized like `Embedder.to_input`)."""
    return np.asarray(crop.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def saliency_map(
    embedder: Embedder, pixels: np.ndarray, score: Score, masks: int = MASKS, seed: int = 0
) -> tuple[float, np.ndarray]:
    """The score of the intact crop, and each region's share of it (see the module docstring)."""
    size = pixels.shape[0]
    visible_cells = _visible_cells(masks, seed)
    spread = _interpolation(GRID, size)
    visible = np.einsum("sg,ngh,th->nst", spread, visible_cells.reshape(masks, GRID, GRID), spread)[..., None]
    shown = (pixels * visible + GREY * (1 - visible)).round().astype(np.uint8)
    scores = score(embedder.embed([Image.fromarray(pixels), *map(Image.fromarray, shown)]))
    design = visible_cells - visible_cells.mean(axis=0)
    weights = np.linalg.solve(
        design.T @ design + RIDGE * np.eye(GRID * GRID), design.T @ (scores[1:] - scores[1:].mean())
    )
    return float(scores[0]), (spread @ weights.reshape(GRID, GRID) @ spread.T).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _visible_cells(masks: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((masks, GRID * GRID)) < KEEP).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _interpolation(cells: int, size: int) -> np.ndarray:
    """size x cells: linear interpolation between cell centres, held flat beyond the outer ones."""
    centres = (np.arange(cells) + 0.5) * size / cells
    pixels = np.arange(size) + 0.5
    return np.stack([np.interp(pixels, centres, one_hot) for one_hot in np.eye(cells)], axis=1).astype(np.float32)


# ---- The picture: heat maps laid over the faces --------------------------------------------------


def overlay(picture: ImageSource, explanations: Sequence[Explanation]) -> Image.Image:
    """`picture` with each explanation's heat map over its face (warm: for the label, blue: against
    it), the crop outlined and a caption beside it that stays inside the picture. The picture's
    colours are muted so that the heat colours stand out on any hair colour."""
    out = ImageEnhance.Color(load_image(picture)).enhance(MUTED_COLOUR).convert("RGBA")
    for explanation in explanations:
        heat, (x, y) = _heat_layer(explanation, out.size)
        # alpha_composite takes no negative corner: start at the part of the map inside the picture.
        if x + heat.width > 0 and y + heat.height > 0 and x < out.width and y < out.height:
            out.alpha_composite(heat, dest=(max(0, x), max(0, y)), source=(max(0, -x), max(0, -y)))
    draw = ImageDraw.Draw(out)
    font = caption_font(out.size)
    for explanation, box in zip(explanations, caption_boxes(explanations, out.size)):
        draw.polygon(_corners(explanation), outline=TAG_BACKGROUND, width=max(2, font.size // 8))
        _draw_caption(draw, explanation, box, font)
    return out.convert("RGB")


def write_overlay(path: Path, picture: ImageSource, explanations: Sequence[Explanation]) -> None:
    """Write `overlay(...)` to `path` atomically, in the format its suffix names."""
    image_format = output_format(path)
    buffer = io.BytesIO()
    overlay(picture, explanations).save(buffer, format=image_format)
    atomic_write_bytes(path, buffer.getvalue())


def output_format(path: Path) -> str:
    try:
        return OUTPUT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise KyaraError(f"{path}: write the picture as {', '.join(OUTPUT_FORMATS)}") from None


def _heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] -> RGBA: clear near 0, yellow to red for positive, cyan to blue for negative."""
    strength = np.clip(np.abs(values), 0, 1)
    warm = np.stack([np.full_like(strength, 255), 230 * (1 - strength), 20 * strength], axis=-1)
    cold = np.stack([40 * strength, 210 - 120 * strength, np.full_like(strength, 255)], axis=-1)
    rgb = np.where((values >= 0)[..., None], warm, cold)
    alpha = 220 * np.clip((strength - 0.1) / 0.9, 0, 1)
    return np.concatenate([rgb, alpha[..., None]], axis=-1).round().astype(np.uint8)


def _heat_layer(explanation: Explanation, picture: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
    """The coloured map at the crop's size, turned like the crop, and where its corner goes."""
    x, y, width, height = explanation.crop_box
    peak = float(np.abs(explanation.heatmap).max()) or 1.0
    # Colour at the map's size, then enlarge: a whole-picture crop can be thousands of pixels wide.
    colours = Image.fromarray(_heat_colours(explanation.heatmap / peak))
    if explanation.angle:
        heat = colours.resize((width, height), Image.Resampling.BILINEAR)
        heat = heat.rotate(-explanation.angle, Image.Resampling.BILINEAR, expand=True)
        return heat, (round(x + (width - heat.width) / 2), round(y + (height - heat.height) / 2))
    # Upright, only the part over the picture is made: the square padded around a long, thin
    # picture would be its long side squared (20 x 20,000 px: 1.6 GB).
    left, top = max(0, -x), max(0, -y)
    right, bottom = max(left + 1, min(width, picture[0] - x)), max(top + 1, min(height, picture[1] - y))
    cells_x, cells_y = colours.width / width, colours.height / height
    window = (left * cells_x, top * cells_y, right * cells_x, bottom * cells_y)
    return colours.resize((right - left, bottom - top), Image.Resampling.BILINEAR, box=window), (x + left, y + top)


def _corners(explanation: Explanation) -> list[tuple[float, float]]:
    x, y, width, height = explanation.crop_box
    cx, cy = x + width / 2, y + height / 2
    turn = math.radians(explanation.angle)
    cos, sin = math.cos(turn), math.sin(turn)
    offsets = [(-width / 2, -height / 2), (width / 2, -height / 2), (width / 2, height / 2), (-width / 2, height / 2)]
    return [(cx + dx * cos - dy * sin, cy + dx * sin + dy * cos) for dx, dy in offsets]


def _caption_parts(explanation: Explanation) -> list[tuple[str, tuple[int, int, int]]]:
    name = explanation.label if explanation.known else f"{explanation.label}?"
    if explanation.versus is None:
        # A similarity, not recognize's calibrated confidence: the caption says which it is.
        return [(f"{name} similarity {explanation.score:.2f}", FOR_COLOUR)]
    return [
        (name, FOR_COLOUR),
        (" vs ", (230, 230, 230)),
        (explanation.versus, AGAINST_COLOUR),
        (f" {explanation.score:+.2f}", (230, 230, 230)),
    ]


def caption_font(size: tuple[int, int]) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(12, round(max(size) / 55)))


def caption_boxes(explanations: Sequence[Explanation], size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """Where each caption goes (left, top, right, bottom): above its crop, else below, else just
    inside its top edge; the first place that covers no earlier caption and no other face, else
    the first that covers no earlier caption; always in the picture."""
    font = caption_font(size)
    placed: list[tuple[int, int, int, int]] = []
    pad = _padding(font)
    faces = [(x, y, x + w, y + h) for x, y, w, h in (e.box for e in explanations)]
    for i, explanation in enumerate(explanations):
        others = faces[:i] + faces[i + 1 :]
        width, height = round(font.getlength(explanation.caption)) + 2 * pad, font.size + 2 * pad
        xs, ys = zip(*_corners(explanation))
        left = _clamp(round(min(xs)), size[0] - width)
        tops = [_clamp(top, size[1] - height) for top in (round(min(ys)) - height, round(max(ys)), round(min(ys)))]
        candidates = [(left, top, left + width, top + height) for top in tops]
        free = [box for box in candidates if not any(_overlap(box, other) for other in placed)]
        clear = [box for box in free if not any(_overlap(box, face) for face in others)]
        placed.append((clear or free or candidates)[0])
    return placed


def _clamp(value: int, highest: int) -> int:
    return max(0, min(value, highest))


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_caption(
    draw: ImageDraw.ImageDraw, explanation: Explanation, box: tuple[int, int, int, int], font: ImageFont.FreeTypeFont
) -> None:
    draw.rectangle(box, fill=TAG_BACKGROUND)
    x, y = box[0] + _padding(font), box[1] + _padding(font)
    for part, colour in _caption_parts(explanation):
        draw.text((x, y), part, fill=colour, font=font)
        x += font.getlength(part)


def _padding(font: ImageFont.FreeTypeFont) -> int:
    return max(2, font.size // 5)
