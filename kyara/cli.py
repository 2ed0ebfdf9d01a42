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
from kyara.imageio import list_images

app = typer.Typer(help="Which anime character is in this picture?", no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

Paths = Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
ModelOption = Annotated[Path | None, typer.Option("--model", help="A .kyara model bundle (default: built-in).")]


def expand_paths(arguments: list[str]) -> list[str]:
    """Folders become their image files and globs their matches; other arguments stay as given."""
    expanded: list[str] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            expanded += [str(path / p.relative_to(path)) for p in list_images(path)]
        elif not path.exists() and glob.has_magic(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            expanded += [m for m in matches if not Path(m).is_dir()] or [argument]
        else:
            expanded.append(argument)
    return expanded


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

    try:
        recognizer = Recognizer(model)
    except KyaraError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None

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

    detector = get_detector()

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
            name = face["label"] or "[yellow]unknown[/yellow]"
            if face["fallback"]:
                name += " [dim](no face found, whole image)[/dim]"
            others = ", ".join(f"{g['label']} {g['confidence']:.0%}" for g in face["top_k"][1:4])
            table.add_row(str(face["box"]), name, f"{face['confidence']:.0%}", others)
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
        missing = [str(f) for f in folder if not f.is_dir()]
        if missing:
            raise KyaraError(f"not a folder: {', '.join(missing)}")
        if shots:
            result = evaluate_few_shot(recognizer, folder, shots, repeats, seed)
        else:
            result = run_evaluation(recognizer, folder)
    except KyaraError as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if report:
        write_report(result, report, title=f"{recognizer.bundle.name} on {', '.join(map(str, folder))}")
    for skipped in result.skipped:
        err.print(f"[yellow]skipped[/yellow] {skipped['error']}", highlight=False)
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(
            f"{result.n} images, faces found in {result.coverage:.1%}: top-1 {result.top1:.4f}, "
            f"top-5 {result.top5:.4f}, macro-F1 {result.macro_f1:.4f}, grayscale top-1 {result.grayscale['top1']:.4f}"
        )


@app.command()
def train(
    folder: Annotated[list[Path], typer.Argument(help="One folder per character: face crops or full illustrations.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .kyara model.")],
    mode: Annotated[str, typer.Option("--mode", help="finetune (default) or linear (frozen backbone).")] = "finetune",
    start: Annotated[
        str, typer.Option("--from", help="'default' (the built-in anime model), 'imagenet', or a .kyara path.")
    ] = "default",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 12,
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
    except (KyaraError, ValueError) as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
