"""How usearch's graph trades build time and search effort for recall on clustered faces. Prints
JSON lines, one per (expansion_add, expansion_search).

    python benchmarks/hnsw_construction.py [--faces 300000] [--per-character 50]
                                           [--expansion-add 64,128] [--expansion-search 64,256]

Clustered unit vectors as `index_synthetic.py --data clustered` makes them (one "character" per
`--per-character` faces, cosine about 0.7 to its centre, so about 0.5 between two faces of one
character, as the default model's embeddings of one character are), added 500 at a time as an
index rebuild adds them, into one shard of float16 vectors; 200 queries, new faces of random
characters, asked one at a time as `kyara search` asks. `recall_at_10`: against exact search over
the float16 vectors; `same_character_found`: the share of the true top 10 that are faces of the
query's character (cosine above 0.35) that the graph found, what a user searching for a
character sees. A shard of a collection of five million faces in five shards holds about ten
faces of each character: `--faces 1000000 --per-character 10`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import kyara.pipeline  # noqa: F401  (onnxruntime before usearch: the other order crashes on import)

SAME_CHARACTER = 0.35
"""Cosine above which a face is its query's character in this data (other characters' faces sit
near 0; the 10 true nearest of another character stay below 0.3)."""


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    from usearch.index import Index

    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=300_000)
    parser.add_argument("--per-character", type=int, default=50)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--expansion-add", type=numbers, default=[64, 128])
    parser.add_argument("--expansion-search", type=numbers, default=[64, 256])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = unit(rng.standard_normal((args.faces // args.per_character, args.dim)).astype(np.float32))
    noise = 1 / np.sqrt(args.dim)

    def faces(count: int) -> np.ndarray:
        out = np.empty((count, args.dim), np.float32)
        for start in range(0, count, 50_000):  # in pieces: a million faces at once need several copies
            size = min(50_000, count - start)
            owners = rng.integers(0, len(centres), size)
            out[start : start + size] = unit(
                centres[owners] + noise * rng.standard_normal((size, args.dim)).astype(np.float32)
            )
        return out

    stored, queries = faces(args.faces), faces(200)
    exact = stored.astype(np.float16).astype(np.float32)
    truth, same = [], []
    for query in queries:
        scores = exact @ query
        top = np.argpartition(-scores, 10)[:10]
        truth.append(set((top + 1).tolist()))
        same.append(set((top[scores[top] > SAME_CHARACTER] + 1).tolist()))
    for expansion_add in args.expansion_add:
        index = Index(ndim=args.dim, metric="cos", dtype="f16", expansion_add=expansion_add)
        started = time.perf_counter()
        for start in range(0, args.faces, 500):
            index.add(
                np.arange(start + 1, min(args.faces, start + 500) + 1, dtype=np.uint64), stored[start : start + 500]
            )
        build_s = time.perf_counter() - started
        for expansion_search in args.expansion_search:
            index.expansion_search = expansion_search
            started = time.perf_counter()
            found = [set(index.search(query, 10).keys.tolist()) for query in queries]
            query_ms = (time.perf_counter() - started) / len(queries) * 1000
            row = {
                "faces": args.faces,
                "per_character": args.per_character,
                "expansion_add": expansion_add,
                "expansion_search": expansion_search,
                "build_s": round(build_s, 1),
                "query_ms": round(query_ms, 3),
                "recall_at_10": round(float(np.mean([len(f & t) / 10 for f, t in zip(found, truth)])), 3),
                "same_character_found": round(sum(len(f & s) for f, s in zip(found, same)) / sum(map(len, same)), 3),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
