"""Bringing an index up to date with its folder: new, changed, moved and removed files, committed
a few files at a time so that a killed run goes on where it stopped."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kyara.classify import Prediction
from kyara.cut import FaceCut, crop_sized, cuts_of
from kyara.detection import DetectedFace
from kyara.errors import ImageError, KyaraError
from kyara.gallery import locked
from kyara.imageio import check_utf8, list_images, resolved
from kyara.index.labels import LabelledStore
from kyara.index.store import DATABASE, FORMAT_VERSION

FILES_PER_COMMIT = 16
"""A killed run loses at most this many files of work."""


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


class IndexUpdates(LabelledStore):
    """`update`: the one writer of an index, under its lock."""

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
