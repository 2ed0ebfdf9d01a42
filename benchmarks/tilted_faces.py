"""Tilted faces: how well the detector reads a face's tilt, and how well the face is then named. Prints JSON.

    python benchmarks/tilted_faces.py [--angles 0 15 30 -45 60 90] [--every 5] [--illustrations 70] [--before FILE]

Each of the default model's held-out test crops (every `--every`-th of docs/default-model-metrics.json's
`test_files`, in ../shared/data) is pasted in the middle of a white square twice its size, which is
turned by each angle (degrees, counter-clockwise). For each detector: the share of pictures where it
finds a face, the median and 90th percentile of the error of the tilt it reads on the most face-like
face (degrees), and top-1 when the whole pipeline names that face (`Recognizer.recognize`), which cuts
it upright by that tilt. Detectors: the shipped CNN, the same with its faces' landmarks
(`get_detector("cnn", landmarks=True)`, which stand a face upright by its eye line where that
disagrees with the CNN: `kyara.landmarks.upright_angle`) and, with `--before`, another CNN detector
file (the one shipped before). Then, on `--illustrations` New Game! illustrations as they are (evenly
spread), how many faces `--landmarks` turns to another angle and how many of their names change:
what the rule costs where faces are mostly upright.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from kyara.detection import CnnDetector, wrapped_degrees
from kyara.detectors import get_detector
from kyara.imageio import list_images, load_image
from kyara.pipeline import Recognizer

REPOSITORY = Path(__file__).resolve().parents[1]
DATA = REPOSITORY.parent / "shared" / "data"


def turned(crop: Image.Image, angle: float) -> Image.Image:
    side = 2 * max(crop.size)
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    return canvas.rotate(angle, Image.Resampling.BILINEAR, fillcolor="white") if angle else canvas


def tilt_error(read: float, turn: float) -> float:
    """Degrees between the angle read and the one that stands a face turned by `turn` upright."""
    return abs(wrapped_degrees(read + turn))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--angles", type=float, nargs="+", default=[0, 15, 30, -45, 60, 90])
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--illustrations", type=int, default=70)
    parser.add_argument("--before", type=Path, default=None, help="another CNN detector file to compare")
    args = parser.parse_args()
    files = json.loads((REPOSITORY / "docs" / "default-model-metrics.json").read_text())["test_files"][:: args.every]
    detectors = {"cnn": get_detector("cnn"), "cnn --landmarks": get_detector("cnn", landmarks=True)}
    if args.before:
        detectors = {"cnn before": CnnDetector(model=args.before), **detectors}
    recognizers = {name: Recognizer(detector=detector) for name, detector in detectors.items()}
    by_angle = {}
    for angle in args.angles:
        rows = {name: {"found": 0, "errors": [], "top1": 0} for name in recognizers}
        for file in files:
            picture = turned(load_image(DATA / file), angle)
            for name, recognizer in recognizers.items():
                faces = recognizer.recognize(picture, top_k=1)
                rows[name]["top1"] += faces[0].top_k[0].label == Path(file).parent.name
                if not faces[0].fallback:
                    rows[name]["found"] += 1
                    rows[name]["errors"].append(tilt_error(faces[0].angle, angle))
        by_angle[str(angle)] = {
            name: {
                "found": round(row["found"] / len(files), 4),
                "tilt_error_median": round(float(np.median(row["errors"])), 1) if row["errors"] else None,
                "tilt_error_p90": round(float(np.percentile(row["errors"], 90)), 1) if row["errors"] else None,
                "top1": round(row["top1"] / len(files), 4),
            }
            for name, row in rows.items()
        }
    pictures = list_images(DATA / "newgame-illustrations")
    pictures = pictures[:: max(1, len(pictures) // args.illustrations)][: args.illustrations]
    faces = turned_faces = renamed = 0
    plain, with_landmarks = recognizers["cnn"], recognizers["cnn --landmarks"]
    for path in pictures:
        picture = load_image(path)
        for before, after in zip(plain.recognize(picture), with_landmarks.recognize(picture), strict=True):
            faces += 1
            turned_faces += before.angle != after.angle
            renamed += before.label != after.label
    ordinary = {"pictures": len(pictures), "faces": faces, "turned": turned_faces, "names_changed": renamed}
    print(json.dumps({"faces": len(files), "by_angle": by_angle, "newgame_illustrations": ordinary}, indent=2))


if __name__ == "__main__":
    main()
