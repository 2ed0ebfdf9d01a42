"""Share of illustrations where at least one face is found, with and without rotated retries.

    python benchmarks/detection_coverage.py [--data ../shared/data/newgame-illustrations]

Prints JSON. Every illustration in the folder shows at least one character, so a picture with no
face found is a miss (or a face animeface cannot see).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from kyara.detection import DEFAULT_ANGLES, AnimeFaceDetector, non_max_suppression
from kyara.imageio import list_images, load_image


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "../shared/data/newgame-illustrations")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (0: all)")
    args = parser.parse_args()
    paths = list_images(args.data)
    if args.limit:
        paths = paths[:: max(1, len(paths) // args.limit)][: args.limit]
    per_angle = {angle: AnimeFaceDetector(angles=(angle,)) for angle in DEFAULT_ANGLES}
    found = {"upright": 0, "rotated": 0}
    faces = {"upright": 0, "rotated": 0}
    timings: dict[str, list[float]] = {"upright": [], "rotated": []}
    for path in tqdm(paths):
        image = load_image(path)
        seconds, detections = {}, {}
        for angle, detector in per_angle.items():
            started = time.perf_counter()
            detections[angle] = detector.detect(image)
            seconds[angle] = time.perf_counter() - started
        results = {
            "upright": detections[0.0],
            "rotated": non_max_suppression([f for found_at in detections.values() for f in found_at]),
        }
        timings["upright"].append(seconds[0.0])
        timings["rotated"].append(sum(seconds.values()))
        for name, result in results.items():
            found[name] += bool(result)
            faces[name] += len(result)
    report = {
        "images": len(paths),
        "angles": list(DEFAULT_ANGLES),
        "found_share": {k: round(v / len(paths), 4) for k, v in found.items()},
        "faces_per_image": {k: round(v / len(paths), 3) for k, v in faces.items()},
        "median_ms": {k: round(1000 * statistics.median(v), 1) for k, v in timings.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
