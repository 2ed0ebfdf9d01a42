"""The vector side of an index: HNSW graphs (usearch) of the face embeddings, in shards.

Face ids are cut into ranges of `FACES_PER_SHARD`; the faces of one range live in one usearch
index and one file (`vectors.usearch` for the first range, `vectors.N.usearch` for range N), so a
large collection is many files of a comfortable size, an update rewrites only the shards whose
faces changed, and a search asks every shard (side by side, on the machine's cores) and keeps the
best answers of all. Face ids only grow (SQLite AUTOINCREMENT), so new faces fill the last shard.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kyara.bundle import atomic_write
from kyara.errors import KyaraError

VECTORS = "vectors.usearch"
FACES_PER_SHARD = 1_000_000
"""Face ids per shard: about 0.7 GB of graph and float16 vectors at 256 dimensions."""
EXACT_UP_TO = 50_000
"""Up to this many faces, a shard compares the query with every face (2.4 ms at 50,000 on 2
cores): perfect recall where it is cheap; beyond, its HNSW graph answers."""
SEARCH_EXPANSION = 256
"""Candidates a shard's graph walk keeps (usearch's `expansion_search`, 64 by default there).
Recall falls with the number of distinct characters in a shard more than with its size: in a
million faces of 100,000 characters, 64 candidates find about a third of the query's character's
true nearest faces, 256 over two thirds, in 6 ms (docs/collection.md, "Search at scale"). A
search may ask for more."""


def shard_file(number: int) -> str:
    return VECTORS if number == 0 else f"vectors.{number}.usearch"


def _usearch_index():
    try:
        from usearch.index import Index
    except ImportError as exc:
        raise KyaraError(f"the collection index needs the index extra: pip install 'kyara[index]' ({exc})") from exc
    return Index


def _new_index(dim: int):
    # usearch's default construction (expansion_add 128): on 300,000 clustered faces, 64 built
    # the graph twice as fast but lost recall@10 (0.967 against 1.0; docs/collection.md).
    return _usearch_index()(ndim=dim, metric="cos", dtype="f16")


class ShardedVectors:
    """Unit vectors keyed by face id, searched by cosine similarity, saved one file per shard."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._shards: dict[int, object] = {}
        self._changed: set[int] = set()

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards.values())

    def keys(self) -> np.ndarray:
        parts = [np.asarray(shard.keys, np.uint64) for shard in self._shards.values()]
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for number, at in _by_shard(ids):
            shard = self._shards.get(number)
            if shard is None:
                shard = self._shards[number] = _new_index(self.dim)
            shard.add(ids[at], vectors[at])
            self._changed.add(number)

    def remove(self, ids: np.ndarray) -> None:
        for number, at in _by_shard(ids):
            if number in self._shards:
                self._shards[number].remove(ids[at])
                self._changed.add(number)

    def search(
        self, queries: np.ndarray, top_k: int, expansion: int = SEARCH_EXPANSION
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(face ids, cosine distances) of the `top_k` nearest faces per query, nearest first;
        `expansion`: how many candidates each graph walk keeps (more: better recall, slower)."""
        if expansion < 1:
            raise KyaraError(f"the search expansion must be at least 1, not {expansion}")
        shards = [shard for shard in self._shards.values() if len(shard)]
        for shard in shards:
            shard.expansion_search = max(expansion, top_k)

        def ask(shard, threads: int) -> list[tuple[np.ndarray, np.ndarray]]:
            return _match_rows(shard.search(queries, top_k, exact=len(shard) <= EXACT_UP_TO, threads=threads))

        if len(shards) > 1:  # usearch releases the GIL: shards are walked side by side, one core each
            with ThreadPoolExecutor(min(len(shards), os.cpu_count() or 1)) as pool:
                answers = list(pool.map(lambda shard: ask(shard, 1), shards))
        else:
            answers = [ask(shard, 0) for shard in shards]
        merged = []
        for per_shard in zip(*answers):
            keys = np.concatenate([k for k, _ in per_shard])
            distances = np.concatenate([d for _, d in per_shard])
            best = np.argsort(distances, kind="stable")[:top_k]
            merged.append((keys[best], distances[best]))
        return merged or [(np.zeros(0, np.uint64), np.zeros(0, np.float32)) for _ in queries]

    @classmethod
    def restore(cls, folder: Path, dim: int) -> ShardedVectors:
        """The shards saved in `folder`; a missing, damaged or other-dimension file is left out
        (the caller adds what SQLite says is missing) and marked to be written again."""
        Index = _usearch_index()
        vectors = cls(dim)
        for number, file in _shard_files(folder):
            restored = None
            with contextlib.suppress(Exception):
                restored = Index.restore(str(file))
            if restored is not None and restored.ndim == dim and _all_in_shard(restored, number):
                vectors._shards[number] = restored
            else:
                vectors._changed.add(number)  # rewritten, or removed if no face of it is left
        return vectors

    def save(self, folder: Path) -> None:
        """Write each changed shard atomically (`atomic_write`; usearch streams it to disk, so a
        large shard is not held twice), and remove the file of a shard left without faces. Only
        writers call this, under the index's lock."""
        for number in sorted(self._changed):
            file = folder / shard_file(number)
            shard = self._shards.get(number)
            if shard is None or (len(shard) == 0 and number > 0):
                file.unlink(missing_ok=True)
                self._shards.pop(number, None)
            else:
                atomic_write(file, lambda temporary, shard=shard: shard.save(str(temporary)))
            self._changed.discard(number)


def _shard_files(folder: Path) -> Iterator[tuple[int, Path]]:
    if (folder / VECTORS).is_file():
        yield 0, folder / VECTORS
    for file in folder.glob("vectors.*.usearch"):
        number = file.name.split(".")[1]
        if number.isdigit() and int(number) > 0:
            yield int(number), file


def _all_in_shard(index, number: int) -> bool:
    """Whether every face of `index` belongs in shard `number` (a file from a kyara with other
    ranges does not: it is built again from SQLite)."""
    return bool((_shard_numbers(index.keys) == number).all())


def _by_shard(ids: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(shard number, positions in `ids`) for every shard that `ids` touch."""
    numbers = _shard_numbers(ids)
    for number in np.unique(numbers):
        yield int(number), np.nonzero(numbers == number)[0]


def _shard_numbers(ids) -> np.ndarray:
    """The shard of each face id: ids 1 to FACES_PER_SHARD are shard 0, and so on."""
    return (np.asarray(ids, np.uint64) - 1) // FACES_PER_SHARD


def _match_rows(matches) -> list[tuple[np.ndarray, np.ndarray]]:
    """(keys, cosine distances) per query, from usearch's one-query or many-query answer."""
    if hasattr(matches, "counts"):
        return [(k[:n], d[:n]) for k, d, n in zip(matches.keys, matches.distances, matches.counts)]
    return [(matches.keys, matches.distances)]
