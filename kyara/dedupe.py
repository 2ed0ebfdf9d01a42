"""Near-duplicate detection with a perceptual hash (pHash: low DCT frequencies vs their median)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

_HASH_SIDE = 8
_SAMPLE_SIDE = 32
NEAR_DUPLICATE_BITS = 10
"""Hamming distance (of 64 bits) at or below which two pictures count as the same drawing."""


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT = _dct_matrix(_SAMPLE_SIDE)


def phash(image: Image.Image) -> np.ndarray:
    """64 boolean bits describing the coarse structure of `image`; robust to resizing and JPEG."""
    gray = np.asarray(image.convert("L").resize((_SAMPLE_SIDE, _SAMPLE_SIDE), Image.Resampling.LANCZOS), np.float64)
    low = (_DCT @ gray @ _DCT.T)[:_HASH_SIDE, :_HASH_SIDE].ravel()
    return low > np.median(low[1:])


def group_near_duplicates(hashes: Sequence[np.ndarray], max_bits: int = NEAR_DUPLICATE_BITS) -> list[int]:
    """Group id per hash: pictures within `max_bits` of each other (transitively) share a group."""
    bits = np.asarray(hashes, dtype=bool).reshape(len(hashes), -1)
    parent = list(range(len(bits)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(bits)):
        close = np.flatnonzero((bits[i + 1 :] != bits[i]).sum(axis=1) <= max_bits) + i + 1
        for j in close:
            parent[root(int(j))] = root(i)
    roots = [root(i) for i in range(len(bits))]
    ids = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]
