"""A searchable index of a picture collection: where every face is, who it is, who looks alike.

A `.kyaradb` is a directory holding two stores, so that they travel and are locked together:

- `collection.sqlite`, the source of truth: files (path relative to the indexed root, size, mtime,
  SHA-256), their faces (box, angle, label, confidence, embedding as float16), files that could
  not be read, and the identity of the model (a hash of its embedder and one of its classifier).
- `vectors.usearch` (and `vectors.N.usearch` past a million faces: `kyara.index.vectors`), HNSW
  indexes (usearch) of the face embeddings keyed by face id, one per range of ids, searched
  together. They are derived from SQLite: opening an index removes the vectors of faces that are
  gone and adds the missing ones, so a run killed at any moment leaves two stores that agree once
  reopened.
- `shards/`, only while a Ray run is under way or after one died: what the cluster computed and
  the writer has not merged yet (`kyara.index.distributed`).

Updating is incremental: a file whose size and mtime are unchanged is skipped, one whose content
is unchanged is not decoded again, a moved file keeps its faces, and SQLite is committed every few
files so a killed run goes on where it stopped. A changed gallery (enroll, forget) only means new
labels, recomputed from the stored embeddings without detecting again. A different embedder makes
the stored vectors incomparable: `update(..., reembed=True)` cuts the faces again from the stored
boxes and embeds them, still without detecting.

The work per picture (hash, decode, detect, cut, embed: `kyara.index.work`) runs on all cores of
this machine, or on a Ray cluster; only the writer (`kyara.index.update`) touches the stores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

from kyara.errors import KyaraError
from kyara.imageio import ImageSource
from kyara.index.labels import IndexedFace
from kyara.index.queries import IndexQueries, QueryFace, SearchHit
from kyara.index.store import DATABASE, FORMAT_VERSION, SHARDS
from kyara.index.update import FILES_PER_COMMIT, IndexUpdates, UpdateSummary
from kyara.index.vectors import EXACT_UP_TO, FACES_PER_SHARD, SEARCH_EXPANSION, VECTORS
from kyara.index.work import Engine, InThreads
from kyara.pipeline import Model

__all__ = [
    "DATABASE",
    "EXACT_UP_TO",
    "FACES_PER_SHARD",
    "FILES_PER_COMMIT",
    "FORMAT_VERSION",
    "SEARCH_EXPANSION",
    "SHARDS",
    "VECTORS",
    "CollectionIndex",
    "Engine",
    "Found",
    "InThreads",
    "IndexedFace",
    "QueryFace",
    "SearchHit",
    "Similar",
    "UpdateSummary",
    "find_character",
    "index_folder",
    "search_similar",
]


class CollectionIndex(IndexUpdates, IndexQueries):
    """An index of the faces in a picture folder. Open one with `CollectionIndex.open`: `store`
    opens it, `update` writes it, `labels` keeps its labels current, `queries` reads it."""


def index_folder(
    root: str | os.PathLike,
    db: str | os.PathLike,
    model: Model = None,
    reembed: bool = False,
    moved: bool = False,
    progress: bool = True,
    workers: int | None = None,
    ray: str | None = None,
    precision: str | None = None,
) -> tuple[UpdateSummary, dict]:
    """`kyara index`: make or update the index at `db` of the pictures under `root` (see
    `CollectionIndex.update`); returns what the update did and the index's `stats` after it.
    `workers`: pictures worked on at once here (default: one per core). `ray`: do the work on
    the Ray cluster at this address instead ("auto": the one `ray start` joined this machine to;
    "local": a cluster of this machine alone), its shards in the index's `shards` folder.
    `precision`: the networks' (`kyara.runtime`; default: the index's own, else float32)."""
    if not Path(root).is_dir():
        raise KyaraError(f"{root}: not a folder")  # before an index is made for it
    if ray is not None and workers is not None:
        raise KyaraError("--workers sets this machine's workers; with --ray, the cluster's CPUs decide")
    if ray is None:
        engine: Engine = InThreads(workers)
    else:
        from kyara.index.distributed import OnRay

        engine = OnRay(ray, progress=progress)
    with CollectionIndex.open(db, model, create=True, precision=precision) as collection:
        summary = collection.update(root, reembed=reembed, moved=moved, progress=progress, engine=engine)
        return summary, collection.stats()


class Found(NamedTuple):
    """What `kyara find` prints: the indexed root, the character's faces, and whether the model
    knows the name at all (an unknown name finds nothing, and deserves a warning)."""

    root: str
    faces: list[IndexedFace]
    known: bool


def find_character(
    db: str | os.PathLike, name: str, model: Model = None, min_confidence: float = 0.0, precision: str | None = None
) -> Found:
    """`kyara find`: every indexed face labelled `name` (see `CollectionIndex.find`)."""
    with CollectionIndex.open(db, model, precision=precision) as collection:
        root = str(collection.root)
        return Found(root, collection.find(name, min_confidence), name in collection.recognizer.classifier.labels)


class Similar(NamedTuple):
    """What `kyara search` prints: the indexed root and, per face of the query, its nearest faces."""

    root: str
    faces: list[QueryFace]


def search_similar(
    db: str | os.PathLike,
    image: ImageSource,
    model: Model = None,
    top_k: int = 10,
    expansion: int = SEARCH_EXPANSION,
    precision: str | None = None,
) -> Similar:
    """`kyara search`: the indexed faces most similar to each face of `image` (see `CollectionIndex.search`)."""
    with CollectionIndex.open(db, model, precision=precision) as collection:
        return Similar(str(collection.root), collection.search(image, top_k, expansion))
