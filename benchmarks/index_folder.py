"""Indexing speed on real pictures, and where the time goes. Prints JSON.

    python benchmarks/index_folder.py [--folder ../shared/data/newgame-illustrations] [--pictures 60]

Indexes an evenly spread sample of the folder's pictures (linked into a temporary root; the
pictures are not copied or changed) into a new `.kyaradb` with the default model, then:
- first run: pictures/s and seconds spent hashing, decoding, detecting, embedding (crop, embed,
  classify) and writing (SQLite, vector index); `first_run_cpu_s` is the CPU time of all threads,
  a steadier figure than wall time on a busy machine;
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
from kyara.index import CollectionIndex
from kyara.pipeline import Recognizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, default=DATA / "newgame-illustrations")
    parser.add_argument("--pictures", type=int, default=60)
    args = parser.parse_args()
    pictures = list_images(args.folder)
    pictures = pictures[:: max(1, len(pictures) // args.pictures)][: args.pictures]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "pictures"
        for path in pictures:
            link = root / path.relative_to(args.folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path.resolve())
        with CollectionIndex(Path(folder) / "bench.kyaradb", Recognizer(), create=True) as collection:
            started, cpu_started = time.perf_counter(), time.process_time()
            first = collection.update(root, progress=False)
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
        "first_run_s": round(first_s, 2),
        "first_run_cpu_s": round(first_cpu_s, 2),
        "pictures_per_s": round(len(pictures) / first_s, 3),
        "seconds": first.to_dict()["seconds"],
        "share": {stage: round(s / first_s, 3) for stage, s in first.seconds.items()},
        "unchanged_run_s": round(second_s, 3),
        "relabel_s": round(relabel_s, 3),
        "relabelled_faces": relabelled,
        "unreadable": first.unreadable,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
