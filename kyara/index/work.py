"""The work one picture needs before it goes into an index: hash, decode, detect, cut and embed.

`PictureWork` does it for one file. It is a function of the file and the model only, so it runs
wherever the pictures are: in threads on one machine (`run_in_threads`) or in Ray actors on a
cluster (`kyara.index.distributed`). What it gives back, an `Outcome`, is plain data (boxes and
vectors, no pixels); what an outcome means for the database is the writer's business
(`kyara.index.update`), which alone touches it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from kyara.cut import cuts_of
from kyara.detection import DetectedFace
from kyara.errors import ImageError
from kyara.pipeline import Recognizer

STAGES = ("hash", "decode", "detect", "embed")
"""Where a picture's work goes, timed per outcome (`Outcome.seconds`)."""


@dataclass(frozen=True)
class Job:
    """A file to look at. `stored_sha256`: the content the index holds for this path (the same
    content needs no work); `stored_faces`: the faces to embed again if the content is still that
    one (the index is adopting a new embedder), None to detect afresh."""

    relative: str
    path: str
    size: int
    mtime_ns: int
    stored_sha256: str | None = None
    stored_faces: tuple[DetectedFace, ...] | None = None


@dataclass(frozen=True)
class FaceFound:
    """A face as the index stores it: where, how face-like, its tilt, whether it is the whole
    picture standing in for a face that was not found, and whether it is drawn in gray (it is
    named against gray prototypes: `kyara.cut.FaceCut.gray`)."""

    box: tuple[int, int, int, int]
    score: float
    angle: float
    fallback: bool
    gray: bool = False


@dataclass
class Outcome:
    """What a job gave: the file's content hash and either an error, no work (`computed` is False:
    the index holds this content already), or its faces with one unit vector each (`vectors`)."""

    relative: str
    size: int
    mtime_ns: int
    sha256: str = ""
    error: str | None = None
    width: int = 0
    height: int = 0
    faces: list[FaceFound] = field(default_factory=list)
    vectors: np.ndarray | None = None
    reembedded: bool = False
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def computed(self) -> bool:
        return self.vectors is not None


MovedContents = Mapping[str, tuple[DetectedFace, ...] | None]
"""Contents (SHA-256) the index holds under paths that are gone: a new path with one of them is a
moved file. None: its faces are embedded with the current embedder, no work; else its stored faces,
to embed again (the index is adopting a new embedder)."""


class PictureWork:
    """Does a job with `recognizer`; `moved`: see `MovedContents`."""

    def __init__(self, recognizer: Recognizer, moved: MovedContents | None = None) -> None:
        self.recognizer = recognizer
        self.moved = moved or {}

    def __call__(self, job: Job) -> Outcome:
        outcome = Outcome(job.relative, job.size, job.mtime_ns)
        seconds = outcome.seconds
        try:
            with timed(seconds, "hash"), open(job.path, "rb") as file:
                outcome.sha256 = hashlib.file_digest(file, "sha256").hexdigest()
        except OSError as exc:
            outcome.error = f"cannot read ({exc.strerror or exc})"
            return outcome
        known, stored_faces = outcome.sha256 == job.stored_sha256, job.stored_faces
        if job.stored_sha256 is None and outcome.sha256 in self.moved:
            known, stored_faces = True, self.moved[outcome.sha256]
        if known and stored_faces is None:
            return outcome  # the index holds this content, embedded as this model would
        try:
            with timed(seconds, "decode"):
                picture = self.recognizer.load(job.path)
        except ImageError as exc:
            outcome.error = str(exc)
            return outcome
        outcome.width, outcome.height = picture.size
        outcome.reembedded = known and stored_faces is not None
        if outcome.reembedded:
            with timed(seconds, "embed"):
                cuts = cuts_of(picture, list(stored_faces or ()))
        else:
            with timed(seconds, "detect"):
                cuts = self.recognizer.cuts_to_name(picture)
        with timed(seconds, "embed"):
            outcome.vectors = self.recognizer.embed(cuts)
        outcome.faces = [FaceFound(cut.box, cut.score, cut.angle, cut.fallback, cut.gray) for cut in cuts]
        return outcome


@contextlib.contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the time the block takes to `seconds[stage]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] += time.perf_counter() - started


class Engine(Protocol):
    """What does the pictures' work of an index update: threads here (`InThreads`) or a Ray
    cluster (`kyara.index.distributed.OnRay`)."""

    def run(
        self, recognizer: Recognizer, moved: MovedContents, jobs: list[Job], batch: int, shards: Path
    ) -> Iterator[list[Outcome]]:
        """Every job's outcome, in lists the writer commits one at a time (of about `batch`
        outcomes): the next list is asked for once the last one is committed. `shards`: a folder
        of the index for work that must outlive this process (`kyara.index.distributed`)."""
        ...


class InThreads:
    """Pictures worked on by threads of this process, `workers` at once (default: one per core),
    each picture with one inference thread: on networks this small that keeps every core busy,
    where several threads per picture spin more than they compute."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1

    def run(
        self, recognizer: Recognizer, moved: MovedContents, jobs: list[Job], batch: int, shards: Path
    ) -> Iterator[list[Outcome]]:
        threaded = self.workers > 1 and len(jobs) > 1
        work = PictureWork(recognizer.with_threads(1) if threaded else recognizer, moved)
        outcomes = run_in_threads(work, jobs, self.workers if threaded else 1)
        while chunk := list(itertools.islice(outcomes, batch)):
            yield chunk


def run_in_threads(work: PictureWork, jobs: Iterable[Job], workers: int) -> Iterator[Outcome]:
    """`work` on every job, `workers` at a time, outcomes in the jobs' order. ONNX Runtime, Pillow
    and numpy let go of the GIL while they compute, so threads keep the cores busy; a few jobs run
    ahead of the one being handed back, no more, so memory stays that of a few pictures."""
    if workers <= 1:
        yield from map(work, jobs)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="kyara-index")
    pending: deque[Future[Outcome]] = deque()
    try:
        for job in jobs:
            pending.append(pool.submit(work, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
