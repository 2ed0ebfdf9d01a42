"""Search speed of the collection index at scale, on synthetic faces. Prints JSON.

    python benchmarks/index_synthetic.py [--faces 1000000] [--data uniform|clustered] [--queries 200]
                                         [--per-character 50] [--expansions 256,64,1024,2048]

Writes N random unit vectors of the default model's dimension into the SQLite store of a new
`.kyaradb` (as `kyara index` stores faces: float16 embeddings, four faces per picture), then
opens it: the HNSW shards (one per `FACES_PER_SHARD` face ids) are built from SQLite exactly as
when their files are missing (`build_s`) and saved. `open_memory_mb`: what opening the saved
index adds to the process (the shards held in memory); `peak_memory_mb` includes the benchmark's
own copies of the vectors. Queries go through `CollectionIndex.search_vectors`, one at a time, so they include
fetching the hits' rows from SQLite; they are asked once per search expansion in `--expansions`
(candidates each shard's graph walk keeps; the first figures are at kyara's default).

- `uniform`: vectors uniform on the sphere, the worst case for any approximate index: in 256
  dimensions every point is almost as far from a query as its nearest neighbours are.
- `clustered`: one "character" per `--per-character` faces (50: 20,000 for a million), scattered
  around a centre (cosine about 0.7 to it, so about 0.5 between two faces of one character, as
  the default model's faces of one character are: scripts/embedding_geometry.py); queries are new
  faces of those characters. Each of the five shards of five million such faces holds about ten
  faces of each of 100,000 characters: `--faces 1000000 --per-character 10` is one of them.

Recall@10 compares the top 10 with exact search (every stored vector) on a sample of queries.
`relabel_s`: every face labelled again from its stored embedding, as after `kyara enroll`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from kyara.index import DATABASE, FACES_PER_SHARD, SEARCH_EXPANSION, CollectionIndex
from kyara.pipeline import Recognizer

CHUNK = 50_000
FACES_PER_PICTURE = 4


def resident_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def synthetic(
    count: int, queries: int, dim: int, data: str, per_character: int = 50, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`count` stored vectors and `queries` query vectors, float32 unit vectors."""
    rng = np.random.default_rng(seed)
    if data == "uniform":
        return unit(rng.standard_normal((count, dim), np.float32)), unit(
            rng.standard_normal((queries, dim), np.float32)
        )
    centres = unit(rng.standard_normal((max(1, count // per_character), dim), np.float32))
    spread = 1.0 / np.sqrt(dim)  # noise of norm ~1 around a unit centre: cosine ~0.7 to it

    def faces(n: int) -> np.ndarray:
        out = np.empty((n, dim), np.float32)
        for start in range(0, n, CHUNK):  # in pieces: a few million faces would need several copies
            size = min(CHUNK, n - start)
            owners = rng.integers(0, len(centres), size)
            out[start : start + size] = unit(centres[owners] + spread * rng.standard_normal((size, dim), np.float32))
        return out

    return faces(count), faces(queries)


def fill(db: Path, vectors: np.ndarray, recognizer: Recognizer) -> None:
    """Faces in SQLite as `kyara index` writes them, with made-up pictures."""
    CollectionIndex(db, recognizer, create=True).close()
    with sqlite3.connect(db / DATABASE) as connection:
        embedder = connection.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()[0]
        pictures = (len(vectors) + FACES_PER_PICTURE - 1) // FACES_PER_PICTURE
        connection.executemany(
            "INSERT INTO files (id, path, size, mtime_ns, sha256, width, height, embedder) "
            "VALUES (?, ?, 0, 0, '', 1024, 768, ?)",
            ((i + 1, f"synthetic/{i:07d}.jpg", embedder) for i in range(pictures)),
        )
        for start in range(0, len(vectors), CHUNK):
            block = vectors[start : start + CHUNK].astype(np.float16)
            connection.executemany(
                "INSERT INTO faces (id, file_id, x, y, w, h, detector_score, angle, fallback, label, confidence, "
                "similarity, embedding) VALUES (?, ?, 0, 0, 100, 100, 1.0, 0.0, 0, NULL, 0.0, 0.0, ?)",
                ((start + i + 1, (start + i) // FACES_PER_PICTURE + 1, row.tobytes()) for i, row in enumerate(block)),
            )
        connection.commit()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a finished `kyara index` leaves it


def exact_top(stored: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """The true top `k` face ids of each query, over the vectors as stored (float16)."""
    scores = np.concatenate(
        [
            queries @ unit(stored[s : s + CHUNK].astype(np.float16).astype(np.float32)).T
            for s in range(0, len(stored), CHUNK)
        ],
        axis=1,
    )
    return [set((np.argpartition(-row, k)[:k] + 1).tolist()) for row in scores]


def asked(collection: CollectionIndex, queries: np.ndarray, truth: list[set[int]], top_k: int, expansion: int) -> dict:
    """Each query asked alone at one search expansion: milliseconds, and recall on the first
    `len(truth)` queries."""
    times, answers = [], []
    for query in queries:
        started = time.perf_counter()
        (hits,) = collection.search_vectors(query[None], top_k, expansion)
        times.append(time.perf_counter() - started)
        answers.append({hit.face.face_id for hit in hits})
    return {
        "expansion": expansion,
        "query_ms_median": round(1000 * statistics.median(times), 3),
        "query_ms_p95": round(1000 * float(np.percentile(times, 95)), 3),
        f"recall_at_{top_k}": round(statistics.mean(len(a & t) / top_k for a, t in zip(answers, truth)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--data", choices=("uniform", "clustered"), default="uniform")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--recall-sample", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--per-character", type=int, default=50)
    parser.add_argument("--expansions", default=f"{SEARCH_EXPANSION},64,1024,2048")
    args = parser.parse_args()
    recognizer = Recognizer()
    stored, queries = synthetic(args.faces, args.queries, recognizer.embedder.dim, args.data, args.per_character)
    with tempfile.TemporaryDirectory(dir=os.environ.get("KYARA_BENCH_DIR")) as folder:
        db = Path(folder) / "synthetic.kyaradb"
        started = time.perf_counter()
        fill(db, stored, recognizer)
        fill_s = time.perf_counter() - started

        started = time.perf_counter()
        collection = CollectionIndex(db, recognizer)
        build_s = time.perf_counter() - started
        collection.save_vectors()
        collection.close()

        del collection
        gc.collect()
        rss_before = resident_bytes()
        started = time.perf_counter()
        collection = CollectionIndex(db, recognizer)
        open_s = time.perf_counter() - started
        open_rss = resident_bytes() - rss_before

        sample = slice(0, args.recall_sample)
        truth = exact_top(stored, queries[sample], args.top_k)
        searches = [
            asked(collection, queries, truth, args.top_k, int(expansion)) for expansion in args.expansions.split(",")
        ]
        started = time.perf_counter()
        collection.relabel()
        relabel_s = time.perf_counter() - started
        report = {
            "faces": args.faces,
            "dim": int(stored.shape[1]),
            "data": args.data,
            "per_character": args.per_character if args.data == "clustered" else None,
            "cpu_count": os.cpu_count(),
            "sqlite_fill_s": round(fill_s, 1),
            "build_s": round(build_s, 1),
            "open_s": round(open_s, 2),
            **{key: value for key, value in searches[0].items() if key != "expansion"},
            "search_expansion": searches[0]["expansion"],
            "by_expansion": searches,
            "relabel_s": round(relabel_s, 1),
            "shards": len(list(db.glob("*.usearch"))),
            "faces_per_shard": FACES_PER_SHARD,
            "size_mb": {
                "sqlite": round((db / DATABASE).stat().st_size / 2**20, 1),
                "vectors": round(sum(f.stat().st_size for f in db.glob("*.usearch")) / 2**20, 1),
            },
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "open_memory_mb": round(open_rss / 2**20),
        }
        collection.close()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
