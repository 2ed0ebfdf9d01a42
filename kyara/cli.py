"""The `kyara` command: a thin shell over the Python API."""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from kyara.errors import ImageError, KyaraError
from kyara.imageio import IMAGE_SUFFIXES, list_images
from kyara.index.vectors import SEARCH_EXPANSION
from kyara.train.data import DEFAULT_GRAYSCALE_P

app = typer.Typer(help="Which anime character is in this picture?", no_args_is_help=True, add_completion=False)
err = Console(stderr=True, soft_wrap=True)  # never break a path across lines


def _given_path(value: str | Path) -> Path:
    """A path argument; an empty one (an unset variable) is refused, not read as the current folder."""
    if isinstance(value, str) and not value.strip():
        raise typer.BadParameter("an empty path")
    return Path(value)


def _given_file(value: str | Path) -> Path:
    """A file to write: `_given_path`, and a name ending in '/' (a folder meant) is refused, where
    Path would drop the slash and write a file of the folder's name."""
    if isinstance(value, str) and value.endswith(("/", os.sep)):
        raise typer.BadParameter(f"{value!r} names a folder: give the file's name")
    return _given_path(value)


Paths = Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
ModelOption = Annotated[
    Path | None, typer.Option("--model", parser=_given_path, help="A .kyara model bundle (default: built-in).")
]
DetectorOption = Annotated[
    str | None,
    typer.Option(
        "--detector",
        help="Face detector: cnn (default; kyara's own, fast and precise), cnn-checked (cnn with a second look "
        "at unsure faces: more faces found, about 10 ms more a picture) or animeface (animeface-2009: slow, misses "
        "many faces).",
    ),
]
LandmarksFlag = Annotated[
    bool,
    typer.Option(
        "--landmarks",
        help="Also place each face's eyes, nose, mouth and chin, read its hair, skin and eye colours (in --json; "
        "animeface gives its own) and stand it upright by its eyes where the CNN misread its tilt: ~3 ms a face.",
    ),
]


def _known_precision(value: str | None) -> str | None:
    """An empty --precision ('') is refused with the others: it would have read as the default."""
    from kyara.runtime import PRECISIONS

    if value is not None and value not in PRECISIONS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(PRECISIONS)}")
    return value


PrecisionOption = Annotated[
    str | None,
    typer.Option(
        "--precision",
        callback=_known_precision,
        help="float32 (default) or int8: the networks in 8-bit integers, about 1.6 times the pictures per "
        "second, faces and embeddings slightly different (docs/collection.md). An index keeps the one it was made "
        "with; --reembed with another adopts it.",
    ),
]


def expand_paths(arguments: list[str]) -> list[str]:
    """Folders become their image files and globs their matches; other arguments stay as given."""
    expanded: list[str] = []
    for argument in arguments:
        path = Path(argument)
        try:
            if argument and path.is_dir():  # Path("") is ".": an empty argument (an unset variable) is no folder
                found = [str(p) for p in list_images(path)]
                if not found:
                    err.print(f"[yellow]warning[/yellow] {shown(argument)}: no image files in it", highlight=False)
                expanded += found
                continue
            if not path.exists() and glob.has_magic(argument):
                matches = sorted(glob.glob(argument, recursive=True))
                expanded += [m for m in matches if Path(m).suffix.lower() in IMAGE_SUFFIXES] or [argument]
                continue
        except OSError:
            pass  # an impossible name: load_image reports it for this argument
        expanded.append(argument)
    return expanded


@app.callback()
def _escape_undecodable_names() -> None:
    # A file name that is not valid UTF-8 reaches Python with lone surrogates: print it escaped
    # (JSON stays valid) rather than fail with UnicodeEncodeError half-way through the output.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def command(function: Callable[..., None]) -> Callable[..., None]:
    """`app.command()` with the one mapping of failures to exit statuses (README): a KyaraError
    ends the command with 1 when an input could not be read (ImageError), else with 2 (the
    command could not start: bad model, missing folder, bad options, missing extra)."""

    @functools.wraps(function)
    def run(*args: object, **kwargs: object) -> None:
        try:
            function(*args, **kwargs)
        except KyaraError as exc:
            err.print(f"[red]error[/red] {shown(exc)}", highlight=False)
            raise typer.Exit(1 if isinstance(exc, ImageError) else 2) from None

    return app.command()(run)


def shown(value: object) -> str:
    """User data (paths, names, messages) as rich must print it: literally. Square brackets would
    be read as markup ("kyara[index]" printed as "kyara", "[bold]X" in bold) and control characters
    (an ESC in a file name) would reach the terminal raw."""
    visible = (ch.encode("unicode_escape").decode() if unicodedata.category(ch) == "Cc" else ch for ch in str(value))
    return escape("".join(visible))


def stdout_console() -> Console:
    """The console for tables: as wide as a table needs when the output is not a terminal, so that
    piped or redirected tables never cut a path."""
    return Console() if sys.stdout.isatty() else Console(width=1000)


def needs_extra(extra: str, purpose: str, exc: ImportError) -> KyaraError:
    return KyaraError(f"{purpose} needs the {extra} extra (kyara[{extra}]): {exc}")


def _summarise(unreadable: list[str], document: dict | None, line: str) -> None:
    """Files that could not be read to stderr; then the JSON document if one is given, else the
    summary line; exit status 1 if any file could not be read (the README's rule)."""
    for message in unreadable:
        err.print(f"[yellow]skipped[/yellow] {shown(message)}", highlight=False)
    print(json.dumps(document, ensure_ascii=False, indent=2) if document is not None else line)
    if unreadable:
        raise typer.Exit(1)


def _run_batch(paths: list[str], work) -> tuple[list[dict], bool]:
    """Apply `work(path) -> dict` to each path; a failing file becomes {"path", "error"}."""
    results, failed = [], False
    # A long run says how far it is, on stderr and only at a terminal, so piped JSON stays clean.
    for path in tqdm(expand_paths(paths), desc="pictures", unit="pic", disable=not sys.stderr.isatty(), leave=False):
        try:
            results.append({"path": path, **work(path)})
        except KyaraError as exc:
            failed = True
            err.print(f"[red]error[/red] {shown(exc)}", highlight=False)
            results.append({"path": path, "error": str(exc)})
    return results, failed


@command
def recognize(
    paths: Paths,
    as_json: JsonFlag = False,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many guesses to list per face.")] = 5,
    model: ModelOption = None,
    detector: DetectorOption = None,
    precision: PrecisionOption = None,
    landmarks: LandmarksFlag = False,
) -> None:
    """Name the character of every face in each image."""
    from kyara.detectors import DEFAULT_DETECTOR, get_detector
    from kyara.pipeline import Recognizer
    from kyara.runtime import DEFAULT_PRECISION

    precision = precision or DEFAULT_PRECISION
    finder = get_detector(detector or DEFAULT_DETECTOR, precision, landmarks)
    recognizer = Recognizer(model, finder, precision=precision)
    results, failed = _run_batch(paths, lambda path: recognizer.recognition_report(path, top_k))
    if as_json:
        print(json.dumps({"images": results, "model": recognizer.describe()}, ensure_ascii=False, indent=2))
    else:
        _print_recognitions(results)
    raise typer.Exit(1 if failed else 0)


@command
def detect(
    paths: Paths,
    as_json: JsonFlag = False,
    detector_name: DetectorOption = None,
    precision: PrecisionOption = None,
    landmarks: LandmarksFlag = False,
) -> None:
    """Find the anime faces in each image (boxes and tilt; landmarks and colours with --landmarks)."""
    from kyara.detectors import DEFAULT_DETECTOR, get_detector
    from kyara.pipeline import detection_report
    from kyara.runtime import DEFAULT_PRECISION

    detector = get_detector(detector_name or DEFAULT_DETECTOR, precision or DEFAULT_PRECISION, landmarks)
    results, failed = _run_batch(paths, lambda path: detection_report(path, detector))
    if as_json:
        print(json.dumps({"images": results, "detector": detector.name}, ensure_ascii=False, indent=2))
    else:
        for result in results:
            if "error" not in result:
                boxes = ", ".join(str(f["box"]) for f in result["faces"]) or "no face found"
                print(f"{result['path']}: {boxes}")
    raise typer.Exit(1 if failed else 0)


def _print_recognitions(results: list[dict]) -> None:
    console = stdout_console()
    for result in results:
        if "error" in result:
            continue
        table = Table(title=f"{shown(result['path'])} ({result['width']}x{result['height']})", title_justify="left")
        for column in ("box", "character", "confidence", "other guesses"):
            table.add_column(column)
        for face in result["faces"]:
            guesses = face["top_k"]
            if face["label"]:
                name, others = shown(face["label"]), guesses[1:]
            else:
                name, others = f"[yellow]unknown[/yellow] (closest: {shown(guesses[0]['label'])})", guesses
            if face["fallback"]:
                name += " [dim](no face found, whole image)[/dim]"
            listed = ", ".join(f"{shown(g['label'])} {g['confidence']:.0%}" for g in others)
            # An unknown face's confidence is its closest guess's, listed with the other guesses.
            confidence = f"{face['confidence']:.0%}" if face["label"] else "-"
            table.add_row(str(face["box"]), name, confidence, listed)
        console.print(table)


@command
def evaluate(
    folder: Annotated[
        list[Path], typer.Argument(parser=_given_path, help="One folder per character (several roots allowed).")
    ],
    model: ModelOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write report.json/.md and plots here.", parser=_given_path)
    ] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", min=1, help="Few-shot: enroll K images per character.")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Few-shot draws to average.")] = 1,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    precision: PrecisionOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Measure a model on labelled folders: top-1/top-5, macro-F1, per character, grayscale, calibration."""
    from kyara.evaluate import evaluate_folders
    from kyara.pipeline import Recognizer

    measured = Recognizer(model, precision=precision) if precision else model
    result = evaluate_folders(folder, measured, shots, repeats, seed, report)
    _summarise(
        [s["error"] for s in result.skipped],
        result.to_dict() if as_json else None,
        f"{result.n} images, faces found in {result.coverage:.1%}: top-1 {result.top1:.4f}, "
        f"top-5 {result.top5:.4f}, macro-F1 {result.macro_f1:.4f}, grayscale top-1 {result.grayscale['top1']:.4f}",
    )


@command
def train(
    folder: Annotated[
        list[Path],
        typer.Argument(parser=_given_path, help="One folder per character: face crops or full illustrations."),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Where to write the .kyara model.", parser=_given_file)
    ],
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="finetune (default) or linear: frozen backbone; a new layer and softmax head learn on its "
            "cached features (the MoeFlow baseline).",
        ),
    ] = "finetune",
    start: Annotated[
        str, typer.Option("--from", help="'default' (the built-in anime model), 'imagenet', or a .kyara path.")
    ] = "default",
    backbone: Annotated[
        str, typer.Option("--backbone", help="With --from imagenet: mobilenetv2 or efficientnet_lite0.")
    ] = "mobilenetv2",
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, help="Fine-tuning epochs at most (linear: 30 quick passes).")
    ] = 10,
    input_size: Annotated[int, typer.Option("--input-size", min=32, max=512)] = 128,
    grayscale: Annotated[
        float,
        typer.Option("--grayscale-p", min=0.0, max=1.0, help="Share of training pictures turned gray (manga pages)."),
    ] = DEFAULT_GRAYSCALE_P,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Save progress here each epoch; resume from it if present.", parser=_given_file
        ),
    ] = None,
) -> None:
    """Train a character model from folders of pictures (transfer learning, one command)."""
    try:
        from kyara.train.cli_support import train_command
        from kyara.train.trainer import TrainConfig
    except ImportError as exc:
        raise needs_extra("train", "training", exc) from exc
    config = TrainConfig(
        backbone=backbone,
        mode=mode,
        epochs=epochs,
        input_size=input_size,
        grayscale_p=grayscale,
        seed=seed,
        ood_weight=0.0,
    )
    line, skipped = train_command(folder, output, start, config, checkpoint, warn=_warn_on_stderr)
    err.print(shown(line), highlight=False)
    raise typer.Exit(1 if skipped else 0)  # the README's rule: some file could not be read


@command
def compare(
    folder: Annotated[
        list[Path],
        typer.Argument(parser=_given_path, help="One folder per character: face crops or full illustrations."),
    ],
    report: Annotated[
        Path, typer.Option("--report", help="Writes experiments.md/.json and a plot here.", parser=_given_path)
    ],
    backbones: Annotated[str, typer.Option("--backbones")] = "mobilenetv2,efficientnet_lite0",
    modes: Annotated[str, typer.Option("--modes")] = "linear,finetune",
    sizes: Annotated[str, typer.Option("--sizes", help="Input sizes in pixels.")] = "96,128,160,224",
    grayscale: Annotated[str, typer.Option("--grayscale", help="Grayscale augmentation: off, on or both.")] = "both",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Fine-tuning epochs at most.")] = 6,
    per_character: Annotated[
        int | None, typer.Option("--train-per-character", min=1, help="Training images per character at most.")
    ] = 60,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Train and measure a grid of settings (backbone, mode, input size, grayscale augmentation)."""
    try:
        from kyara.train.compare import compare as run_comparison
        from kyara.train.compare import grid
    except ImportError as exc:
        raise needs_extra("train", "comparing", exc) from exc
    from kyara.detectors import get_detector
    from kyara.train.nets import BACKBONES

    try:
        chosen_backbones, chosen_modes = _choices(backbones, BACKBONES), _choices(modes, ("linear", "finetune"))
        chosen_sizes = [int(size) for size in sizes.split(",")]
        if not all(32 <= size <= 512 for size in chosen_sizes):
            raise ValueError(f"input sizes must be 32 to 512 px, got {sizes}")
        gray = {"off": [False], "on": [True], "both": [False, True]}[grayscale]
    except (ValueError, KeyError) as exc:
        raise KyaraError(f"bad grid option: {exc}") from None
    settings = grid(chosen_backbones, chosen_modes, chosen_sizes, gray)
    rows, skipped = run_comparison(
        folder, report, settings, epochs, per_character, seed, get_detector(), warn=_warn_on_stderr
    )
    best = max(rows, key=lambda r: r["top1"])
    print(f"{len(rows)} settings measured; best top-1 {best['top1']:.4f}; see {report / 'experiments.md'}")
    raise typer.Exit(1 if skipped else 0)  # the README's rule: some file could not be read


def _warn_on_stderr(message: str) -> None:
    err.print(f"[yellow]warning[/yellow] {shown(message)}", highlight=False)


def _choices(listed: str, allowed) -> list[str]:
    chosen = [item.strip() for item in listed.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        raise ValueError(f"{', '.join(unknown) or 'nothing chosen'} (choose from {', '.join(allowed)})")
    return chosen


@command
def crop(
    source: Annotated[
        Path, typer.Argument(parser=_given_path, help="Raw pictures (sub-folders, e.g. one per character, are kept).")
    ],
    target: Annotated[Path, typer.Argument(parser=_given_path, help="Where the face crops go.")],
    margin: Annotated[float, typer.Option("--margin", min=1.0, max=4.0, help="Crop side / face side.")] = 1.4,
    size: Annotated[int, typer.Option("--size", min=32, max=1024, help="Side of the saved crops, px.")] = 192,
    dedupe: Annotated[bool, typer.Option("--dedupe/--keep-duplicates", help="Drop near-duplicate faces.")] = True,
    as_json: JsonFlag = False,
) -> None:
    """Cut the faces out of raw illustrations, ready to train on. Interrupted, run it again: every crop
    is written whole, and the second run writes the same crops (detections are cached)."""
    from kyara.crop import crop_folder

    summary = crop_folder(source, target, None, margin, size, dedupe)
    _summarise(
        summary.unreadable,
        summary.to_dict() if as_json else None,
        f"{summary.images} pictures: {summary.faces} faces found, {summary.written} written to {target}, "
        f"{len(summary.duplicates)} near-duplicates dropped, {len(summary.without_face)} pictures without a face, "
        f"{len(summary.unreadable)} unreadable",
    )


@command
def enroll(
    name: Annotated[str, typer.Argument(help="The character's name (becomes its label).")],
    images: Annotated[list[str], typer.Argument(help="Pictures of the character: face crops or illustrations.")],
    model: ModelOption = None,
    detector: DetectorOption = None,
) -> None:
    """Teach the model a character from a few pictures, without retraining."""
    from kyara.detectors import DEFAULT_DETECTOR
    from kyara.gallery import enroll as enroll_pictures
    from kyara.pipeline import Recognizer

    recognizer = Recognizer(model, detector or DEFAULT_DETECTOR)
    result = enroll_pictures(name, expand_paths(images), recognizer)
    _summarise(result.skipped, None, f"enrolled {result.added} picture(s) of {result.name} into {result.model}")


@command
def forget(name: Annotated[str, typer.Argument()], model: ModelOption = None) -> None:
    """Remove a character (enrolled or trained) from the model."""
    from kyara.gallery import forget as forget_character

    removed = forget_character(name, model)
    print(f"forgot {name} ({removed} vector(s) removed)")


@command
def characters(model: ModelOption = None, as_json: JsonFlag = False) -> None:
    """List the characters the model knows, with image counts."""
    from kyara.gallery import characters as list_characters

    known = list_characters(model)
    if as_json:
        print(json.dumps(known, ensure_ascii=False, indent=2))
        return
    table = Table()
    for column in ("character", "trained on", "enrolled"):
        table.add_column(column)
    for entry in known:
        table.add_row(shown(entry["name"]), str(entry["training_images"] or "-"), str(entry["enrolled_images"] or "-"))
    stdout_console().print(table)


DbOption = Annotated[Path, typer.Option("--db", help="The collection index: a .kyaradb folder.", parser=_given_path)]


@command
def index(
    root: Annotated[
        Path, typer.Argument(parser=_given_path, help="The picture folder to index (searched recursively).")
    ],
    db: DbOption,
    model: ModelOption = None,
    reembed: Annotated[
        bool,
        typer.Option(
            "--reembed", help="Adopt this model's embedder (and --precision): re-embed faces from their stored boxes."
        ),
    ] = False,
    moved: Annotated[bool, typer.Option("--moved", help="The indexed folder has moved to ROOT.")] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Pictures worked on at once here (default: one per core).")
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Do the work on a Ray cluster: 'auto' (the one `ray start` joined), an address, or 'local'. "
            "Needs the cluster extra; the index folder must be reachable from every node.",
        ),
    ] = None,
    precision: PrecisionOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Index the faces of a picture folder for find and search (incremental: run it again to update)."""
    from kyara.index import index_folder

    summary, stats = index_folder(root, db, model, reembed, moved, workers=workers, ray=ray, precision=precision)
    _summarise(
        summary.unreadable,
        {**summary.to_dict(), "index": stats} if as_json else None,
        f"{summary.files} pictures: {summary.added} new, {summary.changed} changed, {summary.moved} moved, "
        f"{summary.reembedded} re-embedded, {summary.unchanged} unchanged, {summary.removed} removed, "
        f"{len(summary.unreadable)} unreadable; {summary.faces} faces written. "
        f"{db}: {stats['files']} pictures, {stats['faces']} faces, {len(stats['characters'])} characters named",
    )
    raise typer.Exit(1 if summary.unreadable else 0)


@command
def find(
    name: Annotated[str, typer.Argument(help="A character the model knows (see `kyara characters`).")],
    db: DbOption,
    model: ModelOption = None,
    min_confidence: Annotated[float, typer.Option("--min-confidence", min=0.0, max=1.0)] = 0.0,
    precision: PrecisionOption = None,
    as_json: JsonFlag = False,
) -> None:
    """List every indexed picture where a character appears, with the face's box and confidence."""
    from kyara.index import find_character

    root, faces, known = find_character(db, name, model, min_confidence, precision)
    if not known:
        unknown = f"{shown(repr(name))} is not a character of the model (see `kyara characters`)"
        err.print(f"[yellow]warning[/yellow] {unknown}", highlight=False)
    if as_json:
        print(json.dumps({"root": root, "name": name, "faces": [f.to_dict() for f in faces]}, ensure_ascii=False))
        return
    title = f"{shown(name)} in {shown(root)}: {len({f.path for f in faces})} pictures"
    table = Table(title=title, title_justify="left")
    for column in ("picture", "box", "confidence"):
        table.add_column(column)
    for face in faces:
        table.add_row(shown(face.path), str(list(face.box)), f"{face.confidence:.0%}")
    stdout_console().print(table)


@command
def search(
    image: Annotated[str, typer.Argument(help="A picture or a face crop.")],
    db: DbOption,
    model: ModelOption = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, max=1000, help="How many similar faces per face.")] = 10,
    expansion: Annotated[
        int,
        typer.Option(
            "--expansion",
            min=1,
            max=100_000,
            help="Search effort in collections of over 50,000 faces: candidates each graph walk keeps "
            "(more finds more of the true nearest faces, slower; docs/collection.md).",
        ),
    ] = SEARCH_EXPANSION,
    precision: PrecisionOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Find the indexed faces most similar to each face of a picture."""
    from kyara.index import search_similar

    root, query = search_similar(db, image, model, top_k, expansion, precision)
    if as_json:
        document = {"root": root, "query": image, "faces": [face.to_dict() for face in query]}
        print(json.dumps(document, ensure_ascii=False, indent=2))
        return
    console = stdout_console()
    for face in query:
        title = f"{shown(image)} face at {list(face.box)}" + (" (no face found, whole image)" if face.fallback else "")
        table = Table(title=title, title_justify="left")
        for column in ("similarity", "picture", "box", "character"):
            table.add_column(column)
        for hit in face.hits:
            label = shown(hit.face.label or "unknown")
            table.add_row(f"{hit.similarity:.3f}", shown(hit.face.path), str(list(hit.face.box)), label)
        console.print(table)


@command
def cluster(
    paths: Paths,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where the cluster folders go.", parser=_given_path)],
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            min=0.01,
            max=2.0,
            help="Cosine distance where groups stop merging (0.75; 0.5 for a linear-mode model).",
        ),
    ] = None,
    min_size: Annotated[int, typer.Option("--min-size", min=1, help="Smaller groups go to noise/.")] = 3,
    force: Annotated[bool, typer.Option("--force", help="Replace the clusters of a non-empty output.")] = False,
    model: ModelOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Group the faces of unlabelled pictures by character: one folder per group, plus noise/."""
    from kyara.cluster import cluster_folder

    summary = cluster_folder(expand_paths(paths), output, model, threshold, min_size, force)
    if not summary.faces:
        _summarise(summary.unreadable, None, "no face found: nothing to group")
        raise typer.Exit(1)
    _summarise(
        summary.unreadable,
        summary.to_dict() if as_json else None,
        f"{summary.faces} faces: {len(summary.clusters)} groups, {summary.noise} in noise/, "
        f"{len(summary.without_face)} pictures without a face; written to {output} (see clusters.json)",
    )
    raise typer.Exit(1 if summary.unreadable else 0)


@command
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    model: ModelOption = None,
    max_body_mb: Annotated[
        float | None, typer.Option("--max-body-mb", min=0.001, help="Largest upload, MiB (default 20).")
    ] = None,
    max_megapixels: Annotated[
        float | None, typer.Option("--max-megapixels", min=0.001, help="Largest image, Mpx (default 20).")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", min=1, help="Images processed at once (default 2).")
    ] = None,
    max_waiting: Annotated[
        int | None,
        typer.Option("--max-waiting", min=0, help="Requests queued for a worker; more get 503 (default 256)."),
    ] = None,
    detector: DetectorOption = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="KYARA_TOKEN", help="Token enroll and remove need (Bearer).")
    ] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="No enrolling or removing at all.")] = False,
    allow_anonymous_writes: Annotated[
        bool, typer.Option("--allow-anonymous-writes", help="Beyond loopback, let anyone change characters.")
    ] = False,
) -> None:
    """Serve the web page and the REST API (docs at /docs); needs the serve extra."""
    try:
        from kyara.admission import Limits
        from kyara.server import serve as serve_forever
    except ImportError as exc:
        raise needs_extra("serve", "serving", exc) from exc
    from kyara.detectors import DEFAULT_DETECTOR

    given = {
        "max_body_bytes": None if max_body_mb is None else round(max_body_mb * 1024 * 1024),
        "max_pixels": None if max_megapixels is None else round(max_megapixels * 1_000_000),
        "concurrency": concurrency,
        "max_waiting": max_waiting,
    }
    limits = Limits(**{name: value for name, value in given.items() if value is not None})
    writes = {"token": token, "read_only": read_only, "allow_anonymous_writes": allow_anonymous_writes}
    serve_forever(host, port, limits, model=model, detector=detector or DEFAULT_DETECTOR, **writes)


@command
def explain(
    image: Annotated[str, typer.Argument(help="The picture to explain.")],
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="Where to write the picture with heat maps (.png, .jpg, .webp).", parser=_given_file
        ),
    ],
    label: Annotated[
        str | None, typer.Option("--label", help="Explain this character instead of each face's best guess.")
    ] = None,
    versus: Annotated[
        str | None, typer.Option("--versus", help="Explain why the label and not this character (blue: for it).")
    ] = None,
    model: ModelOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Show what each face's recognition rests on: a heat map over every face (warm: for the label, blue: against)."""
    from kyara.explanation import explain_to_file

    try:
        explained = explain_to_file(image, output, model, label, versus)
    except OSError as exc:  # from writing `output`: kyara reports what it reads as KyaraError
        err.print(f"[red]error[/red] {shown(output)}: cannot write ({shown(exc.strerror or exc)})", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        faces = [explanation.to_dict() for explanation in explained.explanations]
        document = {"path": image, "output": str(output), "faces": faces, "model": explained.model}
        print(json.dumps(document, ensure_ascii=False))
        return
    for explanation in explained.explanations:
        print(f"{list(explanation.box)}: {explanation.caption}")
    print(f"wrote {output}")
