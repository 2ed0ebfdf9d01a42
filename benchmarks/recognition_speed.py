"""Speed and memory of the default pipeline on this machine. Prints JSON.

    python benchmarks/recognition_speed.py [--images 30] [--threads N] [--detector cnn|animeface] [--precision int8]

- detect_ms: median time to detect faces in one illustration (as stored: about 768 px);
- detect_ms_1024: the same with each illustration scaled so that its longer side is 1024 px;
- face_ms: median time to embed and classify one face crop (target <= 15 ms on 2 cores);
- recognize_ms: median time of the whole job on one illustration (as stored): detect, cut, embed, name;
- peak_rss_mb: the process's peak resident memory;
- wheel_mb: the size of kyara's wheel, models included (target <= 35 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kyara.cut import as_is, cuts_of
from kyara.detectors import DEFAULT_DETECTOR, DETECTORS
from kyara.imageio import list_images, load_image
from kyara.pipeline import Recognizer
from kyara.runtime import DEFAULT_PRECISION, PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def wheel_mb() -> float:
    """The size of the wheel `pip wheel` builds from this checkout (no dependencies)."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q", "-w"]
        subprocess.run([*command, scratch], check=True, capture_output=True)
        (wheel,) = Path(scratch).glob("kyara-*.whl")
        return round(wheel.stat().st_size / 1e6, 1)


def median_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, choices=sorted(DETECTORS))
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS)
    args = parser.parse_args()
    recognizer = Recognizer(detector=args.detector, threads=args.threads, precision=args.precision)
    paths = list_images(DATA / "newgame-illustrations")
    paths = paths[:: max(1, len(paths) // args.images)][: args.images]
    detect_s, detect_1024_s, face_s, crops = [], [], [], []
    for path in paths:
        image = load_image(path)
        started = time.perf_counter()
        faces = recognizer.detector.detect(image)
        detect_s.append(time.perf_counter() - started)
        crops += cuts_of(image, faces) if faces else []
        scale = 1024 / max(image.size)
        large = image.resize((round(image.width * scale), round(image.height * scale)))
        started = time.perf_counter()
        recognizer.detector.detect(large)
        detect_1024_s.append(time.perf_counter() - started)
    for crop in crops[:200] or [as_is(load_image(paths[0]))]:
        started = time.perf_counter()
        recognizer.classify(recognizer.embed([crop]))
        face_s.append(time.perf_counter() - started)
    recognize_s = []
    for path in paths:
        image = load_image(path)
        started = time.perf_counter()
        recognizer.recognize(image)
        recognize_s.append(time.perf_counter() - started)
    started = time.perf_counter()
    batch = crops[:64]
    recognizer.classify(recognizer.embed(batch))
    batched = (time.perf_counter() - started) / max(1, len(batch))
    report = {
        "images": len(paths),
        "faces": len(crops),
        "cpu_count": os.cpu_count(),
        "detector": recognizer.detector.name,
        "precision": args.precision,
        "detect_ms": median_ms(detect_s),
        "detect_ms_1024": median_ms(detect_1024_s),
        "face_ms": median_ms(face_s),
        "face_ms_batched_64": round(1000 * batched, 2),
        "recognize_ms": median_ms(recognize_s),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wheel_mb": wheel_mb(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
