"""Build the default model shipped with kyara, from ../shared/data, reproducibly (fixed seed).

    python -m kyara.train.default_model --data ../shared/data --out kyara/models/default.kyara

Characters: every folder of holoen-faces, newgame-faces and danbooru6-faces. Split 75/10/15
(train/validation/test) per character with near-duplicates grouped. The unlabelled faces of
face-patches are halved: one half teaches the model what "another character" looks like
(outlier exposure), the other half only measures how often unknown faces are rejected.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import kyara
from kyara.bundle import ModelBundle, save_bundle
from kyara.classify import Classifier
from kyara.embedding import Embedder
from kyara.imageio import list_images, load_image
from kyara.metrics import auroc, expected_calibration_error, top_k_accuracy
from kyara.train.data import STORE_SIDE, LabelledImages, load_folders, split_by_group
from kyara.train.fit import package
from kyara.train.trainer import TrainConfig, build_net, config_dict, train

DATASETS = ("holoen-faces", "newgame-faces", "danbooru6-faces")
SPLIT = (0.75, 0.10, 0.15)


def load_unlabelled(folder: Path, side: int = STORE_SIDE) -> np.ndarray:
    """Every image of `folder` (same order as `list_images`) at `side` x `side`."""
    return np.stack([np.asarray(load_image(p).resize((side, side))) for p in list_images(folder)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("kyara/models/default.kyara"))
    parser.add_argument("--metrics", type=Path, default=Path("docs/default-model-metrics.json"))
    parser.add_argument("--checkpoint", type=Path, default=Path("build/default-model.pt"))
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    data = load_folders([args.data / name for name in DATASETS])
    train_idx, val_idx, test_idx = split_by_group(data.labels, data.groups, SPLIT, args.seed)
    outliers = load_unlabelled(args.data / "face-patches" / "face")
    order = np.random.default_rng(args.seed).permutation(len(outliers))
    outlier_train, outlier_test = outliers[order[::2]], outliers[order[1::2]]
    outlier_paths = list_images(args.data / "face-patches" / "face")
    print(
        f"{len(data.labels)} images, {len(data.classes)} characters, skipped {len(data.skipped)}; "
        f"train {len(train_idx)} val {len(val_idx)} test {len(test_idx)}; outliers {len(outliers)}",
        flush=True,
    )

    if args.checkpoint.exists():
        print(f"resuming from {args.checkpoint}", flush=True)
        saved = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        net = build_net(config)
        net.load_state_dict(saved["net"])
        net.eval()
        head, history, seconds = saved["head"], saved["history"], saved["seconds"]
    else:
        result = train(data.subset(train_idx), data.subset(val_idx), config, outlier_train)
        net, head, history, seconds = result.net, result.head, result.history, result.seconds
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"net": net.state_dict(), "head": head, "history": history, "seconds": seconds}, args.checkpoint)

    bundle = package(net, head, data.classes, data.subset(val_idx), config)
    metrics = evaluate_bundle(bundle, data.subset(test_idx), outlier_test)
    bundle.metadata = {
        "name": "kyara-default",
        "version": "0.1.0",
        "kyara_version": kyara.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": config.backbone,
        "training": {
            "datasets": list(DATASETS),
            "split": dict(zip(("train", "val", "test"), SPLIT)),
            "images": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "characters": data.counts(),
            "outlier_exposure": f"face-patches/face, {len(outlier_train)} of {len(outliers)} images",
            "config": config_dict(config),
            "history": history,
            "seconds": round(seconds, 1),
        },
        "metrics": metrics,
    }
    save_bundle(bundle, args.out)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    held_out = {
        "test_files": [data.paths[i].relative_to(args.data).as_posix() for i in test_idx],
        "outlier_test_files": [outlier_paths[i].relative_to(args.data).as_posix() for i in order[1::2]],
    }
    args.metrics.write_text(json.dumps({**bundle.metadata, **held_out}, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(metrics, indent=2), flush=True)


def evaluate_bundle(bundle: ModelBundle, test: LabelledImages, outliers: np.ndarray) -> dict:
    """Test-split figures through the shipped path: ONNX Runtime embedder + classifier."""
    from PIL import Image

    embedder = Embedder(bundle.onnx, bundle.input_size)
    classifier = Classifier.from_bundle(bundle)
    started = time.time()
    known = embedder.embed([Image.fromarray(p) for p in test.pixels])
    unknown = embedder.embed([Image.fromarray(p) for p in outliers])
    sims, unknown_sims = classifier.similarities(known), classifier.similarities(unknown)
    probabilities = classifier.probabilities(sims)
    correct = probabilities.argmax(1) == test.labels
    accepted = sims.max(1) >= bundle.unknown_threshold
    figures = {
        "test_images": len(test.labels),
        "top1": top_k_accuracy(sims, test.labels, 1),
        "top5": top_k_accuracy(sims, test.labels, 5),
        "ece": expected_calibration_error(probabilities.max(1), correct),
        "known_accepted": float(accepted.mean()),
        "accuracy_of_accepted": float(correct[accepted].mean()),
        "unknown_images": len(outliers),
        "unknown_rejected": float((unknown_sims.max(1) < bundle.unknown_threshold).mean()),
        "unknown_auroc": auroc(sims.max(1), unknown_sims.max(1)),
        "per_dataset": {},
        "per_character": {},
        "embed_seconds": round(time.time() - started, 1),
    }
    for name in DATASETS:
        mask = np.array([p.parent.parent.name == name for p in test.paths])
        figures["per_dataset"][name] = {
            "images": int(mask.sum()),
            "top1": top_k_accuracy(sims[mask], test.labels[mask], 1),
            "top5": top_k_accuracy(sims[mask], test.labels[mask], 5),
        }
    for index, name in enumerate(test.classes):
        mask = test.labels == index
        figures["per_character"][name] = round(float(correct[mask].mean()), 4) if mask.any() else None
    return figures


if __name__ == "__main__":
    main()
