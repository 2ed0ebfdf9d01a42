"""How fast the one writer of an index takes finished work: the ceiling of `kyara index --ray`.
Prints JSON.

    python benchmarks/index_writer.py [--pictures 20000] [--faces-per-picture 2]

However many nodes detect and embed, one process plans the run (lists and stats the files) and
writes every outcome (classifies its faces, inserts them into SQLite, adds them to the HNSW graph).
This measures that process alone: the pictures are empty files, and an engine that does no work
hands the writer made-up outcomes (unit vectors of the default model's dimension) as fast as it
asks for them, in batches of 16 as Ray's shards bring them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from kyara.index import CollectionIndex
from kyara.index.work import FaceFound, Outcome
from kyara.pipeline import Recognizer


class MadeUp:
    """An engine whose outcomes cost nothing: `faces` random faces per picture."""

    def __init__(self, faces: int, dim: int) -> None:
        self.faces, self.dim, self.rng = faces, dim, np.random.default_rng(0)

    def run(self, recognizer, moved, jobs, batch, shards):
        for start in range(0, len(jobs), batch):
            yield [self.outcome(job) for job in jobs[start : start + batch]]

    def outcome(self, job) -> Outcome:
        vectors = self.rng.standard_normal((self.faces, self.dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        faces = [FaceFound((10 * i, 10, 100, 100), 0.9, 0.0, False) for i in range(self.faces)]
        return Outcome(job.relative, job.size, job.mtime_ns, f"{hash(job.relative):x}", None, 1024, 768, faces, vectors)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pictures", type=int, default=20_000)
    parser.add_argument("--faces-per-picture", type=int, default=2)
    args = parser.parse_args()
    recognizer = Recognizer()
    with tempfile.TemporaryDirectory(dir=os.environ.get("KYARA_BENCH_DIR")) as folder:
        root = Path(folder) / "pictures"
        for number in range(args.pictures):
            part = root / f"{number // 1000:04d}"
            part.mkdir(parents=True, exist_ok=True)
            (part / f"{number:07d}.jpg").write_bytes(b"x")
        with CollectionIndex(Path(folder) / "writer.kyaradb", recognizer, create=True) as collection:
            engine = MadeUp(args.faces_per_picture, recognizer.embedder.dim)
            started = time.perf_counter()
            summary = collection.update(root, progress=False, engine=engine)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            collection.update(root, progress=False, engine=engine)
            plan_s = time.perf_counter() - started
    report = {
        "pictures": args.pictures,
        "faces": summary.faces,
        "cpu_count": os.cpu_count(),
        "seconds": round(seconds, 2),
        "pictures_per_s": round(args.pictures / seconds, 1),
        "faces_per_s": round(summary.faces / seconds, 1),
        "write_s": round(summary.seconds["write"], 2),
        "plan_unchanged_s": round(plan_s, 2),
        "plan_files_per_s": round(args.pictures / plan_s, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
