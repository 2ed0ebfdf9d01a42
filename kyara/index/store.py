"""Opening a `.kyaradb` (see `kyara.index`): its schema, the identity of the model it was built
with, and the vector index kept in agreement with SQLite."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import numpy as np

from kyara.errors import KyaraError, PrecisionError
from kyara.gallery import locked
from kyara.imageio import check_utf8
from kyara.index.vectors import ShardedVectors
from kyara.pipeline import Model, Recognizer
from kyara.runtime import FLOAT32

FORMAT_VERSION = 2
"""2: a face crop is one face, the whole picture (`cut.cuts_to_name`). An index of format 1
made before that rule (session 6) cut the face out of face crops again; its next update reads such
files afresh (`IndexUpdates._forget_face_crops`)."""
DATABASE = "collection.sqlite"
SHARDS = "shards"
"""What Ray workers computed and the writer has not yet merged (`kyara.index.distributed`)."""
SQL_CHUNK = 500
"""Ids per `IN (...)` query: far below SQLite's limit on bound parameters."""

SCHEMA = """
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
    gray INTEGER NOT NULL DEFAULT 0,
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
TABLES = ("meta", "files", "faces", "unreadable")
"""The tables SCHEMA makes: an index without one of them is damaged."""

# AUTOINCREMENT: a face id is never reused, so a vector left behind by a killed run can never be
# taken for another face's.

FACE_COLUMNS = "faces.id, files.path, x, y, w, h, detector_score, angle, fallback, label, confidence, similarity"
FACES = "FROM faces JOIN files ON files.id = faces.file_id"
CURRENT_FACES = f"{FACES} WHERE files.embedder = ?"
"""Faces embedded with a given embedder (the only ones in the vector index)."""


class IndexStore:
    """The two stores of one `.kyaradb`, opened with one model."""

    def __init__(self, db: str | os.PathLike, recognizer: Recognizer, create: bool = False) -> None:
        self.path = Path(db).expanduser()
        self.recognizer = recognizer
        self.embedder_id = embedder_id(recognizer)
        self.classifier_id = _classifier_id(recognizer)
        self.dim = recognizer.embedder.dim
        self._connection = self._connect(create)
        # "0" in a read-only index made before faces were marked gray, which cannot be changed
        self.gray_column = "gray" if _has_gray_column(self._connection) else "0"
        try:
            self._check_format()
            self._vectors = ShardedVectors(self.dim)
            if self._meta("embedder") == self.embedder_id:
                self._load_vectors()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls, db: str | os.PathLike, model: Model = None, create: bool = False, precision: str | None = None
    ) -> Self:
        """The index at `db` with `model` (default: the user's copy of the model or the built-in),
        run at `precision` (default: the one the index was made with, else float32)."""
        if isinstance(model, Recognizer):
            if precision is not None and precision != model.precision:
                raise KyaraError(f"the recognizer runs at {model.precision}, not at the {precision} asked for")
            return cls(db, model, create)
        stored = stored_precision(db)
        try:
            recognizer = Recognizer(model, precision=precision or stored or FLOAT32)
        except PrecisionError as exc:
            if precision is not None or stored in (None, FLOAT32):
                raise
            raise KyaraError(
                f"{db} was indexed at {stored}, and {exc}. To use this model, re-embed it: "
                f"`kyara index FOLDER --db {db} --reembed --precision {FLOAT32}`"
            ) from exc
        return cls(db, recognizer, create)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def root(self) -> Path | None:
        stored = self._meta("root")
        return Path(stored) if stored else None

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
        if not create and not os.access(self.path, os.W_OK):
            return self._connect_read_only(database)
        try:
            connection = sqlite3.connect(database, timeout=60)
        except sqlite3.DatabaseError as exc:
            raise KyaraError(f"{database}: not a usable collection database ({exc})") from exc
        try:
            self._check_tables(connection, database, create)
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA journal_mode = WAL")  # readers (find, search) never wait for `index`
            connection.executescript(SCHEMA)
            if not _has_gray_column(connection):  # an index made before faces were marked gray: they count as colour
                connection.execute("ALTER TABLE faces ADD COLUMN gray INTEGER NOT NULL DEFAULT 0")
        except sqlite3.DatabaseError as exc:
            connection.close()
            raise KyaraError(f"{database}: not a usable collection database ({exc})") from exc
        except KyaraError:
            connection.close()
            raise
        return connection

    def _connect_read_only(self, database: Path) -> sqlite3.Connection:
        """An index on a read-only mount or folder: read as it is (SQLite could not make its WAL files)."""
        try:
            connection = sqlite3.connect(f"{database.resolve().as_uri()}?immutable=1", uri=True)
            self._check_tables(connection, database, create=False)
        except sqlite3.DatabaseError as exc:
            raise KyaraError(f"{database}: not a usable collection database ({exc})") from exc
        return connection

    @staticmethod
    def _check_tables(connection: sqlite3.Connection, database: Path, create: bool) -> None:
        """An index whose tables went missing (an emptied file, a dropped table) must not pass for an
        empty collection: that would answer every query with nothing."""
        present = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = sorted(set(TABLES) - present)
        if missing and (present or not create):
            raise KyaraError(
                f"{database}: a damaged collection index (no {', '.join(missing)} table); remove the folder "
                "and make it again with `kyara index FOLDER --db ...`"
            )

    def _check_format(self) -> None:
        version = self._meta("format_version")
        if version is not None and not (version.isdigit() and int(version) <= FORMAT_VERSION):
            raise KyaraError(f"{self.path}: made by a newer kyara (index format {version}); upgrade kyara to use it")
        if self._meta("embedder") is None:
            self._set_meta(
                format_version=str(FORMAT_VERSION),
                embedder=self.embedder_id,
                model=self.recognizer.name,
                precision=self.recognizer.precision,
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
            # The command given must name this precision: without it, the index's own would be taken.
            asked = self.recognizer.precision
            precision = f" --precision {asked}" if asked != recorded_precision(self._connection) else ""
            raise KyaraError(
                f"{self.path} was indexed with another embedder (model {self._meta('model')!r}), whose vectors "
                f"cannot be compared with those of {self.recognizer.name!r}. Re-embed it with "
                f"`kyara index {self.root or 'FOLDER'} --db {self.path} --reembed{precision}` (faces are cut again "
                "from the stored boxes; nothing is detected again), or pass the model it was built with "
                "(--model, --precision)."
            )

    def _load_vectors(self) -> None:
        """Read the vector shards, then make them agree with SQLite (see the module docstring)."""
        self._vectors = ShardedVectors.restore(self.path, self.dim)
        rows = self._connection.execute(f"SELECT faces.id {CURRENT_FACES}", (self.embedder_id,))
        wanted = np.fromiter((row[0] for row in rows), np.uint64)
        present = self._vectors.keys()
        extra = np.setdiff1d(present, wanted)
        missing = np.setdiff1d(wanted, present)
        if len(extra):
            self._vectors.remove(extra)
        for ids in chunks(missing.tolist(), SQL_CHUNK):
            marks = ",".join("?" * len(ids))
            rows = self._connection.execute(f"SELECT id, embedding FROM faces WHERE id IN ({marks})", ids).fetchall()
            self._vectors.add(np.array([r[0] for r in rows], np.uint64), self._decode([r[1] for r in rows]))
        # A rebuilt shard is written back by the next writer (`update`, `save_vectors`).

    def save_vectors(self) -> None:
        """Write the vector shards now. `update` does it itself; opening an index whose vector
        files were missing or stale only rebuilds them in memory, and this keeps the rebuilt ones."""
        with locked(self.path / DATABASE):
            self._save_vectors()

    def _save_vectors(self) -> None:
        self._vectors.save(self.path)

    def _face_ids_of(self, file_ids: list[int]) -> list[int]:
        found: list[int] = []
        for ids in chunks(file_ids, SQL_CHUNK):
            marks = ",".join("?" * len(ids))
            found += [r[0] for r in self._connection.execute(f"SELECT id FROM faces WHERE file_id IN ({marks})", ids)]
        return found

    def _decode(self, blobs: list[bytes]) -> np.ndarray:
        vectors = np.frombuffer(b"".join(blobs), np.float16).reshape(len(blobs), self.dim).astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _has_gray_column(connection: sqlite3.Connection) -> bool:
    return any(row[1] == "gray" for row in connection.execute("PRAGMA table_info(faces)"))


def embedder_id(recognizer: Recognizer) -> str:
    """The identity of a recognizer's embedder: vectors of two embedders cannot be compared (the
    float and the 8-bit one of a model are two embedders)."""
    return hashlib.sha256(recognizer.embedder_weights).hexdigest()


def stored_precision(db: str | os.PathLike) -> str | None:
    """The precision the index at `db` was made with (`recorded_precision`); None where there is
    no index to read (opening it says what is wrong)."""
    database = Path(db).expanduser() / DATABASE
    if not database.is_file():
        return None
    for how in ("mode=ro", "immutable=1"):  # a read-only folder has no room for the WAL's index: immutable
        try:
            with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?{how}", uri=True)) as connection:
                return recorded_precision(connection)
        except sqlite3.Error:
            continue
    return None


def recorded_precision(connection: sqlite3.Connection) -> str:
    """The precision an open index records; float32 for indexes made before kyara had another."""
    row = connection.execute("SELECT value FROM meta WHERE key = 'precision'").fetchone()
    return row[0] if row else FLOAT32


def _classifier_id(recognizer: Recognizer) -> str:
    """Changes whenever a label would: new gallery, head, threshold or temperature."""
    classifier = recognizer.classifier
    digest = hashlib.sha256(repr((classifier.labels, classifier.temperature, classifier.unknown_threshold)).encode())
    digest.update(np.ascontiguousarray(classifier.prototypes).tobytes())
    if classifier.typical.any():  # models without typical similarities keep the id they had
        digest.update(np.ascontiguousarray(classifier.typical).tobytes())
    return digest.hexdigest()


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
