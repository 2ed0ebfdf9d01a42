"""Training wall time, peak memory and accuracy of `kyara train` on the 20 holoen characters. Prints JSON.

    python benchmarks/train_time.py [--epochs 4] [--mode finetune|linear|both]

Both modes start from the default model's anime backbone, as `kyara train` does. The test
images are the holoen pictures of the default model's own held-out split
(docs/default-model-metrics.json "test_files"): neither the default backbone nor this run saw
them or a near-duplicate of them. Each mode runs in its own process, so its peak memory is its own.
Targets on 2 CPU cores: finetune <= 15 minutes, linear <= 1 minute.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def measure(mode: str, epochs: int, grayscale_p: float) -> dict:
    import numpy as np
    from PIL import Image

    from kyara.bundle import default_model_path, load_bundle
    from kyara.classify import Classifier
    from kyara.cut import gray_copy
    from kyara.embedding import Embedder
    from kyara.metrics import top_k_accuracy
    from kyara.train.data import load_folders
    from kyara.train.fit import fit_folders
    from kyara.train.trainer import TrainConfig

    held_out = json.loads((ROOT / "docs" / "default-model-metrics.json").read_text())["test_files"]
    started = time.perf_counter()
    data = load_folders([DATA / "holoen-faces"])
    is_test = np.array([p.relative_to(DATA).as_posix() in set(held_out) for p in data.paths])
    loaded = time.perf_counter()
    config = TrainConfig(mode=mode, epochs=epochs, ood_weight=0.0, grayscale_p=grayscale_p)
    bundle = fit_folders(data.subset(np.flatnonzero(~is_test)), config, start=load_bundle(default_model_path()))
    trained = time.perf_counter()
    test = data.subset(np.flatnonzero(is_test))
    embedder, classifier = Embedder(bundle.onnx, bundle.input_size), Classifier.from_bundle(bundle)
    crops = [Image.fromarray(p) for p in test.pixels]
    colour = classifier.similarities(embedder.embed(crops))
    gray_crops = [gray_copy(c) for c in crops]  # named against gray prototypes, as recognition does
    gray = classifier.similarities(embedder.embed(gray_crops), np.ones(len(gray_crops), bool))
    return {
        "mode": mode,
        "grayscale_p": grayscale_p,
        "epochs_run": len(bundle.metadata["training"]["history"]),
        "train_images": int((~is_test).sum()),
        "test_images": int(is_test.sum()),
        "load_seconds": round(loaded - started, 1),
        "train_seconds": round(trained - loaded, 1),
        "test_top1": round(top_k_accuracy(colour, test.labels, 1), 4),
        "test_top5": round(top_k_accuracy(colour, test.labels, 5), 4),
        "test_grayscale_top1": round(top_k_accuracy(gray, test.labels, 1), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    from kyara.train.trainer import TrainConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--mode", choices=["finetune", "linear", "both"], default="both")
    parser.add_argument(
        "--grayscale-p", type=float, default=TrainConfig.grayscale_p, help="Share of pictures turned gray."
    )
    args = parser.parse_args()
    if args.mode != "both":
        print(json.dumps(measure(args.mode, args.epochs, args.grayscale_p)))
        return
    results = []
    for mode in ("linear", "finetune"):
        command = [
            sys.executable,
            __file__,
            "--mode",
            mode,
            "--epochs",
            str(args.epochs),
            "--grayscale-p",
            str(args.grayscale_p),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    print(json.dumps({"characters": 20, "cpu_cores": 2, "results": results}, indent=2))


if __name__ == "__main__":
    main()
