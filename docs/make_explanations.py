"""Measure kyara's heat maps on ../shared/data and draw the figures of docs/explanations.md.

python docs/make_explanations.py     # needs the test extra (onnx, matplotlib); a few minutes on 2 cores

Writes docs/explanations-metrics.json, docs/explanations-deletion.png, docs/explanations-twins.png
(numbers and plots only: the pictures belong to their artists) and docs/example-explained.png
(kyara explain on our own drawing). Faces are the default model's held-out test files.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

import kyara
from kyara.bundle import atomic_write_bytes, atomic_write_text
from kyara.cut import CROP_LIFT, CROP_MARGIN, cut_face
from kyara.explanation import GRID, explain, explain_crop, input_pixels, saliency_map, scorer, write_overlay
from kyara.pipeline import Recognizer
from kyara.plots import png, pyplot

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the honesty checks are test code, in tests/
from tests.explanation_checks import deletion_area, deletion_curve, randomized_model, rank_correlation

HERE = Path(__file__).parent
DATA = HERE.parent.parent / "shared" / "data"
TWINS = ("fuwawa", "mococo")
RANDOM_ORDERS = 3
EYE_RADIUS = 0.12
"""Radius of the disc counted as "the eye", as a share of the crop side."""


def held_out_faces(per_character: int, seed: int = 0) -> list[Path]:
    files = json.loads((HERE / "default-model-metrics.json").read_text())["test_files"]
    by_character = defaultdict(list)
    for name in files:
        if name.startswith("holoen-faces/"):
            by_character[name.split("/")[1]].append(DATA / name)
    rng = random.Random(seed)
    return [p for name in sorted(by_character) for p in rng.sample(by_character[name], per_character)]


def centre_prior(size: int) -> np.ndarray:
    """A map that knows only that faces sit in the middle of their crops."""
    rows, columns = np.mgrid[0:size, 0:size] - (size - 1) / 2
    return -(rows**2 + columns**2).astype(np.float32)


def support_shares(heatmap: np.ndarray) -> dict[str, float]:
    """Where the evidence for the label lies: shares of the positive part of the map in the top
    third of the crop (hair, ears, accessories), the middle third (eyes) and the bottom third
    (mouth, chin, neck, clothes), and in the outer ring one grid cell wide (background, edges)."""
    support = np.clip(heatmap, 0, None)
    total = max(float(support.sum()), 1e-12)
    third, cell = heatmap.shape[0] // 3, heatmap.shape[0] // GRID
    centre = support[cell:-cell, cell:-cell].sum()
    return {
        "top third": float(support[:third].sum() / total),
        "middle third": float(support[third : 2 * third].sum() / total),
        "bottom third": float(support[2 * third :].sum() / total),
        "outer ring": float((total - centre) / total),
    }


def mean_shares(shares: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(float(np.mean([s[key] for s in shares])), 4) for key in shares[0]}


def deletion_study(recognizer: Recognizer, paths: list[Path]) -> tuple[dict, dict]:
    """Deletion areas (lower: the map found the score's support sooner) of kyara's map, random
    pixel orders and the centre prior, deleting to blur (the test's choice) and to flat grey;
    also the mean rescaled blur curves, for the figure."""
    size = recognizer.embedder.input_size
    areas, curves, shares = defaultdict(list), defaultdict(list), []
    for path in paths:
        crop, label = kyara.load_image(path), path.parent.name
        score = scorer(recognizer.classifier, label)
        maps = {"kyara": explain_crop(crop, recognizer, label).heatmap, "centre": centre_prior(size)}
        shares.append(support_shares(maps["kyara"]))
        maps |= {f"random{seed}": np.random.default_rng(seed).random((size, size)) for seed in range(RANDOM_ORDERS)}
        for name, heatmap in maps.items():
            kind = "random" if name.startswith("random") else name
            for fill in ("blur", "grey"):
                curve = deletion_curve(recognizer.embedder, crop, heatmap, score, fill=fill)
                areas[fill, kind].append(deletion_area(curve))
                if fill == "blur":
                    curves[kind].append((curve - curve[-1]) / (curve[0] - curve[-1]))
    summary = {"faces": len(paths), "support_share": mean_shares(shares)}
    for fill in ("blur", "grey"):
        ours = np.array(areas[fill, "kyara"])
        shuffled = np.array(areas[fill, "random"]).reshape(len(paths), RANDOM_ORDERS).mean(axis=1)
        summary[fill] = {
            "area": {kind: round(float(np.mean(v)), 4) for (f, kind), v in areas.items() if f == fill},
            "area_median": {kind: round(float(np.median(v)), 4) for (f, kind), v in areas.items() if f == fill},
            "kyara_below_random": round(float(np.mean(ours < shuffled)), 4),
            "kyara_below_centre": round(float(np.mean(ours < np.array(areas[fill, "centre"]))), 4),
        }
    return summary, {kind: np.mean(values, axis=0) for kind, values in curves.items()}


def randomization_study(recognizer: Recognizer, paths: list[Path], shares: tuple[float, ...]) -> dict:
    """Rank correlation of the map with the map of a model whose top layers are randomized, and
    with a second draw of masks on the intact model (the map's own noise)."""
    bundle = recognizer.bundle
    models = {
        share: Recognizer(dataclasses.replace(bundle, onnx=randomized_model(bundle.onnx, share)), recognizer.detector)
        for share in shares
    }
    correlations = defaultdict(list)
    for path in paths:
        crop, label = kyara.load_image(path), path.parent.name
        original = explain_crop(crop, recognizer, label).heatmap
        pixels = input_pixels(crop, recognizer.embedder.input_size)
        _, again = saliency_map(recognizer.embedder, pixels, scorer(recognizer.classifier, label), seed=1)
        correlations["same model, other masks"].append(rank_correlation(original, again))
        for share, model in models.items():
            correlations[f"top {share:.0%} of layers random"].append(
                rank_correlation(original, explain_crop(crop, model, label).heatmap)
            )
    return {
        "faces": len(paths),
        "mean_rank_correlation": {k: round(float(np.mean(v)), 4) for k, v in correlations.items()},
        "mean_abs_rank_correlation": {k: round(float(np.mean(np.abs(v))), 4) for k, v in correlations.items()},
    }


def hue_classes(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Masks of clearly blue and clearly pink pixels (the twins' colours), and of the rest."""
    hsv = np.asarray(Image.fromarray(pixels).convert("HSV"), np.float32) / 255
    hue, coloured = hsv[..., 0] * 360, (hsv[..., 1] > 0.25) & (hsv[..., 2] > 0.3)
    blue = coloured & (hue >= 180) & (hue < 260)
    pink = coloured & ((hue >= 290) | (hue < 15))
    return {"blue": blue, "pink": pink, "other": ~(blue | pink)}


def swap_pink_and_blue(crop: Image.Image) -> Image.Image:
    """The crop with its clearly pink pixels turned blue and its clearly blue ones pink."""
    hue, saturation, value = (np.asarray(channel) for channel in crop.convert("HSV").split())
    classes = hue_classes(np.asarray(crop))
    turned = hue.copy()
    turned[classes["pink"]] = round(215 / 360 * 255)
    turned[classes["blue"]] = round(330 / 360 * 255)
    channels = [Image.fromarray(np.ascontiguousarray(c)) for c in (turned, saturation, value)]
    return Image.merge("HSV", channels).convert("RGB")


def eye_discs(crop: Image.Image, recognizer: Recognizer, size: int) -> np.ndarray | None:
    """Discs around both eyes (from the detector's landmarks) at the map's size, if it finds them."""
    faces = recognizer.detect(crop)
    if not faces or not {"left_eye", "right_eye"} <= set(faces[0].landmarks):
        return None
    rows, columns = np.mgrid[0:size, 0:size] + 0.5
    scale, radius = size / crop.width, EYE_RADIUS * size
    discs = np.zeros((size, size), bool)
    for x, y in (faces[0].landmarks["left_eye"], faces[0].landmarks["right_eye"]):
        discs |= (columns - x * scale) ** 2 + (rows - y * scale * crop.width / crop.height) ** 2 <= radius**2
    return discs


def positive_share(heatmap: np.ndarray, where: np.ndarray) -> float:
    support = np.clip(heatmap, 0, None)
    return float(support[where].sum() / max(float(support.sum()), 1e-12))


def twins_study(recognizer: Recognizer, per_twin: int) -> tuple[dict, dict]:
    """Why fuwawa and not mococo, and the reverse, on held-out faces of each twin: where the
    evidence lies (thirds, around the eyes) and on which colours."""
    files = json.loads((HERE / "default-model-metrics.json").read_text())["test_files"]
    size = recognizer.embedder.input_size
    summary, mean_maps = {}, {}
    for own, other in (TWINS, TWINS[::-1]):
        paths = [DATA / f for f in files if f.startswith(f"holoen-faces/{own}/")][:per_twin]
        maps, shares, named, scores, swapped = [], [], [], [], []
        colours, coverage, eyes = defaultdict(list), defaultdict(list), defaultdict(list)
        for path in paths:
            crop = kyara.load_image(path)
            explanation = explain_crop(crop, recognizer, own, other)
            named.append(recognizer.recognize_crop(crop).label)
            swapped.append(recognizer.recognize_crop(swap_pink_and_blue(crop)).top_k[0].label)
            scores.append(explanation.score)
            heatmap = explanation.heatmap / np.abs(explanation.heatmap).max()
            maps.append(heatmap)
            shares.append(support_shares(heatmap))
            for name, mask in hue_classes(input_pixels(crop, size)).items():
                coverage[name].append(float(mask.mean()))
                if mask.any():
                    colours[name].append(float(heatmap[mask].mean()))
            discs = eye_discs(crop, recognizer, size)
            if discs is not None:
                eyes["area"].append(float(discs.mean()))
                eyes["contrast"].append(positive_share(heatmap, discs))
                eyes["plain"].append(positive_share(explain_crop(crop, recognizer, own).heatmap, discs))
        mean_maps[own] = np.mean(maps, axis=0)
        summary[f"{own} vs {other}"] = {
            "faces": len(paths),
            "named_own": round(float(np.mean([n == own for n in named])), 4),
            "named_other": round(float(np.mean([n == other for n in named])), 4),
            "mean_score": round(float(np.mean(scores)), 4),
            "pink_blue_swapped_best_guess": {
                "own": round(float(np.mean([n == own for n in swapped])), 4),
                "twin": round(float(np.mean([n == other for n in swapped])), 4),
            },
            "support_share": mean_shares(shares),
            "pixel_share": {name: round(float(np.mean(v)), 4) for name, v in coverage.items()},
            "mean_heat_on": {name: round(float(np.mean(v)), 4) for name, v in colours.items()},
            "faces_with": {name: len(v) for name, v in colours.items()},
            "eyes": {
                "faces_with_eyes_found": len(eyes["area"]),
                "area_share": round(float(np.mean(eyes["area"])), 4),
                "contrast_support_share": round(float(np.mean(eyes["contrast"])), 4),
                "plain_support_share": round(float(np.mean(eyes["plain"])), 4),
            },
        }
    return summary, mean_maps


def illustration_study(recognizer: Recognizer, pictures: int) -> dict:
    """On fan-art illustrations, each face's best guess: how much of its support lies inside the
    detected face box (1 / CROP_MARGIN^2 = 51% of the crop) rather than on hair, body or background."""
    files = json.loads((HERE / "default-model-metrics.json").read_text())["illustration_test_files"]
    inside, shares = [], []
    for name in random.Random(0).sample(files, pictures):
        picture = kyara.load_image(DATA / name)
        for face in recognizer.detect(picture):
            heatmap = explain_crop(cut_face(picture, face).pixels, recognizer).heatmap
            support = np.clip(heatmap, 0, None)
            size = heatmap.shape[0]
            low, high = round(size * (0.5 - 0.5 / CROP_MARGIN)), round(size * (0.5 + 0.5 / CROP_MARGIN))
            shift = round(size * CROP_LIFT)  # the crop is lifted: the face box sits that much lower in it
            inside.append(support[low + shift : high + shift, low:high].sum() / max(support.sum(), 1e-12))
            shares.append(support_shares(heatmap))
    return {
        "pictures": pictures,
        "faces": len(inside),
        "support_inside_face_box": round(float(np.mean(inside)), 4),
        "support_share": mean_shares(shares),
    }


def deletion_figure(curves: dict, summary: dict) -> bytes:
    figure, axes = pyplot().subplots(figsize=(6, 4))
    fractions = np.linspace(0, 1, len(curves["kyara"]))
    for kind, style in (("kyara", "-"), ("centre", "--"), ("random", ":")):
        axes.plot(fractions, curves[kind], style, label=f"{kind} (area {summary['blur']['area'][kind]:.2f})")
    axes.set_xlabel("share of pixels replaced by a blurred copy")
    axes.set_ylabel("similarity (1: intact, 0: all blurred)")
    axes.set_title(f"Deletion curves, {summary['faces']} held-out faces")
    axes.legend()
    figure.tight_layout()
    return png(figure)


def twins_figure(mean_maps: dict) -> bytes:
    figure, axes = pyplot().subplots(1, 2, figsize=(7, 3.4))
    for ax, (own, other) in zip(axes, (TWINS, TWINS[::-1])):
        image = ax.imshow(mean_maps[own], cmap="RdBu_r", vmin=-0.5, vmax=0.5)
        ax.set_title(f"{own} faces:\nwhy {own} and not {other}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="mean heat (red: for own, blue: for twin)")
    return png(figure)


def main() -> None:
    # animeface: the eye study needs its eye landmarks (the CNN detector gives none).
    recognizer = Recognizer(detector="animeface")
    deletion, curves = deletion_study(recognizer, held_out_faces(3))
    print(json.dumps(deletion), flush=True)
    randomization = randomization_study(recognizer, held_out_faces(1, seed=1)[:12], (0.02, 0.1, 0.25, 0.5, 1.0))
    print(json.dumps(randomization), flush=True)
    twins, mean_maps = twins_study(recognizer, 30)
    print(json.dumps(twins), flush=True)
    illustrations = illustration_study(recognizer, 20)
    print(json.dumps(illustrations), flush=True)
    report = {
        "model": recognizer.bundle.describe(),
        "deletion": deletion,
        "randomization": randomization,
        "twins": twins,
        "illustrations": illustrations,
    }
    atomic_write_text(HERE / "explanations-metrics.json", json.dumps(report, indent=2) + "\n")
    atomic_write_bytes(HERE / "explanations-deletion.png", deletion_figure(curves, deletion))
    atomic_write_bytes(HERE / "explanations-twins.png", twins_figure(mean_maps))
    example = kyara.load_image(HERE / "example.png")
    write_overlay(HERE / "example-explained.png", example, explain(example, recognizer))


if __name__ == "__main__":
    main()
