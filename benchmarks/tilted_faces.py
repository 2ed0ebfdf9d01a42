"""Naming tilted faces: held-out face crops turned inside a picture, with and without `--landmarks`. Prints JSON.

    python benchmarks/tilted_faces.py [--angles 0 15 30 -45] [--every 5] [--illustrations 70]

Each of the default model's held-out test crops (every `--every`-th of docs/default-model-metrics.json's
`test_files`, in ../shared/data) is pasted in the middle of a white square twice its size, which is
turned by each angle (degrees, counter-clockwise); the whole pipeline names it (`Recognizer.recognize`,
the most face-like face's best guess), once with the CNN detector alone, which stands faces upright by
the tilt it reads, and once with its faces' landmarks (`get_detector("cnn", landmarks=True)`), which
stand a face upright by its eye line where that disagrees with the CNN (`kyara.landmarks.upright_angle`).
Then, on `--illustrations` New Game! illustrations as they are (evenly spread), how many faces
`--landmarks` turns to another angle and how many of their names change: what the rule costs where
faces are mostly upright.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--angles", type=float, nargs="+", default=[0, 15, 30, -45])
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--illustrations", type=int, default=70)
    args = parser.parse_args()
    files = json.loads((REPOSITORY / "docs" / "default-model-metrics.json").read_text())["test_files"][:: args.every]
    recognizers = {"cnn": Recognizer(), "cnn --landmarks": Recognizer(detector=get_detector("cnn", landmarks=True))}
    top1 = {}
    for angle in args.angles:
        hits = dict.fromkeys(recognizers, 0)
        for file in files:
            picture = turned(load_image(DATA / file), angle)
            for name, recognizer in recognizers.items():
                hits[name] += recognizer.recognize(picture, top_k=1)[0].top_k[0].label == Path(file).parent.name
        top1[str(angle)] = {name: round(count / len(files), 4) for name, count in hits.items()}
    pictures = list_images(DATA / "newgame-illustrations")
    pictures = pictures[:: max(1, len(pictures) // args.illustrations)][: args.illustrations]
    faces = turned_faces = renamed = 0
    plain, with_landmarks = recognizers.values()
    for path in pictures:
        picture = load_image(path)
        for before, after in zip(plain.recognize(picture), with_landmarks.recognize(picture), strict=True):
            faces += 1
            turned_faces += before.angle != after.angle
            renamed += before.label != after.label
    ordinary = {"pictures": len(pictures), "faces": faces, "turned": turned_faces, "names_changed": renamed}
    print(json.dumps({"faces": len(files), "top1_by_angle": top1, "newgame_illustrations": ordinary}, indent=2))


if __name__ == "__main__":
    main()
