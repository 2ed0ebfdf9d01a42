"""A searchable index of a picture collection: where every face is, who it is, who looks alike.

A `.kyaradb` is a directory holding two stores, so that they travel and are locked together:

- `collection.sqlite`, the source of truth: files (path relative to the indexed root, size, mtime,
  SHA-256), their faces (box, angle, label, confidence, embedding as float16), files that could
  not be read, and the identity of the model (a hash of its embedder and one of its classifier).
- `vectors.usearch`, an HNSW index (usearch) of the face embeddings keyed by face id. It is
  derived from SQLite: opening an index removes the vectors of faces that are gone and adds the
  missing ones, so a run killed at any moment leaves two stores that agree once reopened.

Updating is incremental: a file whose size and mtime are unchanged is skipped, one whose content
is unchanged is not decoded again, a moved file keeps its faces, and SQLite is committed every few
files so a killed run goes on where it stopped. A changed gallery (enroll, forget) only means new
labels, recomputed from the stored embeddings without detecting again. A different embedder makes
the stored vectors incomparable: `update(..., reembed=True)` cuts the faces again from the stored
boxes and embeds them, still without detecting.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kyara.classify import Prediction
from kyara.cut import FaceCut, crop_sized, cuts_of
from kyara.detection import DetectedFace
from kyara.errors import ImageError, KyaraError
from kyara.gallery import locked
from kyara.imageio import ImageSource, check_utf8, list_images, resolved
from kyara.pipeline import Recognizer

FORMAT_VERSION = 2
"""2: a face crop is one face, the whole picture (`cut.cuts_to_name`). An index of format 1
made before that rule (session 6) cut the face out of face crops again; its next update reads such
files afresh (`_forget_face_crops`)."""
DATABASE = "collection.sqlite"
VECTORS = "vectors.usearch"
FILES_PER_COMMIT = 16
"""A killed run loses at most this many files of work."""
EXACT_UP_TO = 50_000
"""Up to this many faces, search compares the query with every face (2.4 ms at 50,000 on 2 cores):
perfect recall where it is cheap; beyond, the HNSW graph answers."""
_SQL_CHUNK = 500
"""Ids per `IN (...)` query: far below SQLite's limit on bound parameters."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    embedder TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    x INTEGER NOT NULL,
    y INTEGER NOT NULL,
    w INTEGER NOT NULL,
    h INTEGER NOT NULL,
    detector_score REAL NOT NULL,
    angle REAL NOT NULL,
    fallback INTEGER NOT NULL,
    label TEXT,
    confidence REAL NOT NULL,
    similarity REAL NOT NULL,
    embedding BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_file ON faces(file_id);
CREATE INDEX IF NOT EXISTS faces_label ON faces(label);
CREATE TABLE IF NOT EXISTS unreadable (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    error TEXT NOT NULL
);
"""
# AUTOINCREMENT: a face id is never reused, so a vector left behind by a killed run can never be
# taken for another face's.

_FACE_COLUMNS = "faces.id, files.path, x, y, w, h, detector_score, angle, fallback, label, confidence, similarity"
_FACES = "FROM faces JOIN files ON files.id = faces.file_id"
_CURRENT_FACES = f"{_FACES} WHERE files.embedder = ?"
"""Faces embedded with a given embedder (the only ones in the vector index)."""


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


@dataclass(frozen=True)
class SearchHit:
    face: IndexedFace
    similarity: float
    """Cosine similarity between the query face and this face."""

    def to_dict(self) -> dict:
        return {**self.face.to_dict(), "match": round(self.similarity, 4)}


@dataclass(frozen=True)
class QueryFace:
    """One face of a search query, with the most similar faces of the collection."""

    box: tuple[int, int, int, int]
    fallback: bool
    hits: list[SearchHit]

    def to_dict(self) -> dict:
        return {"box": list(self.box), "fallback": self.fallback, "hits": [h.to_dict() for h in self.hits]}


@dataclass
class UpdateSummary:
    """What one `update` did. `seconds` says where the time went."""

    files: int = 0
    added: int = 0
    changed: int = 0
    moved: int = 0
    reembedded: int = 0
    unchanged: int = 0
    removed: int = 0
    faces: int = 0
    relabelled: int = 0
    unreadable: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("hash", "decode", "detect", "embed", "write"), 0.0)
    )

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}

    @contextlib.contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started


@dataclass(frozen=True)
class _Stored:
    """A row of `files`."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str
    embedder: str


@dataclass
class _Picture:
    """A file read and cut into face crops, ready to embed and write."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    cuts: list[FaceCut]
    replaces: int | None


@dataclass
class _Batch:
    pictures: list[_Picture] = field(default_factory=list)
    touched: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(path, size, mtime_ns, file id): same content, new stat or new path; nothing to compute."""
    unreadable: list[tuple[str, int, int, str, int | None]] = field(default_factory=list)
    """(path, size, mtime_ns, error, file id it replaces)."""

    def __len__(self) -> int:
        return len(self.pictures) + len(self.touched) + len(self.unreadable)


class CollectionIndex:
    """An index of the faces in a picture folder. Open one with `CollectionIndex.open`."""

    def __init__(self, db: str | os.PathLike, recognizer: Recognizer, create: bool = False) -> None:
        self.path = Path(db).expanduser()
        self.recognizer = recognizer
        self.embedder_id = hashlib.sha256(recognizer.bundle.onnx).hexdigest()
        self.classifier_id = _classifier_id(recognizer)
        self.dim = recognizer.embedder.dim
        self._connection = self._connect(create)
        try:
            self._check_format()
            self._vectors = _empty_vectors(self.dim)
            self._vectors_changed = False
            if self._meta("embedder") == self.embedder_id:
                self._load_vectors()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls, db: str | os.PathLike, model: str | os.PathLike | None = None, create: bool = False
    ) -> CollectionIndex:
        """The index at `db` with the model at `model` (default: the user's copy or the built-in)."""
        return cls(db, Recognizer(model), create)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> CollectionIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def root(self) -> Path | None:
        stored = self._meta("root")
        return Path(stored) if stored else None

    # Opening ---------------------------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection:
        database = self.path / DATABASE
        if not database.is_file():
            if not create:
                raise KyaraError(f"{self.path}: no collection index here (make one with `kyara index FOLDER --db ...`)")
            check_utf8(self.path)
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise KyaraError(f"{self.path}: exists and is not a kyara collection index; choose another --db")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KyaraError(f"{self.path}: cannot create the index here ({exc.strerror or exc})") from exc
        try:
            connection = sqlite3.connect(database, timeout=60)
        except sqlite3.DatabaseError as exc:
            raise KyaraError(f"{database}: not a usable collection database ({exc})") from exc
        try:
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA journal_mode = WAL")  # readers (find, search) never wait for `index`
            connection.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise KyaraError(f"{database}: not a usable collection database ({exc})") from exc
        return connection

    def _check_format(self) -> None:
        version = self._meta("format_version")
        if version is not None and not (version.isdigit() and int(version) <= FORMAT_VERSION):
            raise KyaraError(f"{self.path}: made by a newer kyara (index format {version}); upgrade kyara to use it")
        if self._meta("embedder") is None:
            self._set_meta(
                format_version=str(FORMAT_VERSION),
                embedder=self.embedder_id,
                model=self.recognizer.bundle.name,
                classifier=self.classifier_id,
            )

    def _meta(self, key: str) -> str | None:
        row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, **values: str) -> None:
        with self._connection:
            self._connection.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def _require_same_embedder(self) -> None:
        if self._meta("embedder") != self.embedder_id:
            raise KyaraError(
                f"{self.path} was indexed with another embedder (model {self._meta('model')!r}), whose vectors "
                f"cannot be compared with those of {self.recognizer.bundle.name!r}. Re-embed it with "
                f"`kyara index {self.root or 'FOLDER'} --db {self.path} --reembed` (faces are cut again from the "
                "stored boxes; nothing is detected again), or pass the model it was built with (--model)."
            )

    def _load_vectors(self) -> None:
        """Read the vector index, then make it agree with SQLite (see the module docstring)."""
        from usearch.index import Index

        file = self.path / VECTORS
        restored = None
        with contextlib.suppress(Exception):  # a missing or damaged file is rebuilt from SQLite
            restored = Index.restore(str(file)) if file.is_file() else None
        usable = restored is not None and restored.ndim == self.dim
        self._vectors = restored if usable else _empty_vectors(self.dim)
        rows = self._connection.execute(f"SELECT faces.id {_CURRENT_FACES}", (self.embedder_id,))
        wanted = np.fromiter((row[0] for row in rows), np.uint64)
        present = np.asarray(self._vectors.keys, np.uint64)
        extra = np.setdiff1d(present, wanted)
        missing = np.setdiff1d(wanted, present)
        if len(extra):
            self._vectors.remove(extra)
        for ids in _chunks(missing.tolist(), _SQL_CHUNK):
            marks = ",".join("?" * len(ids))
            rows = self._connection.execute(f"SELECT id, embedding FROM faces WHERE id IN ({marks})", ids).fetchall()
            self._vectors.add(np.array([r[0] for r in rows], np.uint64), self._decode([r[1] for r in rows]))
        # A rebuilt file is written back by the next writer (`update`, `save_vectors`).
        self._vectors_changed = not usable or bool(len(extra) or len(missing))

    def save_vectors(self) -> None:
        """Write the vector index now. `update` does it itself; opening an index whose vector file
        was missing or stale only rebuilds it in memory, and this keeps the rebuilt one."""
        with locked(self.path / DATABASE):
            self._save_vectors()

    def _save_vectors(self) -> None:
        """Replace the vector file atomically. Only writers call this, under the lock, so one
        temporary name is enough; usearch streams it to disk (a large index is not held twice)."""
        if not self._vectors_changed:
            return
        temporary = self.path / f".{VECTORS}.tmp"
        try:
            self._vectors.save(str(temporary))
            with temporary.open("rb") as file:
                os.fsync(file.fileno())
            os.replace(temporary, self.path / VECTORS)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self._vectors_changed = False

    # Updating --------------------------------------------------------------------------------

    def update(
        self, root: str | os.PathLike, reembed: bool = False, moved: bool = False, progress: bool = True
    ) -> UpdateSummary:
        """Bring the index up to date with the pictures under `root`: index new and changed files,
        drop removed ones, skip unchanged ones. `reembed`: adopt this model's embedder (see module
        docstring). `moved`: `root` is the indexed collection, moved to a new place."""
        root = resolved(root)
        if not root.is_dir():
            raise KyaraError(f"{root}: not a folder")
        check_utf8(root)  # stored as text in the database
        summary = UpdateSummary()
        with locked(self.path / DATABASE):
            if reembed and self._meta("embedder") != self.embedder_id:
                self._set_meta(embedder=self.embedder_id, model=self.recognizer.bundle.name)
            if self._meta("embedder") == self.embedder_id:
                # Another writer may have run since this index was opened: start from its vectors,
                # or the save at the end would put back a stale file.
                self._load_vectors()
            self._require_same_embedder()
            self._adopt_root(root, moved)
            if self._meta("format_version") == "1":
                self._forget_face_crops()
            if self._meta("classifier") != self.classifier_id:
                summary.relabelled = self._relabel()
            try:
                self._index_files(root, summary, progress)
            finally:
                self._save_vectors()
        return summary

    def _adopt_root(self, root: Path, moved: bool) -> None:
        stored = self.root
        if stored is not None and stored != root and not moved:
            raise KyaraError(
                f"{self.path} indexes {stored}, not {root}. If the collection moved there, pass --moved "
                "(files are matched by their path inside it); otherwise use another --db."
            )
        self._set_meta(root=str(root))

    def _forget_face_crops(self) -> None:
        """Drop the files of face-crop size whose faces were cut out again (no stored face is the
        whole picture), so this update indexes them as new files; then the index is of this format."""
        rows = self._connection.execute(
            "SELECT id, width, height FROM files WHERE NOT EXISTS (SELECT 1 FROM faces WHERE "
            "faces.file_id = files.id AND x = 0 AND y = 0 AND w = files.width AND h = files.height)"
        ).fetchall()
        crops = [file_id for file_id, width, height in rows if crop_sized(width, height)]
        faces = self._face_ids_of(crops)
        with self._connection as db:
            db.executemany("DELETE FROM files WHERE id = ?", [(file_id,) for file_id in crops])
            db.execute("INSERT OR REPLACE INTO meta VALUES ('format_version', ?)", (str(FORMAT_VERSION),))
        if faces:
            self._vectors.remove(np.array(faces, np.uint64))
            self._vectors_changed = True

    def _index_files(self, root: Path, summary: UpdateSummary, progress: bool) -> None:
        on_disk = {path.relative_to(root).as_posix(): path for path in list_images(root)}
        summary.files = len(on_disk)
        stored = {
            row[1]: _Stored(*row)
            for row in self._connection.execute("SELECT id, path, size, mtime_ns, sha256, embedder FROM files")
        }
        known_unreadable = {
            row[0]: row[1:] for row in self._connection.execute("SELECT path, size, mtime_ns, error FROM unreadable")
        }
        gone: dict[str, list[_Stored]] = {}
        for path, row in stored.items():
            if path not in on_disk:
                gone.setdefault(row.sha256, []).append(row)
        todo = []
        for relative, path in on_disk.items():
            try:
                relative.encode("utf-8")
                status = path.stat()
            except (UnicodeError, OSError) as exc:
                summary.unreadable.append(f"{relative!r}: {exc}")
                continue
            row, stat = stored.get(relative), (status.st_size, status.st_mtime_ns)
            if row and (row.size, row.mtime_ns, row.embedder) == (*stat, self.embedder_id):
                summary.unchanged += 1
            elif known_unreadable.get(relative, ())[:2] == stat:  # still the same unreadable file
                summary.unreadable.append(f"{relative}: {known_unreadable[relative][2]}")
            else:
                todo.append((relative, path, status, row))
        batch = _Batch()
        for relative, path, status, row in tqdm(todo, desc="indexing", unit="file", disable=not (progress and todo)):
            self._read(relative, path, status, row, gone, batch, summary)
            if len(batch) >= FILES_PER_COMMIT:
                self._write(batch, summary)
                batch = _Batch()
        self._write(batch, summary)
        self._drop_missing(on_disk, gone, summary)

    def _read(
        self,
        relative: str,
        path: Path,
        status: os.stat_result,
        row: _Stored | None,
        gone: dict[str, list[_Stored]],
        batch: _Batch,
        summary: UpdateSummary,
    ) -> None:
        """Decide what `path` needs and do the reading part of it into `batch`."""
        size, mtime_ns = status.st_size, status.st_mtime_ns
        try:
            with summary.timing("hash"), path.open("rb") as file:
                sha256 = hashlib.file_digest(file, "sha256").hexdigest()
        except OSError as exc:
            error = f"cannot read ({exc.strerror or exc})"
            batch.unreadable.append((relative, size, mtime_ns, error, row.id if row else None))
            return
        moved = row is None and bool(gone.get(sha256))
        if moved:
            row = gone[sha256].pop()  # moved or renamed: same content, new path
            summary.moved += 1
        same_content = row is not None and row.sha256 == sha256
        if same_content and row.embedder == self.embedder_id:
            summary.unchanged += not moved  # touched, or copied back: only the stored stat changes
            batch.touched.append((relative, size, mtime_ns, row.id))
            return
        try:
            with summary.timing("decode"):
                picture = self.recognizer.load(path)
        except ImageError as exc:
            batch.unreadable.append((relative, size, mtime_ns, str(exc), row.id if row else None))
            return
        if same_content:
            with summary.timing("embed"):
                cuts = cuts_of(picture, self._stored_faces(row.id))
            summary.reembedded += 1
        else:
            with summary.timing("detect"):
                cuts = self.recognizer.cuts_to_name(picture)
            if row is None:
                summary.added += 1
            else:
                summary.changed += 1
        batch.pictures.append(
            _Picture(relative, size, mtime_ns, sha256, picture.width, picture.height, cuts, row.id if row else None)
        )

    def _stored_faces(self, file_id: int) -> list[DetectedFace]:
        """The detected faces of a file as stored (none: the whole picture was embedded)."""
        rows = self._connection.execute(
            "SELECT x, y, w, h, detector_score, angle FROM faces WHERE file_id = ? AND NOT fallback ORDER BY id",
            (file_id,),
        )
        return [DetectedFace(box=(x, y, w, h), score=score, angle=angle) for x, y, w, h, score, angle in rows]

    def _write(self, batch: _Batch, summary: UpdateSummary) -> None:
        """Embed and classify the batch's crops, then commit it in one transaction; the vector
        index follows only after the commit succeeded."""
        with summary.timing("embed"):
            vectors = self.recognizer.embed([cut for p in batch.pictures for cut in p.cuts])
            predictions = self.recognizer.classify(vectors, top_k=1)
        with summary.timing("write"):
            replaced = [p.replaces for p in batch.pictures if p.replaces] + [u[4] for u in batch.unreadable if u[4]]
            old_faces = self._face_ids_of(replaced)
            new_faces: list[int] = []
            with self._connection as db:
                db.executemany("UPDATE files SET path = ?, size = ?, mtime_ns = ? WHERE id = ?", batch.touched)
                db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in replaced])
                at = 0
                for picture in batch.pictures:
                    file_id = db.execute(
                        "INSERT INTO files (path, size, mtime_ns, sha256, width, height, embedder) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            picture.path,
                            picture.size,
                            picture.mtime_ns,
                            picture.sha256,
                            picture.width,
                            picture.height,
                            self.embedder_id,
                        ),
                    ).lastrowid
                    for cut in picture.cuts:
                        new_faces.append(self._insert_face(db, file_id, cut, vectors[at], predictions[at]))
                        at += 1
                written = [(p.path,) for p in batch.pictures] + [(t[0],) for t in batch.touched]
                db.executemany("DELETE FROM unreadable WHERE path = ?", written)
                db.executemany(
                    "INSERT OR REPLACE INTO unreadable VALUES (?, ?, ?, ?)", [u[:4] for u in batch.unreadable]
                )
            if old_faces:
                self._vectors.remove(np.array(old_faces, np.uint64))
            if new_faces:
                self._vectors.add(np.array(new_faces, np.uint64), vectors)
            self._vectors_changed |= bool(old_faces or new_faces)
        summary.faces += len(new_faces)
        summary.unreadable += [f"{u[0]}: {u[3]}" for u in batch.unreadable]

    @staticmethod
    def _insert_face(
        db: sqlite3.Connection,
        file_id: int,
        cut: FaceCut,
        vector: np.ndarray,
        prediction: Prediction,
    ) -> int:
        return db.execute(
            "INSERT INTO faces (file_id, x, y, w, h, detector_score, angle, fallback, label, confidence, "
            "similarity, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                file_id,
                *cut.box,
                cut.score,
                cut.angle,
                cut.fallback,
                prediction.label,
                prediction.confidence,
                prediction.similarity,
                vector.astype(np.float16).tobytes(),
            ),
        ).lastrowid

    def _face_ids_of(self, file_ids: list[int]) -> list[int]:
        found: list[int] = []
        for ids in _chunks(file_ids, _SQL_CHUNK):
            marks = ",".join("?" * len(ids))
            found += [r[0] for r in self._connection.execute(f"SELECT id FROM faces WHERE file_id IN ({marks})", ids)]
        return found

    def _drop_missing(self, on_disk: dict[str, Path], gone: dict[str, list[_Stored]], summary: UpdateSummary) -> None:
        """Forget files no longer under the root (those not found again under another path)."""
        removed = [row.id for rows in gone.values() for row in rows]
        faces = self._face_ids_of(removed)
        with self._connection as db:
            db.executemany("DELETE FROM files WHERE id = ?", [(i,) for i in removed])
            listed = [row[0] for row in db.execute("SELECT path FROM unreadable")]
            db.executemany("DELETE FROM unreadable WHERE path = ?", [(p,) for p in listed if p not in on_disk])
        if faces:
            self._vectors.remove(np.array(faces, np.uint64))
            self._vectors_changed = True
        summary.removed = len(removed)

    # Labels ----------------------------------------------------------------------------------

    def relabel(self) -> int:
        """Recompute every face's label with the model's classifier (after enroll or forget),
        from the stored embeddings: nothing is detected or embedded again. Returns faces done."""
        self._require_same_embedder()
        with locked(self.path / DATABASE):
            return self._relabel()

    def _relabel(self) -> int:
        done = 0
        with self._connection as db:
            rows = db.execute(f"SELECT faces.id, embedding {_CURRENT_FACES}", (self.embedder_id,))
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
            yield from (_face(row) for row in self._connection.execute(f"SELECT {_FACE_COLUMNS} {query}", parameters))
            return
        rows = self._connection.execute(f"SELECT {_FACE_COLUMNS}, embedding {query}", parameters)
        for labelled in self._labelled(rows):
            for row, p in labelled:
                yield replace(_face(row[:-1]), label=p.label, confidence=p.confidence, similarity=p.similarity)

    def _labelled(self, rows: sqlite3.Cursor) -> Iterator[list[tuple[tuple, Prediction]]]:
        """`rows` (the stored embedding last) in chunks, each row with this model's prediction."""
        while chunk := rows.fetchmany(65536):
            predictions = self.recognizer.classify(self._decode([row[-1] for row in chunk]), top_k=1)
            yield list(zip(chunk, predictions))

    # Queries ---------------------------------------------------------------------------------

    def find(self, label: str, min_confidence: float = 0.0) -> list[IndexedFace]:
        """Every face labelled `label`, by path (labels follow this model's current gallery)."""
        stale = self._labels_stale()
        if stale:  # labels are computed as the faces are read
            where, parameters = "", (self.embedder_id,)
        else:
            where, parameters = " AND label = ? AND confidence >= ?", (self.embedder_id, label, min_confidence)
        faces = self._select_faces(f"{_CURRENT_FACES}{where} ORDER BY files.path, faces.id", parameters, stale)
        return [face for face in faces if face.label == label and face.confidence >= min_confidence]

    def faces_of(self, path: str) -> list[IndexedFace]:
        """The indexed faces of one picture (`path` relative to the root, with forward slashes)."""
        query = f"{_CURRENT_FACES} AND files.path = ? ORDER BY faces.id"
        return list(self._select_faces(query, (self.embedder_id, path), self._labels_stale()))

    def search(self, image: ImageSource, top_k: int = 10) -> list[QueryFace]:
        """The faces of the collection most similar to each face of `image` (a face crop is used
        as it is, see `Recognizer.cuts_to_name`; a picture without a face found is used whole, marked
        `fallback`)."""
        self._require_same_embedder()
        cuts = self.recognizer.cuts_to_name(self.recognizer.load(image))  # as `update` cut the collection
        hits = self.search_vectors(self.recognizer.embed(cuts), top_k)
        return [QueryFace(cut.box, cut.fallback, face_hits) for cut, face_hits in zip(cuts, hits)]

    def search_vectors(self, vectors: np.ndarray, top_k: int = 10) -> list[list[SearchHit]]:
        """For each embedding, the `top_k` most similar faces of the collection, best first (with
        labels from this model's current gallery)."""
        stale = self._labels_stale()
        if len(self._vectors) == 0 or len(vectors) == 0:
            return [[] for _ in vectors]
        queries = np.asarray(vectors, np.float32).reshape(len(vectors), -1)
        matches = _match_rows(self._vectors.search(queries, top_k, exact=len(self._vectors) <= EXACT_UP_TO))
        ids = sorted({int(k) for keys, _ in matches for k in keys})
        faces = {face.face_id: face for face in self._faces_by_id(ids, stale)}
        return [
            [SearchHit(faces[int(k)], 1.0 - float(d)) for k, d in zip(keys, distances) if int(k) in faces]
            for keys, distances in matches
        ]

    def _faces_by_id(self, ids: list[int], stale: bool) -> Iterable[IndexedFace]:
        for chunk in _chunks(ids, _SQL_CHUNK):
            marks = ",".join("?" * len(chunk))
            yield from self._select_faces(f"{_FACES} WHERE faces.id IN ({marks})", chunk, stale)

    def stats(self) -> dict:
        """Counts of files, faces and labels, and how many files still wait for re-embedding."""
        count = self._connection.execute
        embedder = self._meta("embedder")
        labels = count(
            f"SELECT label, COUNT(*) {_CURRENT_FACES} AND label IS NOT NULL GROUP BY label ORDER BY 2 DESC", (embedder,)
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

    def _decode(self, blobs: list[bytes]) -> np.ndarray:
        vectors = np.frombuffer(b"".join(blobs), np.float16).reshape(len(blobs), self.dim).astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _empty_vectors(dim: int):
    try:
        from usearch.index import Index
    except ImportError as exc:
        raise KyaraError(f"the collection index needs the index extra: pip install 'kyara[index]' ({exc})") from exc
    return Index(ndim=dim, metric="cos", dtype="f16")


def _classifier_id(recognizer: Recognizer) -> str:
    """Changes whenever a label would: new gallery, head, threshold or temperature."""
    classifier = recognizer.classifier
    digest = hashlib.sha256(repr((classifier.labels, classifier.temperature, classifier.unknown_threshold)).encode())
    digest.update(np.ascontiguousarray(classifier.prototypes).tobytes())
    return digest.hexdigest()


def _face(row: tuple) -> IndexedFace:
    face_id, path, x, y, w, h, score, angle, fallback, label, confidence, similarity = row
    return IndexedFace(face_id, path, (x, y, w, h), score, angle, bool(fallback), label, confidence, similarity)


def _match_rows(matches) -> list[tuple[np.ndarray, np.ndarray]]:
    """(keys, cosine distances) per query, from usearch's one-query or many-query answer."""
    if hasattr(matches, "counts"):
        return [(k[:n], d[:n]) for k, d, n in zip(matches.keys, matches.distances, matches.counts)]
    return [(matches.keys, matches.distances)]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
