"""Hand-checked detection benchmark: recall, precision and images with a face found, per detector backend.

    python benchmarks/detection_benchmark.py [--boxes benchmarks/detection_boxes.json] [--data ../shared/data]
        [--backends animeface animeface+rotations cnn] [--iou 0.4] [--details]

Prints JSON. The boxes were drawn by hand (see the file's "about" and docs/detection.md). Detections are matched to
hand boxes greedily, best score first, each to the unmatched box it overlaps most with IoU >= --iou; a detection that
matches no face but lies on an "ignore" box is dropped, any other is a false positive. Because the matching goes best
score first, raising a score threshold only removes detections, so one pass gives the whole threshold sweep.
"threshold_cross_checked" picks a threshold on half of the pictures and measures it on the other half, and the
reverse: the benchmark's figures without the optimism of a threshold tuned on the same pictures.
"animeface" is animeface-2009 on the upright picture only, "animeface+rotations" with its rotated retries
(DEFAULT_ANGLES), "cnn" kyara's own detector (tools/train_detector.py), "cnn-checked" the same with the face check
(kyara/face_check.py), "cnn@PATH" the same with the model file at
PATH (to compare detectors in one run; "NAME=cnn@PATH" reports it as NAME); any other name is built with
kyara.detectors.get_detector, so a backend added to DETECTORS plugs in by name.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from kyara.detection import (
    CNN_MODEL,
    DEFAULT_ANGLES,
    DEFAULT_MIN_SCORE,
    AnimeFaceDetector,
    CnnDetector,
    DetectedFace,
    Detector,
    containment,
    iou,
)
from kyara.detectors import get_detector
from kyara.errors import KyaraError
from kyara.face_check import CheckedCnnDetector, FaceCheck
from kyara.imageio import load_image

HERE = Path(__file__).parent
THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
# Run with (almost) no threshold, so the sweep sees every detection; the headline figures are at
# each backend's own default threshold (for the CNN, the one its model file states).
PRESETS: dict[str, Callable[[Path], tuple[Detector, float]]] = {
    "animeface": lambda _: (AnimeFaceDetector(angles=(0.0,), min_score=0.0), DEFAULT_MIN_SCORE),
    "animeface+rotations": lambda _: (AnimeFaceDetector(angles=DEFAULT_ANGLES, min_score=0.0), DEFAULT_MIN_SCORE),
    "cnn": lambda model: (CnnDetector(min_score=0.05, model=model), CnnDetector(model=model).min_score),
    # The shipped detector with the face check (kyara.face_check): every candidate of the check's
    # band with the check's probability as its score, above it the CNN's own.
    "cnn-checked": lambda _: (CheckedCnnDetector(min_score=0.0), FaceCheck.load().min_score),
}
IGNORE_INSIDE = 0.5
"""A detection with at least this share of its area on an ignore box is dropped (neither found nor false)."""


@dataclass(frozen=True)
class Scored:
    """One detection after matching: its score, the face it found (index into the image's faces) or None."""

    score: float
    face: int | None


@dataclass(frozen=True)
class ImageResult:
    path: str
    faces: list[dict]
    detections: list[Scored]
    seconds: float


def make_detector(name: str, cnn_model: Path) -> tuple[Detector, float]:
    """A preset, "cnn@PATH" (the CNN with another model file, for comparisons) or a DETECTORS name."""
    if name.startswith("cnn@"):
        return PRESETS["cnn"](Path(name.removeprefix("cnn@")))
    return PRESETS[name](cnn_model) if name in PRESETS else (get_detector(name), 0.0)


def match(found: list[DetectedFace], faces: list[dict], ignore: list[list[int]], min_iou: float) -> list[Scored]:
    """Greedy matching, best score first; detections on ignore boxes are left out of the result."""
    taken: set[int] = set()
    scored = []
    for det in sorted(found, key=lambda d: d.score, reverse=True):
        overlaps = [(iou(det.box, face["box"]), i) for i, face in enumerate(faces) if i not in taken]
        best, index = max(overlaps, default=(0.0, -1))
        if best >= min_iou:
            taken.add(index)
            scored.append(Scored(det.score, index))
        elif not any(iou(det.box, box) >= min_iou or containment(det.box, box) >= IGNORE_INSIDE for box in ignore):
            scored.append(Scored(det.score, None))
    return scored


def run_backend(detector: Detector, images: list[dict], data: Path, min_iou: float, label: str) -> list[ImageResult]:
    results = []
    for entry in tqdm(images, desc=label):
        image = load_image(data / entry["path"])
        started = time.perf_counter()
        found = detector.detect(image)
        seconds = time.perf_counter() - started
        scored = match(found, entry["faces"], entry.get("ignore", []), min_iou)
        results.append(ImageResult(entry["path"], entry["faces"], scored, seconds))
    return results


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def counts(results: list[ImageResult], min_score: float) -> dict:
    """Recall, precision and images with a face found, keeping detections scoring at least `min_score`."""
    kept = [[d for d in r.detections if d.score >= min_score] for r in results]
    hits = sum(d.face is not None for dets in kept for d in dets)
    detections = sum(len(dets) for dets in kept)
    faces = sum(len(r.faces) for r in results)
    with_faces = [dets for dets, r in zip(kept, results, strict=True) if r.faces]
    found_images = sum(any(d.face is not None for d in dets) for dets in with_faces)
    return {
        "min_score": min_score,
        "recall": _ratio(hits, faces),
        "precision": _ratio(hits, detections),
        "images_with_face_found": _ratio(found_images, len(with_faces)),
        "detections": detections,
    }


def detections_per_one_face_picture(results: list[ImageResult], min_score: float) -> float | None:
    """Mean number of detections kept on the pictures that show exactly one face: how many faces a
    user sees where one character is drawn (the reserved evaluation allows at most 2 on average)."""
    single = [r for r in results if len(r.faces) == 1]
    kept = [sum(d.score >= min_score for d in r.detections) for r in single]
    return round(statistics.mean(kept), 3) if kept else None


def recall_by_kind(results: list[ImageResult], kinds: Sequence[str], grayscale: set[str], min_score: float) -> dict:
    """Recall of the faces carrying each kind tag; "grayscale" means every face of a monochrome picture."""
    table = {}
    for kind in [*kinds, "grayscale"]:
        total = hit = 0
        for r in results:
            matched = {d.face for d in r.detections if d.score >= min_score}
            for i, face in enumerate(r.faces):
                if kind in face["kinds"] or (kind == "grayscale" and r.path in grayscale):
                    total += 1
                    hit += i in matched
        table[kind] = {"faces": total, "recall": _ratio(hit, total)}
    return table


def by_folder(results: list[ImageResult], min_score: float) -> dict:
    """The headline counts for the pictures of each folder (a source of the benchmark)."""
    folders: dict[str, list[ImageResult]] = {}
    for r in results:
        folders.setdefault(str(Path(r.path).parent), []).append(r)
    return {folder: {"images": len(rs)} | counts(rs, min_score) for folder, rs in sorted(folders.items())}


def details(results: list[ImageResult]) -> list[dict]:
    """Per picture: boxes missed and the scores of false positives (for failure analysis)."""
    rows = []
    for r in results:
        matched = {d.face for d in r.detections}
        missed = [face for i, face in enumerate(r.faces) if i not in matched]
        false = [round(d.score, 3) for d in r.detections if d.face is None]
        if missed or false:
            rows.append({"path": r.path, "missed": missed, "false_positive_scores": false})
    return rows


def cross_checked(results: list[ImageResult], min_precision: float = 0.9) -> dict:
    """How a threshold chosen on the benchmark itself fares on pictures it was not chosen on.

    The pictures are split in two halves (alternate pictures); on each half the lowest threshold (steps of
    0.01) reaching `min_precision` is chosen and applied to the other half; the counts of both are pooled.
    """
    halves = [results[0::2], results[1::2]]
    chosen = []
    for tuning in halves:
        grid = [t / 100 for t in range(101)]
        chosen.append(next((t for t in grid if (counts(tuning, t)["precision"] or 0) >= min_precision), 1.0))
    pooled = [
        [ImageResult(r.path, r.faces, [d for d in r.detections if d.score >= chosen[1 - i]], r.seconds) for r in half]
        for i, half in enumerate(halves)
    ]
    pooled_counts = counts(pooled[0] + pooled[1], 0.0)
    del pooled_counts["min_score"]  # each half has its own, in "thresholds"
    return {"min_precision": min_precision, "thresholds": chosen} | pooled_counts


def report(
    results: list[ImageResult], kinds: Sequence[str], grayscale: set[str], with_details: bool, threshold: float
) -> dict:
    summary = counts(results, threshold)
    out = {
        "min_score": threshold,
        "recall": summary["recall"],
        "precision": summary["precision"],
        "images_with_face_found": summary["images_with_face_found"],
        "faces": sum(len(r.faces) for r in results),
        "detections": summary["detections"],
        "detections_per_one_face_picture": detections_per_one_face_picture(results, threshold),
        "median_ms": round(1000 * statistics.median(r.seconds for r in results), 1),
        "recall_by_kind": recall_by_kind(results, kinds, grayscale, threshold),
        "by_folder": by_folder(results, threshold),
        "threshold_sweep": [counts(results, t) for t in THRESHOLDS],
        "threshold_cross_checked": cross_checked(results),
    }
    if with_details:
        out["details"] = details(results)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boxes", type=Path, default=HERE / "detection_boxes.json")
    parser.add_argument("--data", type=Path, default=None, help="pictures' root (default: the file's data_root)")
    parser.add_argument("--backends", nargs="+", default=list(PRESETS), help="presets or DETECTORS names")
    parser.add_argument("--iou", type=float, default=None, help="match IoU (default: the file's match_iou)")
    parser.add_argument("--cnn-model", type=Path, default=CNN_MODEL, help="the CNN detector's ONNX file")
    parser.add_argument("--details", action="store_true", help="also list missed faces and false positives per picture")
    args = parser.parse_args()
    benchmark = json.loads(args.boxes.read_text())
    images = benchmark["images"]
    args.data = args.data or HERE.parent / benchmark["data_root"]
    missing = [entry["path"] for entry in images if not (args.data / entry["path"]).is_file()]
    if missing:
        print(f"skipped: {len(missing)} pictures missing under {args.data}, e.g. {missing[0]}", file=sys.stderr)
        return
    min_iou = args.iou if args.iou is not None else benchmark["match_iou"]
    grayscale = {entry["path"] for entry in images if "grayscale" in entry["tags"]}
    try:
        # "NAME=BACKEND" reports BACKEND under NAME, e.g. cnn-before=cnn@old.onnx.
        named = dict(spec.split("=", 1) if "=" in spec else (spec, spec) for spec in args.backends)
        detectors = {name: make_detector(backend, args.cnn_model) for name, backend in named.items()}
    except KyaraError as exc:
        parser.error(f"{exc} (or a preset: {', '.join(PRESETS)})")
    backends = {}
    for name, (detector, threshold) in detectors.items():
        results = run_backend(detector, images, args.data, min_iou, name)
        backends[name] = report(results, benchmark["kinds"], grayscale, args.details, threshold)
    summary = {
        "images": len(images),
        "faces": sum(len(entry["faces"]) for entry in images),
        "iou": min_iou,
        "backends": backends,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
