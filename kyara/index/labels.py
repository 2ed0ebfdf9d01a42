"""Labels of indexed faces: stored ones, recomputed from the stored embeddings when the model's
gallery changed (after enroll or forget), without detecting or embedding again."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from kyara.classify import Prediction
from kyara.errors import KyaraError
from kyara.gallery import locked
from kyara.index.store import CURRENT_FACES, DATABASE, FACE_COLUMNS, IndexStore


@dataclass(frozen=True)
class IndexedFace:
    """A face of the collection. `path` is relative to the indexed root; `label` None: unknown."""

    face_id: int
    path: str
    box: tuple[int, int, int, int]
    detector_score: float
    angle: float
    fallback: bool
    label: str | None
    confidence: float
    similarity: float

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "box": list(self.box),
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "similarity": round(self.similarity, 4),
            "detector_score": round(self.detector_score, 4),
            "fallback": self.fallback,
        }


class LabelledStore(IndexStore):
    """An index whose faces carry this model's labels."""

    def relabel(self) -> int:
        """Recompute every face's label with the model's classifier (after enroll or forget),
        from the stored embeddings: nothing is detected or embedded again. Returns faces done."""
        self._require_same_embedder()
        with locked(self.path / DATABASE):
            return self._relabel()

    def _relabel(self) -> int:
        done = 0
        with self._connection as db:
            rows = db.execute(f"SELECT faces.id, {self.gray_column}, embedding {CURRENT_FACES}", (self.embedder_id,))
            for labelled in self._labelled(rows):
                db.executemany(
                    "UPDATE faces SET label = ?, confidence = ?, similarity = ? WHERE id = ?",
                    [(p.label, p.confidence, p.similarity, row[0]) for row, p in labelled],
                )
                done += len(labelled)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('classifier', ?)", (self.classifier_id,))
        return done

    def _labels_stale(self) -> bool:
        """Whether the stored labels predate this model's classifier (after enroll or forget).
        They are recomputed and stored when no writer holds the index; while `kyara index` runs,
        or when the collection is read-only, a query computes its own and stores nothing."""
        self._require_same_embedder()
        if self._meta("classifier") == self.classifier_id:
            return False
        with (
            contextlib.suppress(OSError, KyaraError, sqlite3.OperationalError),
            locked(self.path / DATABASE, wait=False) as acquired,
        ):
            if acquired:
                self._relabel()
                return False
        return True

    def _select_faces(self, query: str, parameters: Sequence, stale: bool) -> Iterator[IndexedFace]:
        """The faces of `SELECT <face columns> {query}`, labelled by this model's classifier
        when the stored labels are `stale`."""
        if not stale:
            rows = self._connection.execute(f"SELECT {FACE_COLUMNS} {query}", parameters)
            yield from (face_from_row(row) for row in rows)
            return
        rows = self._connection.execute(f"SELECT {FACE_COLUMNS}, {self.gray_column}, embedding {query}", parameters)
        for labelled in self._labelled(rows):
            for row, p in labelled:
                yield replace(face_from_row(row[:-2]), label=p.label, confidence=p.confidence, similarity=p.similarity)

    def _labelled(self, rows: sqlite3.Cursor) -> Iterator[list[tuple[tuple, Prediction]]]:
        """`rows` (whether the face is gray, then its stored embedding, last) in chunks, each row
        with this model's prediction."""
        while chunk := rows.fetchmany(65536):
            gray = np.array([row[-2] for row in chunk], bool)
            predictions = self.recognizer.classify(self._decode([row[-1] for row in chunk]), top_k=1, gray=gray)
            yield list(zip(chunk, predictions))


def face_from_row(row: tuple) -> IndexedFace:
    face_id, path, x, y, w, h, score, angle, fallback, label, confidence, similarity = row
    return IndexedFace(face_id, path, (x, y, w, h), score, angle, bool(fallback), label, confidence, similarity)
