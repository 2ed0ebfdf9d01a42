"""`kyara index --ray`: the pictures' work (`kyara.index.work`) spread over a Ray cluster.

The writer (`kyara.index.update`) plans on the machine that holds the index, so only new and
changed files reach the cluster. `OnRay` hands them to Ray Data in chunks; an actor pool of
`PictureWork`s (one recognizer per actor, its ONNX sessions running one thread per CPU the actor
holds) reads, decodes, detects and embeds each picture where the actor runs, so no decoded pixels
cross the network, and writes each batch's outcomes as one Parquet shard (written whole, then
renamed into place, under a name that follows from the batch's files: a batch done twice, by an
actor Ray restarted, writes the same shard). The shards live under `shards`, a folder every node
reaches (the index on a shared filesystem). The writer merges a chunk's shards into SQLite and the
vector index while the cluster works on the next chunk, then deletes them; a run that dies leaves
the shards it wrote, and the next run merges them before it plans (`leftovers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kyara.detection import DetectedFace
from kyara.errors import KyaraError
from kyara.index.store import embedder_id
from kyara.index.work import STAGES, FaceFound, Job, Outcome, PictureWork
from kyara.pipeline import Recognizer

CHUNK = 4096
"""Pictures handed to Ray at once: the writer merges one chunk while the cluster works on the next."""


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise KyaraError("--ray needs Ray: pip install 'kyara[cluster]'") from exc
    return ray


class OnRay:
    """The pictures' work done on the Ray cluster at `address` ("auto": the one this machine
    belongs to, as `ray start` left it; None: a cluster of this machine alone, started here).
    `shards`: the folder for the shards, reachable from every node. `cpus_per_actor`: CPUs (and
    inference threads) per recognizer; `chunk`: pictures handed to Ray at once; `progress`: Ray
    Data's own progress bars and logs (kyara's bar counts the pictures written)."""

    def __init__(
        self,
        shards: str | os.PathLike,
        address: str | None = "auto",
        cpus_per_actor: int = 1,
        chunk: int = CHUNK,
        progress: bool = False,
    ) -> None:
        self.shards = Path(shards)
        self.address = address
        self.cpus_per_actor = cpus_per_actor
        self.chunk = chunk
        self.progress = progress

    def run(
        self, recognizer: Recognizer, movable: frozenset[str], jobs: list[Job], batch: int
    ) -> Iterator[list[Outcome]]:
        if not jobs:
            return
        ray = self._connected()
        work = ray.put(PictureWork(recognizer, movable))
        chunks = [jobs[at : at + self.chunk] for at in range(0, len(jobs), self.chunk)]
        with ThreadPoolExecutor(1, thread_name_prefix="kyara-ray") as ahead:
            computing = ahead.submit(self._compute, work, chunks[0], self._folder(0), batch)
            for number in range(len(chunks)):
                folder = computing.result()
                if number + 1 < len(chunks):
                    computing = ahead.submit(self._compute, work, chunks[number + 1], self._folder(number + 1), batch)
                for shard in _read_shards(folder):
                    yield [outcome for outcome, _ in shard]
                shutil.rmtree(folder)  # asked for more: the writer committed all of it

    def leftovers(self, embedder: str) -> Iterator[list[Outcome]]:
        for folder in sorted(self.shards.glob("chunk-*")) if self.shards.is_dir() else []:
            for outcomes in _read_shards(folder):
                yield [outcome for outcome, made_by in outcomes if made_by == embedder]
            shutil.rmtree(folder)

    def _folder(self, number: int) -> Path:
        return self.shards / f"chunk-{number:06d}"

    def _connected(self):
        ray = _ray()
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=self.progress)
            except ConnectionError as exc:
                raise KyaraError(
                    f"no Ray cluster at {self.address!r} ({exc}): start one with `ray start --head`"
                ) from exc
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = self.progress
        if not self.progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        return ray

    def _compute(self, work, jobs: list[Job], folder: Path, batch: int) -> Path:
        ray = _ray()
        folder.mkdir(parents=True, exist_ok=True)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        rows = [_job_row(job) for job in jobs]
        blocks = -(-len(rows) // batch)
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        written = dataset.map_batches(
            _ShardWriter,
            fn_constructor_args=(work, self.cpus_per_actor, str(folder)),
            batch_size=batch,
            batch_format="pyarrow",
            num_cpus=self.cpus_per_actor,
            concurrency=max(1, min(blocks, cpus // self.cpus_per_actor)),
        )
        for _ in written.iter_batches(batch_size=None):
            pass  # the shards are the result; this runs the work and waits for it
        return folder


class _ShardWriter:
    """A Ray actor: one recognizer, threads from its CPUs; each batch of jobs becomes one shard."""

    def __init__(self, shared_work, threads: int, folder: str) -> None:
        work: PictureWork = _ray().get(shared_work)  # put in the object store once, not once per actor
        self.work = PictureWork(work.recognizer.with_threads(threads), work.movable)
        self.embedder = embedder_id(work.recognizer.bundle)
        self.folder = Path(folder)

    def __call__(self, batch):
        import pyarrow as pa
        import pyarrow.parquet as pq

        jobs = [_job_of(row) for row in batch.to_pylist()]
        table = _outcomes_table([self.work(job) for job in jobs], self.embedder)
        name = hashlib.sha1("\n".join(job.relative for job in jobs).encode("utf-8", "surrogateescape")).hexdigest()
        shard = self.folder / f"{name}.parquet"
        partial = shard.with_suffix(f".{os.getpid()}.partial")
        pq.write_table(table, partial)
        os.replace(partial, shard)
        return pa.table({"shard": [shard.name]})


def _job_row(job: Job) -> dict:
    faces = None if job.stored_faces is None else [[*f.box, f.score, f.angle] for f in job.stored_faces]
    return {
        "relative": job.relative,
        "path": job.path,
        "size": job.size,
        "mtime_ns": job.mtime_ns,
        "stored_sha256": job.stored_sha256,
        "stored_faces": json.dumps(faces),
    }


def _job_of(row: dict) -> Job:
    faces = json.loads(row["stored_faces"])
    stored = None if faces is None else tuple(DetectedFace(tuple(f[:4]), f[4], f[5]) for f in faces)
    return Job(row["relative"], row["path"], row["size"], row["mtime_ns"], row["stored_sha256"], stored)


def _outcomes_table(outcomes: list[Outcome], embedder: str):
    import pyarrow as pa

    return pa.Table.from_pylist(
        [
            {
                "relative": o.relative,
                "size": o.size,
                "mtime_ns": o.mtime_ns,
                "sha256": o.sha256,
                "error": o.error,
                "width": o.width,
                "height": o.height,
                "reembedded": o.reembedded,
                "embedder": embedder,
                "faces": [[*f.box, f.score, f.angle, f.fallback] for f in o.faces],
                "vectors": None if o.vectors is None else o.vectors.astype(np.float32).tobytes(),
                "dimension": 0 if o.vectors is None else o.vectors.shape[1],
                "seconds": [o.seconds[stage] for stage in STAGES],
            }
            for o in outcomes
        ],
        schema=_schema(),
    )


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("relative", pa.string()),
            ("size", pa.int64()),
            ("mtime_ns", pa.int64()),
            ("sha256", pa.string()),
            ("error", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("reembedded", pa.bool_()),
            ("embedder", pa.string()),
            ("faces", pa.list_(pa.list_(pa.float64()))),
            ("vectors", pa.binary()),
            ("dimension", pa.int32()),
            ("seconds", pa.list_(pa.float64())),
        ]
    )


def _read_shards(folder: Path) -> Iterator[list[tuple[Outcome, str]]]:
    """Each whole shard of `folder` as (outcome, embedder) pairs; a shard cut short by a crash
    is not one (it is still `.partial`) and its pictures are planned again."""
    import pyarrow.parquet as pq

    for shard in sorted(folder.glob("*.parquet")):
        yield [(_outcome_of(row), row["embedder"]) for row in pq.read_table(shard, schema=_schema()).to_pylist()]


def _outcome_of(row: dict) -> Outcome:
    faces = [FaceFound(tuple(round(v) for v in f[:4]), f[4], f[5], bool(f[6])) for f in row["faces"]]
    vectors = None
    if row["vectors"] is not None:
        vectors = np.frombuffer(row["vectors"], np.float32).reshape(-1, row["dimension"])
    return Outcome(
        relative=row["relative"],
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        sha256=row["sha256"],
        error=row["error"],
        width=row["width"],
        height=row["height"],
        faces=faces,
        vectors=vectors,
        reembedded=row["reembedded"],
        seconds=dict(zip(STAGES, row["seconds"])),
    )
