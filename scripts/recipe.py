"""How kyara's shipped embedder is trained: one recipe for the default model and the held-out study.

- Pictures: the corpus (scripts/corpus.py), split 75/10/15 per character by near-duplicate group;
  the training part is shown twice, as stored and as the detector cuts the face out of it.
- Sampling: characters drawn with weight sqrt(pictures), so the 20 characters with 500 crops each do
  not crowd out the 105 with 40 to 150; a fixed number of steps per epoch.
- Augmentation: framing jitter (kyara/train/augment.py), 30 % grayscale, 10 % manga-like ink and
  screentone.
- A network is trained once per set of characters and kept in build/; a killed run resumes from its
  last epoch.
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from corpus import detector_views, joined, with_identities

from kyara.bundle import atomic_write_bytes
from kyara.train.data import LabelledImages
from kyara.train.trainer import EmbeddingNet, TrainConfig, build_net, train

SPLIT = (0.75, 0.10, 0.15)
RECIPE = TrainConfig(
    epochs=8,
    steps_per_epoch=250,
    balance=0.5,
    patience=8,
    grayscale_p=0.3,
    manga_p=0.1,
    ood_weight=0.0,
)
VALIDATION_PICTURES = 1500
"""Validation pictures watched after each epoch (a fixed sample: the whole split costs minutes)."""


def training_set(stored: LabelledImages, cache: Path, portraits: LabelledImages | None = None) -> LabelledImages:
    """`stored` plus its detector views (corpus.detector_views), kept per picture in `cache` (the
    held-out study and the default model share most training pictures), then any `portraits`
    (corpus.portrait_identities) as more characters after `stored`'s."""
    known: dict[str, np.ndarray | None] = {}
    if cache.exists():
        saved = np.load(cache, allow_pickle=False)
        pixels = iter(saved["pixels"])
        known = {str(p): next(pixels) if found else None for p, found in zip(saved["paths"], saved["found"])}
    missing = [p for p in stored.paths if str(p) not in known]
    if missing:
        known.update(detector_views(missing))
        found = [p for p, view in known.items() if view is not None]
        buffer = io.BytesIO()
        np.savez(
            buffer,
            paths=np.array(list(known)),
            found=np.array([view is not None for view in known.values()]),
            pixels=np.stack([known[p] for p in found]),
        )
        atomic_write_bytes(cache, buffer.getvalue())
    index = np.array([i for i, p in enumerate(stored.paths) if known[str(p)] is not None], np.int64)
    views = LabelledImages(
        np.stack([known[str(stored.paths[i])] for i in index]),
        stored.labels[index],
        stored.groups[index],
        stored.classes,
        [stored.paths[i] for i in index],
    )
    both = joined(stored, views)
    return both if portraits is None else with_identities(both, portraits)


def validation_sample(val: LabelledImages, seed: int) -> LabelledImages:
    if len(val.labels) <= VALIDATION_PICTURES:
        return val
    pick = np.random.default_rng(seed).choice(len(val.labels), VALIDATION_PICTURES, replace=False)
    return val.subset(np.sort(pick))


def trained_network(
    train_set: LabelledImages,
    val: LabelledImages,
    config: TrainConfig,
    checkpoint: Path,
    start: Path | None = None,
) -> tuple[EmbeddingNet, list[dict], float]:
    """Train, or reuse the network kept in `checkpoint` when settings and characters are the same,
    so calibration and reports can be redone without training again. `start`: another kept
    network to begin from instead of ImageNet."""
    identity = {"config": asdict(config), "classes": train_set.classes, "start": str(start)}
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if {key: saved.get(key) for key in identity} != identity:
            raise SystemExit(f"{checkpoint} was trained with other settings; delete it to train again")
        print(f"using the network trained earlier, from {checkpoint}", flush=True)
        net = build_net(config, imagenet=False)
        net.load_state_dict(saved["net"])
        net.eval()
        return net, saved["history"], saved["seconds"]
    initial = None
    if start is not None:
        initial = torch.load(start, map_location="cpu", weights_only=True)["net"]
    resume = checkpoint.with_name(checkpoint.stem + "-epochs.pt")
    result = train(train_set, validation_sample(val, config.seed), config, start=initial, checkpoint=resume)
    buffer = io.BytesIO()
    torch.save(
        {**identity, "net": result.net.state_dict(), "history": result.history, "seconds": result.seconds}, buffer
    )
    atomic_write_bytes(checkpoint, buffer.getvalue())
    resume.unlink(missing_ok=True)
    return result.net, result.history, result.seconds
