"""Markdown tables for docs/detection.md from the detection benchmark's JSON output.

    python benchmarks/detection_benchmark.py --boxes benchmarks/detection_boxes_anime.json --details \\
        > docs/detection-benchmark-anime.json
    python tools/detection_tables.py docs/detection-benchmark-anime.json

The figures in the docs are pasted from this script's output, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


FIGURES = ("images_with_face_found", "precision", "recall")


def markdown(columns: list[str], rows: list[list[object]]) -> list[str]:
    """A markdown table's lines: the first column a name, the others figures (aligned right)."""
    lines = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def tables(result: dict) -> str:
    backends = result["backends"]
    lines = [f"{result['images']} pictures, {result['faces']} faces, match at IoU >= {result['iou']}", ""]
    lines += markdown(
        ["detector", "threshold", "pictures with a face found", "precision", "recall of faces", "median ms"],
        [[name, b["min_score"], *(percent(b[k]) for k in FIGURES), b["median_ms"]] for name, b in backends.items()],
    )
    per_picture = [
        f"{name} {b['detections_per_one_face_picture']}"
        for name, b in backends.items()
        if b.get("detections_per_one_face_picture") is not None
    ]
    if per_picture:
        lines += ["", "Faces reported per picture where one face is drawn (mean): " + ", ".join(per_picture) + "."]
    lines += ["", "Threshold chosen on one half of the pictures (precision >= 0.90) and measured on the other:", ""]
    lines += ["| detector | thresholds | pictures with a face found | precision | recall of faces |"]
    lines += ["| --- | --- | ---: | ---: | ---: |"]
    for name, b in backends.items():
        c = b["threshold_cross_checked"]
        lines.append(
            f"| {name} | {c['thresholds']} | {percent(c['images_with_face_found'])} | {percent(c['precision'])}"
            f" | {percent(c['recall'])} |"
        )
    kinds = list(next(iter(backends.values()))["recall_by_kind"])
    lines += ["", "Recall by kind of face (at each detector's threshold):", ""]
    lines += ["| kind | faces | " + " | ".join(backends) + " |", "| --- | ---: |" + " ---: |" * len(backends)]
    for kind in kinds:
        faces = next(iter(backends.values()))["recall_by_kind"][kind]["faces"]
        cells = " | ".join(percent(b["recall_by_kind"][kind]["recall"]) for b in backends.values())
        lines.append(f"| {kind} | {faces} | {cells} |")
    lines += ["", "By source (at each detector's threshold: pictures with a face found / precision / recall):", ""]
    folders = list(next(iter(backends.values()))["by_folder"])
    lines += ["| source | pictures | " + " | ".join(backends) + " |", "| --- | ---: |" + " --- |" * len(backends)]
    for folder in folders:
        first = next(iter(backends.values()))["by_folder"][folder]
        cells = " | ".join(
            " / ".join(percent(b["by_folder"][folder][k]) for k in ("images_with_face_found", "precision", "recall"))
            for b in backends.values()
        )
        lines.append(f"| {Path(folder).name} | {first['images']} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path)
    print(tables(json.loads(parser.parse_args().result.read_text())))


if __name__ == "__main__":
    main()
