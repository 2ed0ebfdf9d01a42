"""Train kyara's landmark network (kyara/models/landmarks.onnx) and measure it against animeface-2009.

    python tools/build_data.py --out build/data      # first: the pictures (docs/data.md)
    python tools/train_landmarks.py                  # about 25 minutes on 2 idle cores
    python tools/train_landmarks.py --table          # docs/detection.md's tables from the study
    python tools/train_landmarks.py --measure        # the study again, of the shipped network (after a new detector)

animeface-2009 gives five points per face (eyes, nose, mouth, chin) but finds far fewer faces than
kyara's CNN, which gives none. So animeface teaches them: on the detector's training pictures and
the moeimouto face crops (build/data; never the benchmark's), every face both find (centres within
a third of the CNN's side) is cut as recognition cuts the CNN's face (kyara.cut) and animeface's
points are mapped into the cut; a small network learns them from the cut at `INPUT_SIDE` px
(mirrored copies with the eyes swapped, small shifts, zooms and turns, gray copies).

Measured on the anime benchmark's pictures (benchmarks/detection_boxes_anime.json, sources that
neither network trained on), on the faces both detectors find: each point's distance from
animeface's, as a share of the face's side, against the average face's points (the training
faces' mean, placed in each cut); and the colours `kyara.landmarks.colours_at` reads at kyara's
points against animeface's colours, next to those of another face. Writes
docs/landmarks-study.json and the shipped network; with `--out OTHER.onnx`, that file and its
study beside it (OTHER.json).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from detection_tables import markdown
from PIL import Image
from tqdm import tqdm
from train_detector import with_settings

from kyara.bundle import atomic_write_bytes, atomic_write_text
from kyara.cut import cut_face
from kyara.detection import AnimeFaceDetector, CnnDetector, DetectedFace
from kyara.imageio import ImageError, list_images, load_image
from kyara.landmarks import INPUT_SIDE, LANDMARK_MODEL, LANDMARKS, Landmarker, colour_distance
from kyara.runtime import model_settings
from kyara.train.trainer import onnx_bytes

REPOSITORY = Path(__file__).resolve().parents[1]
STUDY = REPOSITORY / "docs" / "landmarks-study.json"
ANIME_BENCHMARK = REPOSITORY / "benchmarks" / "detection_boxes_anime.json"
TRAINING_FOLDERS = ("illustrations/train", "faces")
MAX_TURN = 35
"""Training cuts are turned by up to this many degrees: the CNN stands faces upright by the tilt it
reads, and on faces of real pictures turned by 30 degrees it reads 0 to 15."""
MATCH_DISTANCE = 1 / 3
"""animeface's face matches the CNN's when their centres lie within this share of the CNN's side."""


def matched_faces(picture: Image.Image, cnn: CnnDetector, animeface: AnimeFaceDetector):
    """(CNN face, animeface face) pairs of the faces both find in `picture`."""
    found = animeface.detect(picture)
    pairs = []
    for face in cnn.detect(picture):
        side = max(face.box[2:])
        near = [f for f in found if math.dist(f.center, face.center) < MATCH_DISTANCE * side]
        if near:
            pairs.append((face, min(near, key=lambda f: math.dist(f.center, face.center))))
    return pairs


def points_of(face: DetectedFace) -> np.ndarray:
    return np.array([face.landmarks[name] for name in LANDMARKS], np.float64)


_DETECTORS: tuple[CnnDetector, AnimeFaceDetector] | None = None


def _start_worker() -> None:
    global _DETECTORS
    _DETECTORS = CnnDetector(threads=1), AnimeFaceDetector(angles=(0.0,))


def _pairs_of(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Training pairs of one picture: the CNN face's cut at INPUT_SIDE px, animeface's points in it."""
    try:
        picture = load_image(path)
    except ImageError:
        return []
    pairs = []
    for face, teacher in matched_faces(picture, *_DETECTORS):
        cut = cut_face(picture, face)
        pixels = np.asarray(cut.pixels.resize((INPUT_SIDE, INPUT_SIDE), Image.Resampling.BILINEAR))
        pairs.append((pixels, cut.to_cut(points_of(teacher)).astype(np.float32)))
    return pairs


def collect(data: Path, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every training pair (pixels N x S x S x 3 uint8, points N x 5 x 2), cached in `cache`."""
    if cache.is_file():
        stored = np.load(cache)
        return stored["pixels"], stored["points"]
    paths = [path for folder in TRAINING_FOLDERS for path in list_images(data / folder)]
    pixels, points = [], []
    with Pool(2, initializer=_start_worker) as pool:
        for pairs in tqdm(pool.imap(_pairs_of, paths, chunksize=16), total=len(paths), desc="faces both find"):
            for cut, teacher in pairs:
                pixels.append(cut)
                points.append(teacher)
    pixels, points = np.stack(pixels), np.stack(points)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, pixels=pixels, points=points)
    return pixels, points


class LandmarkNet(torch.nn.Module):
    """Five convolutions (four strided) and two dense layers: ten numbers, the points as shares of the cut."""

    def __init__(self) -> None:
        super().__init__()
        layers, width = [], 3
        for out, stride in ((24, 2), (32, 1), (48, 2), (64, 2), (96, 2)):
            layers += [
                torch.nn.Conv2d(width, out, 3, stride, 1, bias=False),
                torch.nn.BatchNorm2d(out),
                torch.nn.ReLU(),
            ]
            width = out
        self.features = torch.nn.Sequential(*layers)
        cells = INPUT_SIDE // 16
        self.head = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(width * cells * cells, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels)) + 0.5


SWAPPED = [
    LANDMARKS.index(name.replace("left", "#").replace("right", "left").replace("#", "right")) for name in LANDMARKS
]
"""Mirroring a face swaps its eyes."""


def augmented(pixels: np.ndarray, points: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A batch moved as a detector's box moves (shift, zoom) and turned by up to `MAX_TURN` degrees
    (the CNN's angle is rough on real tilted faces), mirrored half the time, a fifth of it gray."""
    images, targets = [], []
    for image, target in zip(pixels, points, strict=True):
        picture, target = Image.fromarray(image), target.copy()
        if rng.random() < 0.5:
            picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            target = target[SWAPPED] * (-1, 1) + (1, 0)
        zoom, turn = rng.uniform(0.85, 1.15), math.radians(rng.uniform(-MAX_TURN, MAX_TURN))
        shift = rng.uniform(-0.08, 0.08, 2)
        # Output point q comes from input point centre + A (q - centre) + shift; targets move the other way.
        a = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]]) / zoom
        offset = 0.5 + shift - a @ (0.5, 0.5)
        side = INPUT_SIDE
        picture = picture.transform(
            (side, side),
            Image.Transform.AFFINE,
            (a[0, 0], a[0, 1], offset[0] * side, a[1, 0], a[1, 1], offset[1] * side),
            Image.Resampling.BILINEAR,
            fillcolor=(255, 255, 255),
        )
        target = (target - offset) @ np.linalg.inv(a).T
        if rng.random() < 0.2:
            picture = picture.convert("L").convert("RGB")
        images.append(np.asarray(picture))
        targets.append(target)
    return np.stack(images), np.stack(targets).astype(np.float32)


def as_input(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def train(pixels: np.ndarray, points: np.ndarray, epochs: int, seed: int) -> LandmarkNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = LandmarkNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(pixels) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    net.train()
    with tqdm(total=steps, desc="training") as progress:
        for _ in range(epochs):
            order = rng.permutation(len(pixels))
            for start in range(0, len(order) - 63, 64):
                batch = order[start : start + 64]
                images, targets = augmented(pixels[batch], points[batch], rng)
                loss = torch.nn.functional.smooth_l1_loss(
                    net(as_input(images)), torch.from_numpy(targets).view(-1, 10), beta=0.02
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update()
                progress.set_postfix(loss=f"{loss.item():.4f}")
    return net.eval()


def export(net: LandmarkNet, mean_points: np.ndarray) -> bytes:
    """The network as ONNX (input `image`, N x 3 x S x S in [0, 1]; output `points`, N x 10), with
    its settings and the training faces' mean points (the average face, the yardstick its study and
    tests measure it against) in the file's metadata."""
    model = onnx_bytes(
        net, torch.zeros(1, 3, INPUT_SIDE, INPUT_SIDE), "points", {"image": {0: "faces"}, "points": {0: "faces"}}
    )
    settings = {
        "input_side": INPUT_SIDE,
        "landmarks": ",".join(LANDMARKS),
        "mean_points": json.dumps(mean_points.round(4).tolist()),
    }
    return with_settings(model, settings)


def benchmark_pictures() -> list[Path]:
    written = json.loads(ANIME_BENCHMARK.read_text())
    root = REPOSITORY / written["data_root"]
    return [root / item["path"] for item in written["images"]]


def stored_mean_points(landmarker: Landmarker) -> np.ndarray:
    """The training faces' mean points (the average face) that `export` stored with the network."""
    return np.array(json.loads(model_settings(landmarker.session)["mean_points"]))


def measure(landmarker: Landmarker) -> dict:
    """kyara's points and colours against animeface's on the benchmark faces both find."""
    mean_points = stored_mean_points(landmarker)
    cnn, animeface = CnnDetector(), AnimeFaceDetector(angles=(0.0,))
    errors, average_errors, teacher_colours, colour_gaps, repeat_gaps, milliseconds = [], [], [], {}, {}, []
    for path in tqdm(benchmark_pictures(), desc="benchmark"):
        picture = load_image(path)
        pairs = matched_faces(picture, cnn, animeface)
        started = time.perf_counter()
        located = landmarker.locate(picture, [face for face, _ in pairs])
        if pairs:
            milliseconds.append(1000 * (time.perf_counter() - started) / len(pairs))
        # animeface samples its colours at random: a second look at the same faces is the floor.
        again = {face.box: face for face in animeface.detect(picture)}
        for (face, teacher), ours in zip(pairs, located, strict=True):
            side = max(face.box[2:])
            truth = points_of(teacher)
            errors.append(np.linalg.norm(points_of(ours) - truth, axis=1) / side)
            average = cut_face(picture, face).to_picture(mean_points)
            average_errors.append(np.linalg.norm(average - truth, axis=1) / side)
            for name, colour in ours.colors.items():
                colour_gaps.setdefault(name, []).append(colour_distance(colour, teacher.colors[name]))
                if teacher.box in again:
                    repeat_gaps.setdefault(name, []).append(
                        colour_distance(again[teacher.box].colors[name], teacher.colors[name])
                    )
            teacher_colours.append(teacher.colors)
    other_face = np.random.default_rng(0).permutation(len(teacher_colours))
    chance_gaps = {
        name: [
            colour_distance(colours[name], teacher_colours[j][name])
            for colours, j in zip(teacher_colours, other_face, strict=True)
        ]
        for name in colour_gaps
    }
    errors, average_errors = np.array(errors), np.array(average_errors)

    def medians(gaps: dict[str, list[float]]) -> dict[str, float]:
        return {name: round(float(np.median(values)), 1) for name, values in gaps.items()}

    return {
        "faces": len(errors),
        "point_error": {name: round(float(np.median(errors[:, i])), 4) for i, name in enumerate(LANDMARKS)},
        "point_error_average_face": {
            name: round(float(np.median(average_errors[:, i])), 4) for i, name in enumerate(LANDMARKS)
        },
        "mean_point_error": round(float(errors.mean()), 4),
        "mean_point_error_average_face": round(float(average_errors.mean()), 4),
        "within_10_percent": round(float((errors < 0.1).all(axis=1).mean()), 4),
        "colour_distance": medians(colour_gaps),
        "colour_distance_animeface_again": medians(repeat_gaps),
        "colour_distance_other_face": medians(chance_gaps),
        "ms_per_face": round(float(np.median(milliseconds)), 2),
    }


def table(study: dict) -> str:
    """docs/detection.md's landmark tables, from the study's JSON (the docs paste them, never type them)."""
    measured = study["benchmark"]
    points = markdown(
        ["point", "kyara's network", "the average face"],
        [
            [name, f"{measured['point_error'][name]:.3f}", f"{measured['point_error_average_face'][name]:.3f}"]
            for name in LANDMARKS
        ],
    )
    yardsticks = ("colour_distance", "colour_distance_animeface_again", "colour_distance_other_face")
    columns = ["colour (median RGB distance, 0-441)", "kyara's, to animeface's"]
    colours = markdown(
        [*columns, "animeface's, to its own second look", "animeface's, to another face's"],
        [[name, *(f"{measured[key][name]:.1f}" for key in yardsticks)] for name in measured["colour_distance"]],
    )
    title = f"{measured['faces']} faces both find; median distance from animeface's point, share of the face's side"
    return "\n".join([title, "", *points, "", *colours])


def study_path(network: Path) -> Path:
    """Where the study of the network at `network` goes: docs/landmarks-study.json for the shipped
    network, beside the file for any other, so a trial run never rewrites the shipped network's study."""
    return STUDY if network.resolve() == LANDMARK_MODEL.resolve() else network.with_suffix(".json")


def write_study(study: dict, path: Path) -> None:
    """The study at `path`, written whole, and the same on standard output."""
    atomic_write_text(path, json.dumps(study, indent=2) + "\n")
    print(json.dumps(study, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPOSITORY / "build" / "data")
    parser.add_argument("--cache", type=Path, default=REPOSITORY / "build" / "landmarks" / "pairs.npz")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=LANDMARK_MODEL, help="the network; its study goes beside it")
    parser.add_argument("--table", action="store_true", help="print docs/detection.md's tables from the study")
    parser.add_argument("--measure", action="store_true", help="measure the network at --out again, not retrained")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(STUDY.read_text())))
        return
    if args.measure:
        write_study({**json.loads(STUDY.read_text()), "benchmark": measure(Landmarker(args.out))}, study_path(args.out))
        return
    torch.set_num_threads(2)
    pixels, points = collect(args.data, args.cache)
    started = time.perf_counter()
    net = train(pixels, points, args.epochs, args.seed)
    training_minutes = round((time.perf_counter() - started) / 60, 1)
    model = export(net, points.mean(axis=0))
    atomic_write_bytes(args.out, model)
    write_study(
        {
            "command": "python tools/train_landmarks.py",
            "training_faces": len(pixels),
            "epochs": args.epochs,
            "training_minutes": training_minutes,
            "benchmark": measure(Landmarker(model)),
        },
        study_path(args.out),
    )


if __name__ == "__main__":
    main()
