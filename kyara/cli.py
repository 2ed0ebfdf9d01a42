"""The `kyara` command: a thin shell over the Python API."""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from kyara.errors import KyaraError
from kyara.imageio import list_images

app = typer.Typer(help="Which anime character is in this picture?", no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

Paths = Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
ModelOption = Annotated[Optional[Path], typer.Option("--model", help="A .kyara model bundle (default: built-in).")]


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
