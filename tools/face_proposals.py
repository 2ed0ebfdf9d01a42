"""Face box proposals for hand labelling, and review sheets to check them by eye.

    python tools/face_proposals.py propose build/data/illustrations/benchmark -o build/review/proposals.json
    python tools/face_proposals.py sheets build/review/proposals.json --root build/data -o build/review/sheets
    python tools/face_proposals.py select build/review10/portrait-proposals.json -o build/review10/portrait-review.json
    python tools/face_proposals.py sheets build/review10/portrait-review.json --per-sheet 12 \
        -o build/review10/portrait-sheets
    python tools/face_proposals.py labels -o tools/detector-labels.json \
        --proposals pictures=build/review/train-proposals.json shared=build/review/shared-proposals.json \
                    pictures=build/review10/portrait-proposals.json pictures=build/review10/manga-proposals.json \
        --checked pictures=build/review/train-sheets:build/review/train-fixes-a.json,build/review/train-fixes-b.json \
                  pictures=build/review10/portrait-sheets:ANSWERS.json,... pictures=build/review10/manga-sheets:...
    python tools/face_proposals.py crops tools/detector-labels.json -o build/review12/crops
    python tools/face_proposals.py crop-answers tools/detector-labels.json build/review12/crops ANSWERS.json ...

`propose` runs every detector kyara has, generously, so that a person mostly accepts or rejects:
the CNN at two input sizes, once more on the picture shrunk into a padded canvas (faces larger
than the network's input), and animeface-2009 upright and turned +-25 degrees. `sheets` draws each
picture (longer side 900 px) with the numbered proposals and a grid labelled in original pixels,
from which a missing face's box is read off, one picture a sheet or several small ones side by
side (portraits). `labels` writes the detector's training labels: the proposals (a later file's
replacing an earlier one's for the same picture), replaced by the faces a person kept or added on
the pictures they checked (the instructions they followed are in tools/labelling/, what was
checked in docs/detection.md); pictures they found unusable are dropped.
`crops` draws, one small crop each, the proposals that training leaves out of the loss (unsure:
neither face nor background) on pictures nobody checked whole, for a person to answer face, not a
face, or unsure; `crop-answers` writes those answers into the labels: a face becomes a hand label,
a proposal with no face under it is removed (its spot is then taught as background, unless a
weaker proposal that was not shown covers it) and recorded under "rejected", an unsure one stays.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from kyara.dedupe import NEAR_DUPLICATE_BITS, phash
from kyara.detection import AnimeFaceDetector, CnnDetector, DetectedFace, non_max_suppression
from kyara.errors import ImageError
from kyara.imageio import list_images, load_image


def closeup_pass(detector: CnnDetector, image: Image.Image) -> list[DetectedFace]:
    """The picture at half size in the middle of a canvas of its own size, edges continued."""
    width, height = image.size
    small = image.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.BILINEAR)
    left, top = (width - small.width) // 2, (height - small.height) // 2
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(small, (left, top))
    faces = []
    for face in detector.detect(canvas):
        x, y, w, h = face.box
        box = ((x - left) * 2, (y - top) * 2, w * 2, h * 2)
        faces.append(DetectedFace(box, face.score, face.angle))
    return faces


def propose(pictures: list[Path], root: Path, angles: tuple[float, ...]) -> dict[str, list[dict]]:
    detectors = [("cnn384", CnnDetector(384, 0.2)), ("cnn640", CnnDetector(640, 0.2))]
    animeface = AnimeFaceDetector(angles=angles, min_score=0.3) if angles else None
    found: dict[str, list[dict]] = {}
    for path in tqdm(pictures, desc="proposals"):
        try:
            image = load_image(path)
        except ImageError as exc:
            tqdm.write(f"left out: {exc}")
            continue
        faces = [(name, f) for name, d in detectors for f in d.detect(image)]
        faces += [("closeup", f) for f in closeup_pass(detectors[0][1], image)]
        faces += [("animeface", f) for f in (animeface.detect(image) if animeface else [])]
        kept = non_max_suppression([f for _, f in faces])
        origin = {id(f): name for name, f in faces}
        found[path.relative_to(root).as_posix()] = [
            {"box": list(f.box), "score": round(f.score, 3), "angle": f.angle, "by": origin[id(f)]} for f in kept
        ]
    return found


def draw_sheet(image: Image.Image, proposals: list[dict], side: int = 900) -> Image.Image:
    scale = min(3.0, side / max(image.size))  # small pictures are blown up to be read
    sheet = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)))
    pen = ImageDraw.Draw(sheet)
    step = 25 if max(image.size) <= 300 else 50 if max(image.size) <= 600 else 100
    for x in range(0, image.width, step):
        pen.line([(x * scale, 0), (x * scale, sheet.height)], fill=(0, 200, 255) if x % (2 * step) else (255, 255, 0))
        if x % (2 * step) == 0:
            pen.text((x * scale + 2, 2), str(x), fill=(255, 255, 0), stroke_width=2, stroke_fill=(0, 0, 0))
    for y in range(0, image.height, step):
        pen.line([(0, y * scale), (sheet.width, y * scale)], fill=(0, 200, 255) if y % (2 * step) else (255, 255, 0))
        if y % (2 * step) == 0:
            pen.text((2, y * scale + 2), str(y), fill=(255, 255, 0), stroke_width=2, stroke_fill=(0, 0, 0))
    for number, proposal in enumerate(proposals):
        x, y, w, h = (v * scale for v in proposal["box"])
        colour = (255, 0, 0) if proposal["score"] >= 0.45 else (255, 0, 255)
        pen.rectangle([x, y, x + w, y + h], outline=colour, width=3)
        caption = f"{number}:{proposal['score']:.2f}"
        pen.text((x + 3, y + 2), caption, fill=colour, stroke_width=2, stroke_fill=(0, 0, 0))
    return sheet


REVIEW_SURE = 0.5
"""`select` counts a proposal of this score or more, from any proposer, as a face found (the CNN
proposers' sure score in tools/train_detector.py, which asks 0.6 of the shrunk pass: a picture
whose only such face is a shrunk-pass one of 0.5 to 0.6 is neither selected nor trained on)."""
CELL_SIDE = 350
"""Longer side of a picture in a sheet of several (`sheets --per-sheet`): portraits at full size."""


def review_selection(proposals: dict[str, list[dict]], sample: int, seed: int) -> dict[str, list[dict]]:
    """The pictures to check by eye: every one without exactly one sure proposal (none: a face may
    have been missed; several: on a portrait of one character, mostly boxes on hands and brooches),
    and `sample` drawn at random from the others, to measure how far those can be trusted."""
    one_face = [path for path, faces in proposals.items() if sum(f["score"] >= REVIEW_SURE for f in faces) == 1]
    left_out = set(one_face)
    random.Random(seed).shuffle(one_face)
    left_out -= set(one_face[:sample])
    return {path: faces for path, faces in proposals.items() if path not in left_out}


def write_sheets(proposals: dict[str, list[dict]], root: Path, out: Path, per_sheet: int) -> dict[str, str]:
    """One sheet per picture, or `per_sheet` pictures side by side in rows of four, each captioned
    with its key ("0012-3": sheet 12, picture 3); returns key -> picture path."""
    index: dict[str, str] = {}
    paths = sorted(proposals)
    for number, start in enumerate(tqdm(range(0, len(paths), per_sheet), desc="sheets")):
        chunk = paths[start : start + per_sheet]
        if per_sheet == 1:
            draw_sheet(load_image(root / chunk[0]), proposals[chunk[0]]).save(out / f"{number:04d}.png")
            index[f"{number:04d}"] = chunk[0]
            continue
        cells = [draw_sheet(load_image(root / path), proposals[path], CELL_SIDE) for path in chunk]
        columns, caption = min(4, len(cells)), 28
        width, height = max(c.width for c in cells) + 12, max(c.height for c in cells) + caption
        sheet = Image.new("RGB", (columns * width, -(-len(cells) // columns) * height), (40, 40, 40))
        pen = ImageDraw.Draw(sheet)
        for slot, (path, cell) in enumerate(zip(chunk, cells)):
            left, top = (slot % columns) * width, (slot // columns) * height
            key = f"{number:04d}-{slot}"
            pen.text((left + 4, top + 2), key, fill=(255, 255, 255), font_size=22)
            sheet.paste(cell, (left, top + caption))
            index[key] = path
        sheet.save(out / f"{number:04d}.png")
    return index


def hand_checked(sheets: Path, answers: list[Path]) -> dict[str, list[dict] | None]:
    """The faces of each hand-checked picture (None: found unusable), from the answers per sheet."""
    index = json.loads((sheets / "index.json").read_text())
    proposals = json.loads((sheets / "proposals.json").read_text())
    checked: dict[str, list[dict] | None] = {}
    for answer in answers:
        for sheet, verdict in json.loads(answer.read_text()).items():
            path = index[sheet]
            if verdict.get("unusable"):
                checked[path] = None
                continue
            kept = [proposals[path][int(k)]["box"] for k in verdict.get("keep", [])]
            boxes = kept + [list(map(round, box)) for box in verdict.get("add", [])]
            checked[path] = [{"box": box, "score": 1.0, "angle": 0.0, "by": "hand"} for box in boxes]
    return checked


def write_labels(
    out: Path, proposal_files: list[tuple[str, Path]], checked: list[tuple[str, Path, list[Path]]]
) -> dict:
    """Labels from (root, proposals file) pairs, a later file's proposals replacing an earlier one's
    for the same picture, and (root, sheets, answers) of the pictures checked by hand."""
    found_by_root: dict[str, dict[str, list[dict]]] = {}
    for root, file in proposal_files:
        found_by_root.setdefault(root, {}).update(json.loads(file.read_text()))
    pictures: dict[str, list[dict]] = {}
    hand: list[str] = []
    unusable: list[str] = []
    for root, found in found_by_root.items():
        fixes = {}
        for checked_root, sheets, answers in checked:
            if checked_root == root:
                fixes.update(hand_checked(sheets, answers))
        for path, proposals in sorted(found.items()):
            key = f"{root}/{path}"
            if path in fixes and fixes[path] is None:
                unusable.append(key)
            elif path in fixes:
                pictures[key] = fixes[path]
                hand.append(key)
            else:
                pictures[key] = proposals
    labels = {
        "about": LABELS_ABOUT,
        "hand_checked": hand,
        "unusable": unusable,
        "pictures": pictures,
    }
    out.write_text(json.dumps(labels, separators=(",", ":")))
    return labels


CROP_SIDE = 160
CROPS_PER_ROW, CROP_ROWS = 6, 6


def unsure_proposals(labels: dict, min_score: float) -> list[dict]:
    """The proposals training leaves out of the loss (tools/train_detector.py: unsure, overlapping no
    sure face) scoring at least `min_score`, on pictures with a sure face that nobody checked whole,
    other than MyAnimeList portraits (where they are background, `labelled_pictures`)."""
    from train_detector import labels_of, source_of

    skipped = set(labels["hand_checked"]) | set(labels["unusable"])
    found = []
    for key, proposals in sorted(labels["pictures"].items()):
        if key in skipped or source_of(key) == "mal-portraits":
            continue
        scores = {tuple(p["box"]): p["score"] for p in proposals}
        kept = labels_of(proposals)
        if any(label.sure for label in kept):
            found += [
                {"picture": key, "box": list(label.box), "score": scores[label.box]}
                for label in kept
                if not label.sure and scores[label.box] >= min_score
            ]
    return found


def write_crop_sheets(crops: list[dict], roots: dict[str, Path], out: Path) -> None:
    """Sheets of numbered crops, each a proposal's box in red with half a side of context around it."""
    per_sheet = CROPS_PER_ROW * CROP_ROWS
    for start in tqdm(range(0, len(crops), per_sheet), desc="crop sheets"):
        sheet = Image.new("RGB", (CROPS_PER_ROW * CROP_SIDE, CROP_ROWS * (CROP_SIDE + 16)), "white")
        pen = ImageDraw.Draw(sheet)
        for slot, crop in enumerate(crops[start : start + per_sheet]):
            root, relative = crop["picture"].split("/", 1)
            x, y, w, h = crop["box"]
            context = w / 2
            cell = load_image(roots[root] / relative).crop((
                round(x - context), round(y - context), round(x + w + context), round(y + h + context)
            ))  # fmt: skip
            across, down = CROP_SIDE / cell.width, CROP_SIDE / cell.height
            cell = cell.resize((CROP_SIDE, CROP_SIDE))
            ImageDraw.Draw(cell).rectangle(
                [context * across, context * down, (context + w) * across, (context + h) * down],
                outline=(255, 0, 0),
                width=2,
            )
            left, top = (slot % CROPS_PER_ROW) * CROP_SIDE, (slot // CROPS_PER_ROW) * (CROP_SIDE + 16)
            sheet.paste(cell, (left, top))
            pen.text((left + 3, top + CROP_SIDE + 2), f"#{start + slot}", fill="black")
        sheet.save(out / f"sheet-{start // per_sheet:02d}.png")


VERDICTS = ("face", "not_face", "unsure")
LABELS_ABOUT = (
    "Training labels of kyara's face detector (tools/train_detector.py): per picture (root/relative path;"
    " roots: pictures = tools/build_data.py's output, shared = ../shared/data), face proposals of"
    " tools/face_proposals.py with the proposer ('by') and its score, or faces boxed or accepted by a person"
    " ('hand'): every face of the pictures listed in hand_checked, and single proposals checked one crop each"
    " (crop-answers); proposals a person found no face under are removed and kept under 'rejected'."
    " Made by: python tools/face_proposals.py labels ..., then crop-answers ..."
)


def crop_verdicts(answers: list[Path], crops: int) -> dict[int, str]:
    """Each crop's answer, from files of {"face": [...], "not_face": [...], "unsure": [...]} that
    together name every crop number once."""
    verdicts: dict[int, str] = {}
    for answer in answers:
        for verdict, numbers in json.loads(answer.read_text()).items():
            if verdict not in VERDICTS:
                raise SystemExit(f"{answer}: unknown answer {verdict!r} (answers: {', '.join(VERDICTS)})")
            for number in numbers:
                if not isinstance(number, int) or number in verdicts:
                    raise SystemExit(f"{answer}: crop {number!r} is not a crop number, or is answered twice")
                verdicts[number] = verdict
    missing, extra = set(range(crops)) - set(verdicts), set(verdicts) - set(range(crops))
    if missing or extra:
        raise SystemExit(f"crops without an answer: {sorted(missing)[:10]}; not crop numbers: {sorted(extra)[:10]}")
    return verdicts


def apply_crop_answers(labels: dict, crops: list[dict], answers: list[Path]) -> dict[str, int]:
    """`labels` with the answers on `crops` folded in (see the module's docstring); returns counts.
    Every crop's proposal is found before anything changes: answers given once cannot be given again."""
    verdicts = crop_verdicts(answers, len(crops))
    found = []
    for number, crop in enumerate(crops):
        matching = [p for p in labels["pictures"][crop["picture"]] if p["box"] == crop["box"] and p["by"] != "hand"]
        if not matching:
            raise SystemExit(f"crop {number}: its proposal is not in the labels (were these answers applied already?)")
        found.append(matching[0])
    rejected = labels.setdefault("rejected", {})
    for number, (crop, proposal) in enumerate(zip(crops, found, strict=True)):
        proposals = labels["pictures"][crop["picture"]]
        if verdicts[number] == "face":
            proposals[proposals.index(proposal)] = proposal | {"score": 1.0, "by": "hand"}
        elif verdicts[number] == "not_face":
            proposals.remove(proposal)
            rejected.setdefault(crop["picture"], []).append(proposal)
    labels["about"] = LABELS_ABOUT
    return {verdict: list(verdicts.values()).count(verdict) for verdict in VERDICTS}


BENCHMARK_KINDS = ("frontal", "tilted", "profile", "male", "occluded", "expressive", "chibi", "closeup", "small")
BENCHMARK_ABOUT = (
    "Hand-checked anime face boxes of kyara's detection benchmark on anime at large"
    " (benchmarks/detection_benchmark.py --boxes benchmarks/detection_boxes_anime.json). Pictures: the"
    " benchmark split of tools/build_data.py (data_root), sources and characters that the detector never"
    " trained on (docs/data.md). How the boxes were made: every picture was drawn with a labelled pixel grid"
    " and the proposals of tools/face_proposals.py; a person accepted proposals by number or boxed the face"
    " by reading the grid (zooming into small or crowded faces), tagged each face's kinds, and marked faces"
    " nobody can be expected to find as ignore (a detection on one counts neither as found nor as false)."
    " Box convention as benchmarks/detection_boxes.json: a square from the hairline to the chin and from ear"
    " to ear, [x, y, w, h] in original pixels. Kinds: frontal / tilted / profile (one of them), male, occluded"
    " (glasses, mask, blindfold, hand), expressive (eyes closed or mouth wide open), chibi, all given by hand;"
    " closeup (box side at least a third of the picture's shorter side) and small (box side under 40 px)"
    " computed from the boxes; image tag grayscale = monochrome picture (95th-percentile chroma <= 8 on a"
    " 128 px thumbnail). These pictures must never be used to train or tune a detector, except the score"
    " threshold as documented in docs/detection.md."
)


def is_grayscale(image: Image.Image) -> bool:
    import numpy as np

    small = np.asarray(image.convert("RGB").resize((128, 128)), np.int16)
    return float(np.percentile(small.max(axis=2) - small.min(axis=2), 95)) <= 8


def write_benchmark(out: Path, sheets: Path, answers: list[Path], root: Path, root_name: str) -> dict:
    index = json.loads((sheets / "index.json").read_text())
    proposals = json.loads((sheets / "proposals.json").read_text())
    images, skipped, hashes = [], [], []
    for answer in answers:
        for sheet, verdict in sorted(json.loads(answer.read_text()).items()):
            path = index[sheet]
            if verdict.get("unusable"):
                skipped.append({"path": path, "reason": verdict["unusable"]})
                continue
            image = load_image(root / path)
            bits = phash(image)
            if any((bits != other).sum() <= NEAR_DUPLICATE_BITS for other in hashes):
                skipped.append({"path": path, "reason": "a near-duplicate of another benchmark picture"})
                continue
            hashes.append(bits)
            faces = []
            for face in verdict.get("faces", []):
                box = proposals[path][int(face["keep"])]["box"] if "keep" in face else list(map(round, face["box"]))
                kinds = [k for k in face.get("kinds", []) if k in BENCHMARK_KINDS]
                if box[2] >= min(image.size) / 3:
                    kinds.append("closeup")
                if max(box[2:]) < 40:
                    kinds.append("small")
                faces.append({"box": box, "kinds": kinds})
            images.append({
                "path": path, "width": image.width, "height": image.height,
                "tags": ["grayscale"] if is_grayscale(image) else [],
                "faces": faces, "ignore": [list(map(round, b)) for b in verdict.get("ignore", [])],
            })  # fmt: skip
    benchmark = {
        "about": BENCHMARK_ABOUT,
        "data_root": root_name,
        "match_iou": 0.4,
        "kinds": list(BENCHMARK_KINDS),
        "image_tags": ["grayscale"],
        "skipped": skipped,
        "images": sorted(images, key=lambda entry: entry["path"]),
    }
    out.write_text(json.dumps(benchmark, indent=1))
    return benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("propose")
    p.add_argument("folder", type=Path)
    p.add_argument("--root", type=Path, default=Path("build/data"))
    p.add_argument("-o", "--out", type=Path, required=True)
    turns = "animeface's turns, degrees (none: no animeface)"
    p.add_argument("--angles", type=float, nargs="*", default=[0.0, -25.0, 25.0], help=turns)
    s = sub.add_parser("sheets")
    s.add_argument("proposals", type=Path)
    s.add_argument("--root", type=Path, default=Path("build/data"))
    s.add_argument("-o", "--out", type=Path, required=True)
    s.add_argument("--per-sheet", type=int, default=1, help="pictures per sheet, in rows of four")
    select = sub.add_parser("select")
    select.add_argument("proposals", type=Path)
    select.add_argument("--sample", type=int, default=96, help="pictures with one sure face to check too")
    select.add_argument("--seed", type=int, default=0)
    select.add_argument("-o", "--out", type=Path, required=True)
    labels = sub.add_parser("labels")
    labels.add_argument("--proposals", nargs="+", required=True, help="ROOT=proposals.json")
    labels.add_argument("--checked", nargs="*", default=[], help="ROOT=SHEETS:ANSWERS.json[,ANSWERS.json]")
    labels.add_argument("-o", "--out", type=Path, required=True)
    crop_sheets = sub.add_parser("crops")
    crop_sheets.add_argument("labels", type=Path)
    crop_sheets.add_argument("--min-score", type=float, default=0.3)
    crop_sheets.add_argument("--data", type=Path, default=Path("../shared/data"))
    crop_sheets.add_argument("--root", type=Path, default=Path("build/data"))
    crop_sheets.add_argument("-o", "--out", type=Path, required=True)
    crop_answers = sub.add_parser("crop-answers")
    crop_answers.add_argument("labels", type=Path)
    crop_answers.add_argument("sheets", type=Path, help="the crops command's output folder")
    crop_answers.add_argument("answers", type=Path, nargs="+")
    bench = sub.add_parser("benchmark")
    bench.add_argument("sheets", type=Path)
    bench.add_argument("answers", type=Path, nargs="+")
    bench.add_argument("--root", type=Path, default=Path("build/data"))
    bench.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "benchmark":
        made = write_benchmark(args.out, args.sheets, args.answers, args.root, args.root.as_posix())
        faces = sum(len(entry["faces"]) for entry in made["images"])
        print(f"{len(made['images'])} pictures, {faces} faces -> {args.out}")
    elif args.command == "crops":
        if (args.out / "crops.json").exists():
            parser.error(f"{args.out} holds crops already, which answers may refer to: choose another folder")
        args.out.mkdir(parents=True, exist_ok=True)
        chosen = unsure_proposals(json.loads(args.labels.read_text()), args.min_score)
        write_crop_sheets(chosen, {"pictures": args.root, "shared": args.data}, args.out)
        (args.out / "crops.json").write_text(json.dumps(chosen, indent=1))
        print(f"{len(chosen)} crops -> {args.out}")
    elif args.command == "crop-answers":
        written = json.loads(args.labels.read_text())
        checked = json.loads((args.sheets / "crops.json").read_text())
        print(apply_crop_answers(written, checked, args.answers))
        args.labels.write_text(json.dumps(written, separators=(",", ":")))
    elif args.command == "select":
        chosen = review_selection(json.loads(args.proposals.read_text()), args.sample, args.seed)
        args.out.write_text(json.dumps(chosen, indent=1))
        print(f"{len(chosen)} pictures to check -> {args.out}")
    elif args.command == "labels":
        files = [(root, Path(file)) for root, file in (item.split("=", 1) for item in args.proposals)]
        checked = []
        for item in args.checked:
            root, rest = item.split("=", 1)
            sheets, answers = rest.split(":", 1)
            checked.append((root, Path(sheets), [Path(a) for a in answers.split(",")]))
        written = write_labels(args.out, files, checked)
        print(f"{len(written['pictures'])} pictures, {len(written['hand_checked'])} checked by hand -> {args.out}")
    elif args.command == "propose":
        found = propose(list_images(args.folder), args.root, tuple(args.angles))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(found, indent=1))
        print(f"{sum(map(len, found.values()))} proposals on {len(found)} pictures -> {args.out}")
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        proposals = json.loads(args.proposals.read_text())
        index = write_sheets(proposals, args.root, args.out, args.per_sheet)
        (args.out / "index.json").write_text(json.dumps(index, indent=1))
        # The numbers drawn on the sheets refer to these proposals.
        (args.out / "proposals.json").write_text(json.dumps(proposals, indent=1))


if __name__ == "__main__":
    main()
