"""Indexing speed on real pictures, and where the time goes. Prints JSON.

    python benchmarks/index_folder.py [--folder ../shared/data/newgame-illustrations] [--pictures 60]
        [--workers N | --ray N] [--precision int8]

`--workers N`: N pictures worked on at once in this process (default: one per core); `--ray N`:
the work done by a local Ray cluster of N CPUs started here (one actor per CPU; the first run's
time includes starting the actors, which load the model).

Indexes an evenly spread sample of the folder's pictures (linked into a temporary root; the
pictures are not copied or changed) into a new `.kyaradb` with the default model, then:
- first run: pictures/s and seconds spent hashing, decoding, detecting, embedding (cut, embed)
  and writing (classify, SQLite, vector index), each summed over the workers;
  `first_run_cpu_s` is the CPU time of this process's threads (not of Ray's workers);
- second run: the same folder again (nothing changed: every file is skipped on its size and mtime);
- relabel: labels recomputed from the stored embeddings, as after `kyara enroll`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from kyara.imageio import list_images
from kyara.index import CollectionIndex, Engine, InThreads
from kyara.pipeline import Recognizer
from kyara.runtime import DEFAULT_PRECISION, PRECISIONS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, default=DATA / "newgame-illustrations")
    parser.add_argument("--pictures", type=int, default=60)
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--workers", type=int, default=None)
    how.add_argument("--ray", type=int, default=None, metavar="CPUS")
    args = parser.parse_args()
    pictures = list_images(args.folder)
    pictures = pictures[:: max(1, len(pictures) // args.pictures)][: args.pictures]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "pictures"
        for path in pictures:
            link = root / path.relative_to(args.folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        db = Path(folder) / "bench.kyaradb"
        engine = InThreads(args.workers) if args.ray is None else on_ray(args.ray)
        with CollectionIndex(db, Recognizer(precision=args.precision), create=True) as collection:
            started, cpu_started = time.perf_counter(), time.process_time()
            first = collection.update(root, progress=False, engine=engine)
            first_s, first_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
            started = time.perf_counter()
            collection.update(root, progress=False)
            second_s = time.perf_counter() - started
            started = time.perf_counter()
            relabelled = collection.relabel()
            relabel_s = time.perf_counter() - started
            stats = collection.stats()
    report = {
        "folder": str(args.folder),
        "pictures": len(pictures),
        "faces": stats["faces"],
        "cpu_count": os.cpu_count(),
        "precision": args.precision,
        "engine": f"ray, {args.ray} CPUs" if args.ray else f"threads, {engine.workers} workers",
        "first_run_s": round(first_s, 2),
        "first_run_cpu_s": round(first_cpu_s, 2),
        "pictures_per_s": round(len(pictures) / first_s, 3),
        "seconds": first.to_dict()["seconds"],
        "unchanged_run_s": round(second_s, 3),
        "relabel_s": round(relabel_s, 3),
        "relabelled_faces": relabelled,
        "unreadable": first.unreadable,
    }
    print(json.dumps(report, indent=2))


def on_ray(cpus: int) -> Engine:
    import ray

    from kyara.index.distributed import OnRay

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return OnRay()


if __name__ == "__main__":
    main()
