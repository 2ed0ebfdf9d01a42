"""Training data: folders of character images -> pixel arrays, labels, near-duplicate groups, splits."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kyara.dedupe import group_near_duplicates, phash
from kyara.errors import ImageError
from kyara.imageio import list_images, load_image

STORE_SIDE = 144
"""Pixels are kept at this side so random crops to the model's input size still have room."""


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
            self.pixels[indices], self.labels[indices], self.groups[indices], self.classes,
            [self.paths[i] for i in indices],
        )

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.classes)}


def character_folders(roots: Sequence[Path]) -> list[Path]:
    """Sub-folders of each root (one per character), sorted by name, hidden ones skipped."""
    folders = [f for root in roots for f in sorted(Path(root).iterdir()) if f.is_dir() and not f.name.startswith(".")]
    names = [f.name for f in folders]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"the same character folder appears in several roots: {duplicates}")
    return folders


def load_folders(roots: Sequence[Path], side: int = STORE_SIDE) -> LabelledImages:
    """Read every image under each character folder, resized to `side` x `side`."""
    folders = character_folders(roots)
    pixels, labels, paths, hashes, sources, skipped = [], [], [], [], [], []
    for label, folder in enumerate(folders):
        for path in tqdm(list_images(folder), desc=folder.name, leave=False):
            try:
                image = load_image(path)
            except ImageError as exc:
                skipped.append((path, str(exc)))
                continue
            pixels.append(np.asarray(image.resize((side, side), Image.Resampling.BILINEAR)))
            labels.append(label)
            paths.append(path)
            hashes.append(phash(image))
            sources.append(f"{label}/{source_key(path)}")
    groups = _merge_groups(group_near_duplicates(hashes), sources)
    return LabelledImages(
        np.stack(pixels) if pixels else np.zeros((0, side, side, 3), np.uint8),
        np.asarray(labels, np.int64), np.asarray(groups, np.int64), [f.name for f in folders], paths, skipped,
    )


def source_key(path: Path) -> str:
    """Crops cut from one picture are often named `<picture>-<n>.<ext>`; they share a source."""
    return re.sub(r"-\d+$", "", path.stem)


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


def split_by_group(
    labels: np.ndarray, groups: np.ndarray, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
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
