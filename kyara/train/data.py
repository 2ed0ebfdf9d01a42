"""Training data: folders of character images -> pixel arrays, labels, near-duplicate groups, splits."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kyara.crop import training_cuts
from kyara.dataset import character_folders
from kyara.dedupe import group_near_duplicates, phash
from kyara.detection import Detector
from kyara.errors import ImageError
from kyara.imageio import list_images, load_image

STORE_SIDE = 144
"""Pixels are kept at this side so random crops to the model's input size still have room."""
DEFAULT_GRAYSCALE_P = 0.15
"""Share of training pictures turned gray by default, so manga pages are not wholly foreign."""


@dataclass
class LabelledImages:
    """Square RGB pixels in memory with a class index and a near-duplicate group per image."""

    pixels: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    classes: list[str]
    paths: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def subset(self, indices: np.ndarray) -> LabelledImages:
        return LabelledImages(
            self.pixels[indices],
            self.labels[indices],
            self.groups[indices],
            self.classes,
            [self.paths[i] for i in indices],
        )

    def with_classes(self, names: Sequence[str]) -> LabelledImages:
        """Only the images of `names`, relabelled 0..len(names)-1 in that order."""
        new_label = np.full(len(self.classes), -1, np.int64)
        new_label[[self.classes.index(name) for name in names]] = np.arange(len(names))
        part = self.subset(np.flatnonzero(new_label[self.labels] >= 0))
        part.labels = new_label[part.labels]
        part.classes = list(names)
        return part

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}


def load_folders(roots: Sequence[Path], side: int = STORE_SIDE, detector: Detector | None = None) -> LabelledImages:
    """Read every image under each character folder, resized to `side` x `side`.

    With a `detector`, full illustrations are reduced to their most confident face (cached);
    illustrations with no face found are skipped and listed, like unreadable files.
    """
    pixels, labels, paths, hashes, sources, skipped, classes = [], [], [], [], [], [], []
    for folder in character_folders(roots):
        label, before = len(classes), len(labels)
        for path in tqdm(list_images(folder), desc=folder.name, leave=False):
            try:
                image = load_image(path)
            except ImageError as exc:
                skipped.append((path, str(exc)))
                continue
            if detector is not None:
                cuts = training_cuts(path, image, detector)
                if not cuts:
                    skipped.append((path, f"{path}: no face found in this illustration"))
                    continue
                image = cuts[0].pixels
            pixels.append(np.asarray(image.resize((side, side), Image.Resampling.BILINEAR)))
            labels.append(label)
            paths.append(path)
            hashes.append(phash(image))
            sources.append(f"{label}/{source_key(path)}")
        if len(labels) > before:
            classes.append(folder.name)
        else:
            skipped.append((folder, f"{folder}: no usable images, character left out"))
    groups = _merge_groups(group_near_duplicates(hashes), sources) if hashes else []
    return LabelledImages(
        np.stack(pixels) if pixels else np.zeros((0, side, side, 3), np.uint8),
        np.asarray(labels, np.int64),
        np.asarray(groups, np.int64),
        classes,
        paths,
        skipped,
    )


def source_key(path: Path) -> str:
    """Crops cut from one picture are named `<picture>.<ext>-<n>.<ext>` (as `kyara crop` and
    holoen-faces do): they share a source. Other names are their own source."""
    return re.sub(r"(\.(?:jpe?g|png|webp|gif|bmp|tiff?))-\d+$", r"\1", path.stem, flags=re.IGNORECASE)


def _merge_groups(hash_groups: list[int], sources: list[str]) -> list[int]:
    """Join hash groups that share a source picture, so they also land on one side of a split."""
    by_source: dict[str, int] = {}
    parent = list(range(max(hash_groups, default=-1) + 1))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for group, source in zip(hash_groups, sources):
        if source in by_source:
            parent[root(group)] = root(by_source[source])
        else:
            by_source[source] = group
    return [root(g) for g in hash_groups]


def split_by_group(labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Stratified split into len(fractions) parts (the last takes the rest); groups never straddle."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    part_of_group: dict[int, int] = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        member_groups = np.unique(groups[members])
        rng.shuffle(member_groups)
        quotas = [round(f * len(members)) for f in fractions[:-1]]
        filled = [0] * len(fractions)
        part = 0
        for group in member_groups:
            while part < len(quotas) and filled[part] >= quotas[part]:
                part += 1
            # A group seen under another character already has its side: keep it there.
            chosen = part_of_group.setdefault(int(group), part)
            indices = members[groups[members] == group]
            parts[chosen].extend(indices.tolist())
            filled[chosen] += len(indices)
    return [np.asarray(sorted(p), np.int64) for p in parts]
