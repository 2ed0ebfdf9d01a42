"""How well `kyara cluster` groups faces by character, labels hidden. Prints JSON.

    python benchmarks/cluster_quality.py --set holoen [--model M] [--thresholds 0.4 0.5 0.6] [--min-size 3]

Sets (face crops from ../shared/data; the folder names are the hidden truth):
- `newgame-danbooru`: every picture of newgame-faces and danbooru6-faces (14 characters);
- `holoen`: 20 holoen-faces characters x 50 pictures, taken from the default model's held-out test
  files (docs/default-model-metrics.json), so no picture was seen in training;
- `holoen-unseen`: 50 pictures of each of the 5 holoen characters left out of `build/heldout.kyara`.

For each threshold: purity, adjusted Rand index (noise faces count as groups of one), noise share
and number of groups (see `tests/clustering_scores.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from kyara.cluster import DEFAULT_MIN_SIZE, DEFAULT_THRESHOLD, cluster_faces, embed_faces
from kyara.dataset import labelled_files
from kyara.pipeline import Recognizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scores are test code, in tests/
from tests.clustering_scores import clustering_scores

ROOT = Path(__file__).resolve().parents[1]

DATA = ROOT.parent / "shared" / "data"
UNSEEN = ("ceci", "erb", "gigi", "bae", "irys")
PER_CHARACTER = 50


def labelled_set(name: str) -> dict[Path, str]:
    if name == "newgame-danbooru":
        return {f.path: f.label for f in labelled_files([DATA / "newgame-faces", DATA / "danbooru6-faces"])}
    if name == "holoen":
        test_files = json.loads((ROOT / "docs" / "default-model-metrics.json").read_text())["test_files"]
        chosen = [DATA / f for f in sorted(test_files) if f.startswith("holoen-faces/")]
    elif name == "holoen-unseen":
        chosen = [f.path for f in labelled_files([DATA / "holoen-faces"]) if f.label in UNSEEN]
    else:
        raise SystemExit(f"unknown set {name!r}")
    per_character: dict[str, list[Path]] = defaultdict(list)
    for path in chosen:
        per_character[path.parent.name].append(path)
    return {path: label for label, paths in per_character.items() for path in paths[:PER_CHARACTER]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--set", choices=("newgame-danbooru", "holoen", "holoen-unseen"), required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[DEFAULT_THRESHOLD])
    parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE)
    args = parser.parse_args()
    truth_of = labelled_set(args.set)
    face_set = embed_faces(Recognizer(args.model), sorted(truth_of), progress=False)
    truth = [truth_of[face.source] for face in face_set.faces]
    results = [
        {"threshold": t, **clustering_scores(truth, cluster_faces(face_set.embeddings, t, args.min_size))}
        for t in args.thresholds
    ]
    print(
        json.dumps(
            {"set": args.set, "model": args.model or "default", "min_size": args.min_size, "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
