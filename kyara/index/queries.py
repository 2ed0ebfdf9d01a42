"""Reading an index: faces by character or by picture, the faces most similar to a picture's,
and counts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from kyara.errors import KyaraError
from kyara.imageio import ImageSource
from kyara.index.labels import IndexedFace, LabelledStore
from kyara.index.store import CURRENT_FACES, FACES, SQL_CHUNK, chunks
from kyara.index.vectors import SEARCH_EXPANSION
from kyara.pipeline import checked_top_k


@dataclass(frozen=True)
class SearchHit:
    face: IndexedFace
    similarity: float
    """Cosine similarity between the query face and this face."""

    def to_dict(self) -> dict:
        return {**self.face.to_dict(), "similarity": round(self.similarity, 4)}


@dataclass(frozen=True)
class QueryFace:
    """One face of a search query, with the most similar faces of the collection."""

    box: tuple[int, int, int, int]
    fallback: bool
    hits: list[SearchHit]

    def to_dict(self) -> dict:
        return {"box": list(self.box), "fallback": self.fallback, "hits": [h.to_dict() for h in self.hits]}


class IndexQueries(LabelledStore):
    """The questions `kyara find` and `kyara search` ask."""

    def find(self, label: str, min_confidence: float = 0.0) -> list[IndexedFace]:
        """Every face labelled `label`, by path (labels follow this model's current gallery)."""
        stale = self._labels_stale()
        if stale:  # labels are computed as the faces are read
            where, parameters = "", (self.embedder_id,)
        else:
            where, parameters = " AND label = ? AND confidence >= ?", (self.embedder_id, label, min_confidence)
        faces = self._select_faces(f"{CURRENT_FACES}{where} ORDER BY files.path, faces.id", parameters, stale)
        return [face for face in faces if face.label == label and face.confidence >= min_confidence]

    def faces_of(self, path: str) -> list[IndexedFace]:
        """The indexed faces of one picture (`path` relative to the root, with forward slashes)."""
        query = f"{CURRENT_FACES} AND files.path = ? ORDER BY faces.id"
        return list(self._select_faces(query, (self.embedder_id, path), self._labels_stale()))

    def search(self, image: ImageSource, top_k: int = 10, expansion: int = SEARCH_EXPANSION) -> list[QueryFace]:
        """The faces of the collection most similar to each face of `image` (a face crop is used
        as it is, see `Recognizer.cuts_to_name`; a picture without a face found is used whole, marked
        `fallback`). `expansion`: the search effort in large collections (`SEARCH_EXPANSION`)."""
        self._require_same_embedder()
        cuts = self.recognizer.cuts_to_name(self.recognizer.load(image))  # as `update` cut the collection
        hits = self.search_vectors(self.recognizer.embed(cuts), top_k, expansion)
        return [QueryFace(cut.box, cut.fallback, face_hits) for cut, face_hits in zip(cuts, hits)]

    def search_vectors(
        self, vectors: np.ndarray, top_k: int = 10, expansion: int = SEARCH_EXPANSION
    ) -> list[list[SearchHit]]:
        """For each embedding, the `top_k` most similar faces of the collection, best first (with
        labels from this model's current gallery)."""
        top_k = checked_top_k(top_k)
        queries = np.asarray(vectors, np.float32).reshape(len(vectors), -1) if len(vectors) else None
        if queries is not None and queries.shape[1] != self.dim:
            raise KyaraError(f"the index holds {self.dim}-dimensional embeddings, not {queries.shape[1]}")
        stale = self._labels_stale()
        if len(self._vectors) == 0 or queries is None:
            return [[] for _ in vectors]
        # Asking for more than the collection holds would reserve memory for every extra answer.
        matches = self._vectors.search(queries, min(top_k, len(self._vectors)), expansion)
        ids = sorted({int(k) for keys, _ in matches for k in keys})
        faces = {face.face_id: face for face in self._faces_by_id(ids, stale)}
        return [
            [SearchHit(faces[int(k)], 1.0 - float(d)) for k, d in zip(keys, distances) if int(k) in faces]
            for keys, distances in matches
        ]

    def _faces_by_id(self, ids: list[int], stale: bool) -> Iterable[IndexedFace]:
        for chunk in chunks(ids, SQL_CHUNK):
            marks = ",".join("?" * len(chunk))
            yield from self._select_faces(f"{FACES} WHERE faces.id IN ({marks})", chunk, stale)

    def stats(self) -> dict:
        """Counts of files, faces and labels, and how many files still wait for re-embedding."""
        count = self._connection.execute
        embedder = self._meta("embedder")
        labels = count(
            f"SELECT label, COUNT(*) {CURRENT_FACES} AND label IS NOT NULL GROUP BY label ORDER BY 2 DESC", (embedder,)
        )
        return {
            "root": self._meta("root"),
            "model": self._meta("model"),
            "files": count("SELECT COUNT(*) FROM files").fetchone()[0],
            "faces": count("SELECT COUNT(*) FROM faces").fetchone()[0],
            "vectors": len(self._vectors),
            "unreadable": count("SELECT COUNT(*) FROM unreadable").fetchone()[0],
            "awaiting_reembedding": count("SELECT COUNT(*) FROM files WHERE embedder != ?", (embedder,)).fetchone()[0],
            "characters": dict(labels.fetchall()),
        }

    def unreadable(self) -> list[tuple[str, str]]:
        """(path, error) of each file that could not be read, as of the last update."""
        return self._connection.execute("SELECT path, error FROM unreadable ORDER BY path").fetchall()
