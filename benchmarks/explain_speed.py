"""Speed of `kyara explain` on this machine: milliseconds per face. Prints JSON.

    python benchmarks/explain_speed.py [--faces 20] [--threads N]

- ms_per_face: median time to explain one face crop (all masked copies embedded, map fitted),
  target <= 1000 ms on 2 cores; detection is not included (see recognition_speed.py);
- ms_per_face_p90: the slow end of the same timings;
- cpu_ms_per_face: processor time per face, summed over threads (steadier than wall time when
  other jobs share the machine: on 2 idle cores, wall time is about half of it);
- masks: masked copies embedded per face.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from kyara.explanation import MASKS, explain_crop
from kyara.imageio import list_images, load_image
from kyara.pipeline import Recognizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    recognizer = Recognizer(threads=args.threads)
    paths = list_images(DATA / "holoen-faces")
    crops = [load_image(p) for p in paths[:: max(1, len(paths) // args.faces)][: args.faces]]
    explain_crop(crops[0], recognizer)  # warm-up: ONNX Runtime's first runs are slower
    timings = []
    cpu_started = time.process_time()
    for crop in crops:
        started = time.perf_counter()
        explain_crop(crop, recognizer)
        timings.append(1000 * (time.perf_counter() - started))
    cpu_ms = 1000 * (time.process_time() - cpu_started) / len(crops)
    report = {
        "faces": len(crops),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "masks": MASKS,
        "ms_per_face": round(statistics.median(timings), 1),
        "ms_per_face_p90": round(statistics.quantiles(timings, n=10)[-1], 1),
        "cpu_ms_per_face": round(cpu_ms, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
