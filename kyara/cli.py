"""The `kyara` command: a thin shell over the Python API."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kyara.errors import KyaraError
from kyara.imageio import IMAGE_SUFFIXES, list_images

app = typer.Typer(help="Which anime character is in this picture?", no_args_is_help=True, add_completion=False)
err = Console(stderr=True, soft_wrap=True)  # never break a path across lines

Paths = Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
ModelOption = Annotated[Path | None, typer.Option("--model", help="A .kyara model bundle (default: built-in).")]


def expand_paths(arguments: list[str]) -> list[str]:
    """Folders become their image files and globs their matches; other arguments stay as given."""
    expanded: list[str] = []
    for argument in arguments:
        path = Path(argument)
        try:
            if path.is_dir():
                expanded += [str(p) for p in list_images(path)]
                continue
            if not path.exists() and glob.has_magic(argument):
                matches = sorted(glob.glob(argument, recursive=True))
                expanded += [m for m in matches if Path(m).suffix.lower() in IMAGE_SUFFIXES] or [argument]
                continue
        except OSError:
            pass  # an impossible name: load_image reports it for this argument
        expanded.append(argument)
    return expanded


def _or_exit(make):
    """Call `make()`; a KyaraError (a bad model, a broken detector) ends the command with status 2."""
    try:
        return make()
    except KyaraError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _summarise(skipped: list[str], document: dict | None, line: str) -> None:
    """Skipped inputs to stderr; then the JSON document if one is given, else the summary line."""
    for message in skipped:
        err.print(f"[yellow]skipped[/yellow] {message}", highlight=False)
    print(json.dumps(document, ensure_ascii=False, indent=2) if document is not None else line)


def _run_batch(paths: list[str], work) -> tuple[list[dict], bool]:
    """Apply `work(path) -> dict` to each path; a failing file becomes {"path", "error"}."""
    results, failed = [], False
    for path in expand_paths(paths):
        try:
            results.append({"path": path, **work(path)})
        except KyaraError as exc:
            failed = True
            err.print(f"[red]error[/red] {exc}", highlight=False)
            results.append({"path": path, "error": str(exc)})
    return results, failed


@app.command()
def recognize(
    paths: Paths,
    as_json: JsonFlag = False,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many guesses to list per face.")] = 5,
    model: ModelOption = None,
) -> None:
    """Name the character of every face in each image."""
    from kyara.pipeline import Recognizer

    recognizer = _or_exit(lambda: Recognizer(model))

    def work(path: str) -> dict:
        picture = recognizer.load(path)
        faces = recognizer.recognize(picture, top_k)
        return {"width": picture.width, "height": picture.height, "faces": [f.to_dict() for f in faces]}

    results, failed = _run_batch(paths, work)
    if as_json:
        print(json.dumps({"images": results, "model": recognizer.bundle.describe()}, ensure_ascii=False, indent=2))
    else:
        _print_recognitions(results)
    raise typer.Exit(1 if failed else 0)


@app.command()
def detect(paths: Paths, as_json: JsonFlag = False) -> None:
    """Find the anime faces in each image (boxes, landmarks, colours)."""
    from kyara.detection import get_detector
    from kyara.imageio import load_image

    detector = _or_exit(get_detector)

    def work(path: str) -> dict:
        picture = load_image(path)
        faces = detector.detect(picture)
        return {"width": picture.width, "height": picture.height, "faces": [f.to_dict() for f in faces]}

    results, failed = _run_batch(paths, work)
    if as_json:
        print(json.dumps({"images": results, "detector": detector.name}, ensure_ascii=False, indent=2))
    else:
        for result in results:
            if "error" not in result:
                boxes = ", ".join(str(f["box"]) for f in result["faces"]) or "no face found"
                print(f"{result['path']}: {boxes}")
    raise typer.Exit(1 if failed else 0)


def _print_recognitions(results: list[dict]) -> None:
    console = Console()
    for result in results:
        if "error" in result:
            continue
        table = Table(title=f"{result['path']} ({result['width']}x{result['height']})", title_justify="left")
        for column in ("box", "character", "confidence", "other guesses"):
            table.add_column(column)
        for face in result["faces"]:
            guesses = face["top_k"]
            if face["label"]:
                name, others = face["label"], guesses[1:]
            else:
                name, others = f"[yellow]unknown[/yellow] (closest: {guesses[0]['label']})", guesses
            if face["fallback"]:
                name += " [dim](no face found, whole image)[/dim]"
            listed = ", ".join(f"{g['label']} {g['confidence']:.0%}" for g in others)
            table.add_row(str(face["box"]), name, f"{face['confidence']:.0%}", listed)
        console.print(table)


@app.command()
def evaluate(
    folder: Annotated[list[Path], typer.Argument(help="One folder per character (several roots allowed).")],
    model: ModelOption = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write report.json/.md and plots here.")] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", min=1, help="Few-shot: enroll K images per character.")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Few-shot draws to average.")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Measure a model on labelled folders: top-1/top-5, macro-F1, per character, grayscale, calibration."""
    from kyara.evaluate import evaluate as run_evaluation
    from kyara.evaluate import evaluate_few_shot, write_report
    from kyara.pipeline import Recognizer

    try:
        recognizer = Recognizer(model)
        if shots:
            result = evaluate_few_shot(recognizer, folder, shots, repeats, seed)
        else:
            result = run_evaluation(recognizer, folder)
    except KyaraError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if report:
        write_report(result, report, title=f"{recognizer.bundle.name} on {', '.join(map(str, folder))}")
    _summarise(
        [s["error"] for s in result.skipped],
        result.to_dict() if as_json else None,
        f"{result.n} images, faces found in {result.coverage:.1%}: top-1 {result.top1:.4f}, "
        f"top-5 {result.top5:.4f}, macro-F1 {result.macro_f1:.4f}, grayscale top-1 {result.grayscale['top1']:.4f}",
    )


@app.command()
def train(
    folder: Annotated[list[Path], typer.Argument(help="One folder per character: face crops or full illustrations.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .kyara model.")],
    mode: Annotated[str, typer.Option("--mode", help="finetune (default) or linear (frozen backbone).")] = "finetune",
    start: Annotated[
        str, typer.Option("--from", help="'default' (the built-in anime model), 'imagenet', or a .kyara path.")
    ] = "default",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    input_size: Annotated[int, typer.Option("--input-size", min=32, max=512)] = 128,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    checkpoint: Annotated[
        Path | None, typer.Option("--checkpoint", help="Save progress here each epoch; resume from it if present.")
    ] = None,
) -> None:
    """Train a character model from folders of pictures (transfer learning, one command)."""
    try:
        from kyara.train.cli_support import train_command
    except ImportError as exc:
        err.print(f"[red]error[/red] training needs the train extra (torch): {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        train_command(folder, output, mode, start, epochs, input_size, seed, checkpoint, err)
    except KyaraError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


@app.command()
def crop(
    source: Annotated[Path, typer.Argument(help="Raw pictures (sub-folders, e.g. one per character, are kept).")],
    target: Annotated[Path, typer.Argument(help="Where the face crops go.")],
    margin: Annotated[float, typer.Option("--margin", min=1.0, max=4.0, help="Crop side / face side.")] = 1.4,
    size: Annotated[int, typer.Option("--size", min=32, max=1024, help="Side of the saved crops, px.")] = 192,
    dedupe: Annotated[bool, typer.Option("--dedupe/--keep-duplicates", help="Drop near-duplicate faces.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Cut the faces out of raw illustrations, ready to train on."""
    from kyara.crop import crop_folder
    from kyara.detection import get_detector

    if not source.is_dir():
        err.print(f"[red]error[/red] {source}: not a folder", highlight=False)
        raise typer.Exit(2)
    summary = crop_folder(source, target, _or_exit(get_detector), margin, size, dedupe)
    _summarise(
        summary.unreadable,
        summary.to_dict() if as_json else None,
        f"{summary.images} pictures: {summary.faces} faces found, {summary.written} written to {target}, "
        f"{len(summary.duplicates)} near-duplicates dropped, {len(summary.without_face)} pictures without a face, "
        f"{len(summary.unreadable)} unreadable",
    )


@app.command()
def enroll(
    name: Annotated[str, typer.Argument(help="The character's name (becomes its label).")],
    images: Annotated[list[str], typer.Argument(help="Pictures of the character: face crops or illustrations.")],
    model: ModelOption = None,
) -> None:
    """Teach the model a character from a few pictures, without retraining."""
    from kyara.gallery import enroll as enroll_pictures

    result = _or_exit(lambda: enroll_pictures(name, expand_paths(images), model))
    for message in result.skipped:
        err.print(f"[yellow]skipped[/yellow] {message}", highlight=False)
    print(f"enrolled {result.added} picture(s) of {result.name} into {result.model}")


@app.command()
def forget(name: Annotated[str, typer.Argument()], model: ModelOption = None) -> None:
    """Remove a character (enrolled or trained) from the model."""
    from kyara.gallery import forget as forget_character

    removed = _or_exit(lambda: forget_character(name, model))
    print(f"forgot {name} ({removed} vector(s) removed)")


@app.command()
def characters(model: ModelOption = None, as_json: JsonFlag = False) -> None:
    """List the characters the model knows, with image counts."""
    from kyara.gallery import characters as list_characters

    known = _or_exit(lambda: list_characters(model))
    if as_json:
        print(json.dumps(known, ensure_ascii=False, indent=2))
        return
    table = Table()
    for column in ("character", "trained on", "enrolled"):
        table.add_column(column)
    for entry in known:
        table.add_row(entry["name"], str(entry["training_images"] or "-"), str(entry["enrolled_images"] or "-"))
    Console().print(table)
