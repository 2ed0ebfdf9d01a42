"""`kyara index --ray`: the pictures' work (`kyara.index.work`) spread over a Ray cluster.

The writer (`kyara.index.update`) plans on the machine that holds the index, so only new and
changed files reach the cluster. `OnRay` hands them to Ray Data; an actor pool of `PictureWork`s
(one recognizer per actor, its ONNX sessions running one thread per CPU the actor holds) reads,
decodes, detects and embeds each picture where the actor runs, so no decoded pixels cross the
network, and writes each batch's outcomes as one Parquet shard into the index's `shards/` folder,
which every node reaches (the index on a shared filesystem). A shard is written whole, then
renamed into place, under a name that follows from its batch's files: a batch done twice, by an
actor Ray restarted, writes the same shard. As each shard's name comes back, the writer merges
it into SQLite and the vector index, then deletes it; a run that dies leaves the shards it wrote,
and the next run merges them before it plans (`leftover_outcomes`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from kyara.bundle import atomic_write
from kyara.detection import DetectedFace
from kyara.errors import KyaraError
from kyara.index.store import embedder_id
from kyara.index.work import STAGES, FaceFound, Job, MovedContents, Outcome, PictureWork
from kyara.pipeline import Recognizer

CHUNK = 65_536
"""Pictures per Ray dataset: bounds the memory the head spends on the list of jobs."""
RETRIES = 3
"""Restarts of a dead actor, and retries of its batch, before the run fails."""
CONNECT_SECONDS = 10
"""How long a cluster address may take to answer before it counts as no cluster."""
_ADDRESS = re.compile(r"(?:ray://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(?P<port>\d{1,5})")


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise KyaraError("--ray needs Ray: pip install 'kyara[cluster]'") from exc
    return ray


class OnRay:
    """The pictures' work done on the Ray cluster at `address` ("auto": the one `ray start` joined
    this machine to; "local": a new cluster of this machine alone; or an address).
    `cpus_per_actor`: CPUs (and inference threads) per recognizer; `chunk`: pictures per Ray
    dataset; `progress`: Ray Data's own progress bars and logs (kyara's bar counts the pictures
    written)."""

    def __init__(
        self, address: str = "auto", cpus_per_actor: int = 1, chunk: int = CHUNK, progress: bool = False
    ) -> None:
        self.address = checked_address(address)
        self.cpus_per_actor = cpus_per_actor
        self.chunk = chunk
        self.progress = progress

    def run(
        self, recognizer: Recognizer, moved: MovedContents, jobs: list[Job], batch: int, shards: Path
    ) -> Iterator[list[Outcome]]:
        if not jobs:
            return
        ray = self._connected()
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if self.cpus_per_actor > cpus:
            raise KyaraError(f"{self.cpus_per_actor} CPUs per actor, but the Ray cluster has {cpus}")
        # Sessions of the actors' thread count, so that an actor opens its models once.
        work = ray.put(PictureWork(recognizer.with_threads(self.cpus_per_actor), moved))
        shards.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(jobs), self.chunk):
            chunk = jobs[start : start + self.chunk]
            returned: set[str] = set()
            for names in self._dataset(work, chunk, batch, shards, cpus).iter_batches(batch_size=None):
                for name in names["shard"]:
                    if name in returned:
                        continue  # the same batch, done twice, wrote one file
                    returned.add(name)
                    yield [outcome for outcome, _ in read_shard(shards / name)]
                    (shards / name).unlink()  # asked for more: the writer committed them
            if len(returned) != -(-len(chunk) // batch):
                raise KyaraError(f"the Ray cluster returned {len(returned)} shards for {len(chunk)} pictures")

    def _connected(self):
        ray = _ray()
        if not ray.is_initialized():
            try:
                _answering(self.address)
                ray.init(address=self.address, include_dashboard=False, log_to_driver=self.progress)
            except (ConnectionError, TimeoutError, ValueError) as exc:
                raise KyaraError(
                    f"no Ray cluster at {self.address!r} ({exc}): start one with `ray start --head`"
                ) from exc
        ray.data.DataContext.get_current().enable_progress_bars = self.progress
        if not self.progress:
            logging.getLogger("ray.data").setLevel(logging.WARNING)
        return ray

    def _dataset(self, work, jobs: list[Job], batch: int, shards: Path, cpus: int):
        """Jobs in blocks of `batch`, each done by an actor that writes one shard and returns its name."""
        blocks = -(-len(jobs) // batch)
        dataset = _ray().data.from_items([_job_row(job) for job in jobs], override_num_blocks=blocks)
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing remote arguments this way but offers no other for an
            # actor pool's restarts.
            warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
            return dataset.map_batches(
                _ShardWriter,
                fn_constructor_args=(work, str(shards)),
                batch_size=batch,
                batch_format="pyarrow",
                num_cpus=self.cpus_per_actor,
                concurrency=max(1, min(blocks, cpus // self.cpus_per_actor)),
                # Ray restarts a dead actor and retries its batch; a picture that kills every
                # worker it reaches (a decoder crash) must not loop forever.
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
            )


class _ShardWriter:
    """A Ray actor: one recognizer; each batch of jobs becomes one shard, named after its files."""

    def __init__(self, shared_work, shards: str) -> None:
        self.work: PictureWork = _ray().get(shared_work)  # in the object store once, not once per actor
        self.embedder = embedder_id(self.work.recognizer)
        self.shards = Path(shards)

    def __call__(self, batch):
        import pyarrow as pa
        import pyarrow.parquet as pq

        jobs = [_job_of(row) for row in batch.to_pylist()]
        table = _outcomes_table([self.work(job) for job in jobs], self.embedder)
        files = "\0".join(job.relative for job in jobs).encode("utf-8", "surrogateescape")
        shard = self.shards / f"{hashlib.sha1(files).hexdigest()}.parquet"
        atomic_write(shard, lambda temporary: pq.write_table(table, temporary))  # whole, or not at all
        return pa.table({"shard": [shard.name]})


def leftover_outcomes(shards: Path, embedder: str) -> Iterator[list[Outcome]]:
    """The outcomes of this embedder in the shards a run that died left, shard by shard (each
    deleted once the next is asked for: the writer committed it); then the folder goes. A shard
    that cannot be read is skipped: its pictures are planned again."""
    for shard in sorted(shards.glob("*.parquet")):
        try:
            outcomes = read_shard(shard)
        except ImportError as exc:
            raise KyaraError(
                f"{shards} holds the work of a Ray run that did not finish: pip install 'kyara[cluster]' to "
                "merge it, or delete the folder to do that work again"
            ) from exc
        except Exception as exc:  # pyarrow's errors for a damaged or foreign file
            warnings.warn(f"{shard}: not a readable shard, its pictures are indexed again ({exc})", stacklevel=2)
            outcomes = []
        yield [outcome for outcome, made_by in outcomes if made_by == embedder]
        shard.unlink()
    shutil.rmtree(shards, ignore_errors=True)


def checked_address(address: str) -> str:
    """`address` if Ray can take it: 'auto', 'local', HOST:PORT or ray://HOST:PORT."""
    found = _ADDRESS.fullmatch(address)
    if address in ("auto", "local") or (found and int(found["port"]) <= 65_535):
        return address
    raise KyaraError(f"--ray takes 'auto', 'local' or HOST:PORT, not {address!r}")


def _answering(address: str) -> None:
    """Raise `ConnectionError` at once if nothing listens at a HOST:PORT address: Ray itself
    retries such an address silently for a minute or more."""
    found = _ADDRESS.fullmatch(address)
    if found is None:
        return
    host = found["host"].strip("[]")
    try:
        socket.create_connection((host, int(found["port"])), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers there: {exc.strerror or exc}") from exc


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
                "faces": [[*f.box, f.score, f.angle, f.fallback, f.gray] for f in o.faces],
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


def read_shard(shard: Path) -> list[tuple[Outcome, str]]:
    """A shard's outcomes, each with the embedder that made its vectors."""
    import pyarrow.parquet as pq

    return [(_outcome_of(row), row["embedder"]) for row in pq.read_table(shard, schema=_schema()).to_pylist()]


def _face_of(numbers: list[float]) -> FaceFound:
    """x, y, w, h, score, angle, fallback, gray (a shard of a kyara that did not mark gray faces
    stops at fallback)."""
    x, y, w, h, score, angle, fallback, *gray = numbers
    return FaceFound((round(x), round(y), round(w), round(h)), score, angle, bool(fallback), bool(gray and gray[0]))


def _outcome_of(row: dict) -> Outcome:
    faces = [_face_of(numbers) for numbers in row["faces"]]
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
