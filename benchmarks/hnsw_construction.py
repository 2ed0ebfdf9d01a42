"""How usearch's graph construction trades build time for recall on clustered faces. Prints JSON
lines, one per (expansion_add, expansion_search).

    python benchmarks/hnsw_construction.py [--faces 300000]

Clustered unit vectors as `index_synthetic.py --data clustered` makes them (one "character" per 50
faces, cosine about 0.7 to its centre), added 500 at a time as an index rebuild adds them, into one
shard of float16 vectors; 200 queries, new faces of random characters; recall@10 against exact
search over the float16 vectors.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import kyara.pipeline  # noqa: F401  (onnxruntime before usearch: the other order crashes on import)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def main() -> None:
    from usearch.index import Index

    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=300_000)
    parser.add_argument("--dim", type=int, default=256)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((args.faces // 50, args.dim)).astype(np.float32))
    noise = 1 / np.sqrt(args.dim)
    faces = unit(
        centres[rng.integers(0, len(centres), args.faces)]
        + noise * rng.standard_normal((args.faces, args.dim)).astype(np.float32)
    )
    queries = unit(
        centres[rng.integers(0, len(centres), 200)] + noise * rng.standard_normal((200, args.dim)).astype(np.float32)
    )
    stored = faces.astype(np.float16).astype(np.float32)
    truth = [set((np.argpartition(-(stored @ query), 10)[:10] + 1).tolist()) for query in queries]
    for expansion_add in (64, 128):
        index = Index(ndim=args.dim, metric="cos", dtype="f16", expansion_add=expansion_add)
        started = time.perf_counter()
        for start in range(0, args.faces, 500):
            index.add(
                np.arange(start + 1, min(args.faces, start + 500) + 1, dtype=np.uint64), faces[start : start + 500]
            )
        build_s = time.perf_counter() - started
        for expansion_search in (64, 256):
            index.expansion_search = expansion_search
            started = time.perf_counter()
            found = index.search(queries, 10)
            query_ms = (time.perf_counter() - started) / len(queries) * 1000
            recall = np.mean([len(set(keys.tolist()) & true) / 10 for keys, true in zip(found.keys, truth)])
            row = {"faces": args.faces, "expansion_add": expansion_add, "expansion_search": expansion_search}
            row |= {
                "build_s": round(build_s, 1),
                "query_ms": round(query_ms, 3),
                "recall_at_10": round(float(recall), 3),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
