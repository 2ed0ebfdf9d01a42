"""Bringing an index up to date with its folder: new, changed, moved and removed files, committed
a few files at a time so that a killed run goes on where it stopped."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kyara.classify import Prediction
from kyara.cut import crop_sized
from kyara.detection import DetectedFace
from kyara.errors import KyaraError
from kyara.gallery import locked
from kyara.imageio import check_utf8, list_images, resolved
from kyara.index.labels import LabelledStore
from kyara.index.store import DATABASE, FORMAT_VERSION, SHARDS
from kyara.index.work import Engine, FaceFound, InThreads, Job, MovedContents, Outcome, timed

FILES_PER_COMMIT = 16
"""Outcomes committed at once: a killed run loses the work of at most this many files, plus the
few that workers had under way."""


@dataclass
class UpdateSummary:
    """What one `update` did. `seconds` says where the time went, summed over the workers (and
    including the work of a dead Ray run's shards merged by this one)."""

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

    def timing(self, stage: str) -> contextlib.AbstractContextManager[None]:
        return timed(self.seconds, stage)


STORED_FILES = "SELECT id, path, size, mtime_ns, sha256, embedder FROM files"
"""The rows of `files` as `_Stored` reads them."""


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
    """A file's faces and their vectors, ready to write."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    faces: list[FaceFound]
    vectors: np.ndarray
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
        self,
        root: str | os.PathLike,
        reembed: bool = False,
        moved: bool = False,
        progress: bool = True,
        engine: Engine | None = None,
    ) -> UpdateSummary:
        """Bring the index up to date with the pictures under `root`: index new and changed files,
        drop removed ones, skip unchanged ones. `reembed`: adopt this model's embedder (see module
        docstring). `moved`: `root` is the indexed collection, moved to a new place. `engine`: what
        does the pictures' work (default: threads of this process, one per core; a Ray cluster:
        `kyara.index.distributed.OnRay`)."""
        engine = engine or InThreads()
        root = resolved(root)
        if not root.is_dir():
            raise KyaraError(f"{root}: not a folder")
        check_utf8(root)  # stored as text in the database
        summary = UpdateSummary()
        with locked(self.path / DATABASE):
            if reembed and self._meta("embedder") != self.embedder_id:
                self._set_meta(
                    embedder=self.embedder_id, model=self.recognizer.name, precision=self.recognizer.precision
                )
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
                self._index_files(root, summary, progress, engine)
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

    def _index_files(self, root: Path, summary: UpdateSummary, progress: bool, engine: Engine) -> None:
        on_disk = {path.relative_to(root).as_posix(): path for path in list_images(root)}
        summary.files = len(on_disk)
        merged = self._merge_leftovers(on_disk, summary)
        stored = {row[1]: _Stored(*row) for row in self._connection.execute(STORED_FILES)}
        known_unreadable = {
            row[0]: row[1:] for row in self._connection.execute("SELECT path, size, mtime_ns, error FROM unreadable")
        }
        gone: dict[str, list[_Stored]] = {}
        for path, row in stored.items():
            if path not in on_disk:
                gone.setdefault(row.sha256, []).append(row)
        jobs = []
        for relative, path in on_disk.items():
            try:
                relative.encode("utf-8")
                status = path.stat()
            except (UnicodeError, OSError) as exc:
                summary.unreadable.append(f"{relative!r}: {exc}")
                continue
            row, stat = stored.get(relative), (status.st_size, status.st_mtime_ns)
            if row and (row.size, row.mtime_ns, row.embedder) == (*stat, self.embedder_id):
                summary.unchanged += relative not in merged
            elif known_unreadable.get(relative, ())[:2] == stat:  # still the same unreadable file
                summary.unreadable.append(f"{relative}: {known_unreadable[relative][2]}")
            else:
                jobs.append(self._job(relative, path, status, row))
        planned = {job.relative: job for job in jobs}
        retry: list[Job] = []
        shards = self.path.resolve() / SHARDS  # workers elsewhere know no working directory
        with tqdm(total=len(jobs), desc="indexing", unit="file", disable=not (progress and jobs)) as bar:
            for outcomes in engine.run(self.recognizer, self._moved(gone), jobs, FILES_PER_COMMIT, shards):
                self._write_outcomes(outcomes, stored, gone, summary, retry, planned)
                bar.update(len(outcomes))
            # Copies of one moved file's content: the first took its stored faces, these need work.
            for outcomes in InThreads(1).run(self.recognizer, {}, retry, FILES_PER_COMMIT, shards):
                self._write_outcomes(outcomes, stored, gone, summary, [], planned)
        self._drop_missing(on_disk, gone, summary)

    def _moved(self, gone: dict[str, list[_Stored]]) -> MovedContents:
        """What a new path with the content of a gone file needs (`kyara.index.work.MovedContents`)."""
        moved: dict[str, tuple[DetectedFace, ...] | None] = {}
        for sha256, rows in gone.items():
            current = any(row.embedder == self.embedder_id for row in rows)
            moved[sha256] = None if current else tuple(self._stored_faces(rows[0].id))
        return moved

    def _merge_leftovers(self, on_disk: dict[str, Path], summary: UpdateSummary) -> set[str]:
        """Write what a Ray run that died left computed (its shards), for the files still as they
        were then and not written since; returns their paths."""
        merged: set[str] = set()
        if not (self.path / SHARDS).is_dir():
            return merged
        from kyara.index.distributed import leftover_outcomes

        for outcomes in leftover_outcomes(self.path / SHARDS, self.embedder_id):
            stored = {o.relative: row for o in outcomes if (row := self._stored_row(o.relative))}
            fresh = [
                outcome
                for outcome in outcomes
                if outcome.computed
                and _still_as_computed(on_disk.get(outcome.relative), outcome)
                and not _written(stored.get(outcome.relative), outcome, self.embedder_id)
            ]
            self._write_outcomes(fresh, stored, {}, summary, [], {})
            merged.update(outcome.relative for outcome in fresh)
        return merged

    def _stored_row(self, relative: str) -> _Stored | None:
        row = self._connection.execute(f"{STORED_FILES} WHERE path = ?", (relative,)).fetchone()
        return _Stored(*row) if row else None

    def _write_outcomes(
        self,
        outcomes: list[Outcome],
        stored: dict[str, _Stored],
        gone: dict[str, list[_Stored]],
        summary: UpdateSummary,
        retry: list[Job],
        planned: dict[str, Job],
    ) -> None:
        """Write one batch of outcomes in one transaction; the jobs of those that need work done
        again go to `retry`."""
        batch = _Batch()
        for outcome in outcomes:
            if not self._take(outcome, stored.get(outcome.relative), gone, batch, summary):
                retry.append(planned[outcome.relative])
        self._write(batch, summary)

    def _job(self, relative: str, path: Path, status: os.stat_result, row: _Stored | None) -> Job:
        stale = row is not None and row.embedder != self.embedder_id
        return Job(
            relative,
            str(path),
            status.st_size,
            status.st_mtime_ns,
            row.sha256 if row else None,
            tuple(self._stored_faces(row.id)) if stale else None,
        )

    def _take(
        self,
        outcome: Outcome,
        row: _Stored | None,
        gone: dict[str, list[_Stored]],
        batch: _Batch,
        summary: UpdateSummary,
    ) -> bool:
        """Put what a job gave into `batch`; False if it must be done again without the moved-file
        shortcut (another new copy of the gone file's content took its stored faces)."""
        for stage, seconds in outcome.seconds.items():
            summary.seconds[stage] += seconds
        relative, size, mtime_ns = outcome.relative, outcome.size, outcome.mtime_ns
        if outcome.error is not None:
            batch.unreadable.append((relative, size, mtime_ns, outcome.error, row.id if row else None))
            return True
        moved = False
        if row is None and gone.get(outcome.sha256):  # moved or renamed: same content, new path
            row = self._claim(gone[outcome.sha256], current=not outcome.computed)
            moved = row is not None
        if not outcome.computed and (row is None or row.sha256 != outcome.sha256):
            return False
        summary.moved += moved
        if not outcome.computed:
            summary.unchanged += not moved  # touched, or copied back: only the stored stat changes
            batch.touched.append((relative, size, mtime_ns, row.id))
            return True
        if outcome.reembedded:
            summary.reembedded += 1
        elif row is None:
            summary.added += 1
        elif not moved:
            summary.changed += 1
        batch.pictures.append(
            _Picture(
                relative,
                size,
                mtime_ns,
                outcome.sha256,
                outcome.width,
                outcome.height,
                outcome.faces,
                outcome.vectors,
                row.id if row else None,
            )
        )
        return True

    def _claim(self, rows: list[_Stored], current: bool) -> _Stored | None:
        """Take one of the gone files of a content: one embedded with this model's embedder if
        `current` (the outcome did no work), else preferably one that is not (the outcome embedded
        its stored faces again), else any."""
        for at, row in enumerate(rows):
            if (row.embedder == self.embedder_id) == current:
                return rows.pop(at)
        return None if current or not rows else rows.pop()

    def _stored_faces(self, file_id: int) -> list[DetectedFace]:
        """The detected faces of a file as stored (none: the whole picture was embedded)."""
        rows = self._connection.execute(
            "SELECT x, y, w, h, detector_score, angle FROM faces WHERE file_id = ? AND NOT fallback ORDER BY id",
            (file_id,),
        )
        return [DetectedFace(box=(x, y, w, h), score=score, angle=angle) for x, y, w, h, score, angle in rows]

    def _write(self, batch: _Batch, summary: UpdateSummary) -> None:
        """Classify the batch's faces, then commit it in one transaction; the vector index follows
        only after the commit succeeded."""
        vectors = np.concatenate([p.vectors for p in batch.pictures] or [np.zeros((0, self.dim), np.float32)])
        with summary.timing("write"):
            gray = np.array([face.gray for p in batch.pictures for face in p.faces], bool)
            predictions = self.recognizer.classify(vectors, top_k=1, gray=gray)
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
                    for face in picture.faces:
                        new_faces.append(self._insert_face(db, file_id, face, vectors[at], predictions[at]))
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
        summary.faces += len(new_faces)
        summary.unreadable += [f"{u[0]}: {u[3]}" for u in batch.unreadable]

    @staticmethod
    def _insert_face(
        db: sqlite3.Connection,
        file_id: int,
        face: FaceFound,
        vector: np.ndarray,
        prediction: Prediction,
    ) -> int:
        return db.execute(
            "INSERT INTO faces (file_id, x, y, w, h, detector_score, angle, fallback, gray, label, confidence, "
            "similarity, embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                file_id,
                *face.box,
                face.score,
                face.angle,
                face.fallback,
                face.gray,
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
        summary.removed = len(removed)


def _still_as_computed(path: Path | None, outcome: Outcome) -> bool:
    try:
        status = path.stat() if path else None
    except OSError:
        return False
    return status is not None and (status.st_size, status.st_mtime_ns) == (outcome.size, outcome.mtime_ns)


def _written(row: _Stored | None, outcome: Outcome, embedder: str) -> bool:
    computed = (outcome.size, outcome.mtime_ns, outcome.sha256, embedder)
    return row is not None and (row.size, row.mtime_ns, row.sha256, row.embedder) == computed
