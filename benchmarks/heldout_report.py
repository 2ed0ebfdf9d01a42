"""`kyara evaluate` on the default model's own held-out test pictures, through the whole pipeline
(detection, crop, embedding, gallery). Writes the report folder and prints its JSON summary.

    python benchmarks/heldout_report.py [--report docs/evaluation] [--model M] [--precision int8]

The test pictures are those listed in docs/default-model-metrics.json (never trained on); they
are linked, one folder per character, into a temporary folder that `kyara evaluate` reads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from kyara.evaluate import evaluate, write_report
from kyara.pipeline import Recognizer
from kyara.runtime import DEFAULT_PRECISION, PRECISIONS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def link_test_pictures(target: Path) -> int:
    listed = json.loads((ROOT / "docs" / "default-model-metrics.json").read_text())["test_files"]
    for relative in listed:
        source = DATA / relative
        link = target / source.parent.name / source.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source.resolve())
    return len(listed)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "evaluation")
    parser.add_argument("--model", default=None)
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        count = link_test_pictures(Path(folder))
        result = evaluate(Recognizer(args.model, precision=args.precision), Path(folder))
    write_report(result, args.report, title=f"kyara evaluate: the default model's {count} held-out test pictures")
    summary = result.to_dict()
    summary["grayscale"].pop("per_class")
    print(json.dumps({key: value for key, value in summary.items() if key != "per_class"}, indent=2))


if __name__ == "__main__":
    main()
