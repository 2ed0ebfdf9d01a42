"""Accuracy reports for a model on a labelled folder: closed-set and few-shot.

An image counts as correct when the face kyara is most confident about carries the folder's name
(the whole-image fallback counts when no face is found). Every figure is also computed on
grayscale copies of the images, to see whether a colour model survives manga pages.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kyara.bundle import atomic_write_bytes
from kyara.classify import Classifier, enrolled_prototypes
from kyara.cut import drawn_gray, gray_cuts
from kyara.dataset import LabelledFile, character_folders, labelled_files
from kyara.errors import ImageError, KyaraError
from kyara.imageio import resolved
from kyara.metrics import expected_calibration_error
from kyara.pipeline import Model, Recognizer, as_recognizer
from kyara.plots import png, pyplot


@dataclass
class EmbeddedImage:
    """The faces of one labelled image, embedded in colour and in grayscale; `drawn_gray`: which
    of them are gray in the picture itself (`FaceCut.gray`)."""

    file: LabelledFile
    colour: np.ndarray
    gray: np.ndarray
    detector_scores: np.ndarray
    face_found: bool
    drawn_gray: np.ndarray


@dataclass
class Report:
    n: int
    top1: float
    top5: float
    macro_f1: float
    per_class: dict[str, float]
    grayscale: dict[str, float]
    shots: int | None
    coverage: float
    ece: float
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    reliability: list[dict[str, float]] = field(default_factory=list)
    grayscale_confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    grayscale_reliability: list[dict[str, float]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "top1": self.top1,
            "top5": self.top5,
            "macro_f1": self.macro_f1,
            "per_class": self.per_class,
            "grayscale": self.grayscale,
            "shots": self.shots,
            "coverage": self.coverage,
            "ece": self.ece,
            "skipped": self.skipped,
        }


def embed_files(recognizer: Recognizer, files: Sequence[LabelledFile]) -> tuple[list[EmbeddedImage], list[dict]]:
    """Detect once per image, then embed each face crop in colour and in grayscale."""
    embedded, skipped = [], []
    for file in tqdm(files, desc="embedding", leave=False):
        try:
            picture = recognizer.load(file.path)
        except ImageError as exc:
            skipped.append({"path": str(file.path), "error": str(exc)})
            continue
        cuts = recognizer.cuts_to_name(picture)
        embedded.append(
            EmbeddedImage(
                file,
                recognizer.embed(cuts),
                recognizer.embed(gray_cuts(picture, cuts)),
                np.array([cut.score for cut in cuts]),
                not cuts[0].fallback,
                drawn_gray(cuts),
            )
        )
    return embedded, skipped


def _best_face_probabilities(classifier: Classifier, faces: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """Probabilities of the face the classifier is most confident about."""
    probabilities = classifier.probabilities(classifier.similarities(faces, gray))
    return probabilities[int(probabilities.max(axis=1).argmax())]


def _score(classifier: Classifier, images: Sequence[EmbeddedImage], gray: bool) -> tuple[np.ndarray, list[str]]:
    rows = [
        _best_face_probabilities(classifier, image.gray, np.ones(len(image.gray), bool))
        if gray
        else _best_face_probabilities(classifier, image.colour, image.drawn_gray)
        for image in images
    ]
    return np.asarray(rows).reshape(len(images), len(classifier.labels)), [image.file.label for image in images]


def _accuracy(probabilities: np.ndarray, truth: Sequence[str], labels: Sequence[str], k: int) -> float:
    if len(truth) == 0:
        return float("nan")
    index = {name: i for i, name in enumerate(labels)}
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float(np.mean([index.get(t, -1) in row for t, row in zip(truth, top)]))


def macro_f1(truth: Sequence[str], predicted: Sequence[str], classes: Sequence[str]) -> float:
    scores = []
    for name in classes:
        tp = sum(t == name and p == name for t, p in zip(truth, predicted))
        fp = sum(t != name and p == name for t, p in zip(truth, predicted))
        fn = sum(t == name and p != name for t, p in zip(truth, predicted))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores)) if scores else float("nan")


def _report(classifier: Classifier, images: Sequence[EmbeddedImage], shots: int | None, skipped: list[dict]) -> Report:
    if not images:
        unread = "; ".join(item["error"] for item in skipped[:5]) + (
            f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        )
        raise KyaraError("no readable images to evaluate" + (f": {unread}" if unread else ""))
    probabilities, truth = _score(classifier, images, gray=False)
    colour = _figures(probabilities, truth, classifier.labels)
    gray = _figures(_score(classifier, images, gray=True)[0], truth, classifier.labels)
    return Report(
        n=len(images),
        top1=colour.top1,
        top5=colour.top5,
        macro_f1=colour.macro_f1,
        per_class=colour.per_class,
        grayscale={
            "top1": gray.top1,
            "top5": gray.top5,
            "macro_f1": gray.macro_f1,
            "ece": gray.ece,
            "per_class": gray.per_class,
        },
        shots=shots,
        coverage=float(np.mean([image.face_found for image in images])),
        ece=colour.ece,
        confusion=colour.confusion,
        reliability=colour.reliability,
        grayscale_confusion=gray.confusion,
        grayscale_reliability=gray.reliability,
        skipped=skipped,
    )


@dataclass
class _Figures:
    top1: float
    top5: float
    macro_f1: float
    per_class: dict[str, float]
    ece: float
    confusion: dict[str, dict[str, int]]
    reliability: list[dict[str, float]]


def _figures(probabilities: np.ndarray, truth: list[str], labels: Sequence[str]) -> _Figures:
    predicted = [labels[i] for i in probabilities.argmax(axis=1)]
    classes = sorted(set(truth))
    correct = np.array([p == t for p, t in zip(predicted, truth)])
    confidence = probabilities.max(axis=1)
    confusion = {name: {} for name in classes}
    for t, p in zip(truth, predicted):
        confusion[t][p] = confusion[t].get(p, 0) + 1
    edges = np.linspace(0, 1, 11)
    reliability = [
        {
            "low": float(lo),
            "high": float(hi),
            "confidence": float(confidence[m].mean()),
            "accuracy": float(correct[m].mean()),
            "n": int(m.sum()),
        }
        for lo, hi in itertools.pairwise(edges)
        if (m := (confidence >= lo) & (confidence < hi if hi < 1 else confidence <= hi)).any()
    ]
    return _Figures(
        top1=_accuracy(probabilities, truth, labels, 1),
        top5=_accuracy(probabilities, truth, labels, 5),
        macro_f1=macro_f1(truth, predicted, classes),
        per_class={name: float(correct[[t == name for t in truth]].mean()) for name in classes},
        ece=expected_calibration_error(confidence, correct),
        confusion=confusion,
        reliability=reliability,
    )


def report_for(classifier: Classifier, images: Sequence[EmbeddedImage]) -> Report:
    """Closed-set figures of `classifier` on images embedded already (see `embed_files`)."""
    return _report(classifier, images, None, [])


def _embed_folders(recognizer: Recognizer, folder: Path | Sequence[Path]) -> tuple[list[EmbeddedImage], list[dict]]:
    roots = [Path(r) for r in ([folder] if isinstance(folder, Path | str) else folder)]
    files = labelled_files(roots)
    present = {file.label for file in files}
    empty = [
        {"path": str(character), "error": f"{character}: no images, character left out"}
        for character in character_folders(roots)
        if character.name not in present
    ]
    images, skipped = embed_files(recognizer, files)
    return images, empty + skipped


def evaluate_folders(
    folder: Path | Sequence[Path],
    model: Model = None,
    shots: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    report: Path | None = None,
) -> Report:
    """`kyara evaluate`: `evaluate`, or `evaluate_few_shot` with `shots`; the report's files are
    written to the folder `report` if given (checked before the long part)."""
    roots = [folder] if isinstance(folder, Path | str) else folder
    if report:
        if any(resolved(report).is_relative_to(resolved(root)) for root in roots):
            # Its plots would be measured as pictures of a character named after it.
            raise KyaraError(f"{report} is inside the folder evaluated; write the report elsewhere")
        check_report_folder(report)
    recognizer = as_recognizer(model)
    result = evaluate_few_shot(recognizer, folder, shots, repeats, seed) if shots else evaluate(recognizer, folder)
    if report:
        write_report(result, report, title=f"{recognizer.name} on {', '.join(map(str, roots))}")
    return result


def evaluate(model: Model, folder: Path | Sequence[Path]) -> Report:
    """Closed-set accuracy of the model on a folder per character."""
    recognizer = as_recognizer(model)
    if not recognizer.classifier.labels:
        raise KyaraError("the model knows no characters: there is nothing to evaluate")
    images, skipped = _embed_folders(recognizer, folder)
    return _report(recognizer.classifier, images, None, skipped)


def evaluate_few_shot(
    model: Model, folder: Path | Sequence[Path], shots: int, repeats: int = 1, seed: int = 0
) -> Report:
    """Enroll `shots` seeded images per character into an empty gallery, query with the rest.

    Only the model's embedder is used, so characters it never trained on can be measured.
    Figures are averaged over `repeats` draws; per-class figures and plots come from the first.
    """
    recognizer = as_recognizer(model)
    images, skipped = _embed_folders(recognizer, folder)
    skipped += _too_few_to_query(images, shots)
    reports = [_few_shot_draw(recognizer, images, shots, seed + r, skipped) for r in range(repeats)]
    first = reports[0]
    for name in ("top1", "top5", "macro_f1", "ece"):
        setattr(first, name, float(np.mean([getattr(r, name) for r in reports])))
        first.grayscale[name] = float(np.mean([r.grayscale[name] for r in reports]))
    return first


def _too_few_to_query(images: list[EmbeddedImage], shots: int) -> list[dict[str, str]]:
    """Characters left out of a few-shot draw: enrolling `shots` pictures would leave none to query."""
    folders: dict[str, list[Path]] = {}
    for image in images:
        folders.setdefault(image.file.label, []).append(image.file.path.parent)
    return [
        {"path": str(paths[0]), "error": f"{label}: {len(paths)} image(s), none left to query after {shots} shots"}
        for label, paths in sorted(folders.items())
        if len(paths) <= shots
    ]


def _few_shot_draw(
    recognizer: Recognizer, images: list[EmbeddedImage], shots: int, seed: int, skipped: list[dict]
) -> Report:
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        by_label.setdefault(image.file.label, []).append(i)
    labels, prototypes, queries = [], [], []
    for label, members in sorted(by_label.items()):
        if len(members) <= shots:
            continue  # nothing would be left to query
        chosen = set(rng.choice(members, shots, replace=False).tolist())
        # Enroll the most face-like face of each picture, as a user enrolling a picture would.
        faces = [(images[i], int(images[i].detector_scores.argmax())) for i in chosen]
        colour = np.stack([image.colour[face] for image, face in faces])
        gray = np.stack([image.gray[face] for image, face in faces])
        prototypes.append(enrolled_prototypes(colour, gray, recognizer.bundle.concentration))
        labels.append(label)
        queries += [images[i] for i in members if i not in chosen]
    if not labels:
        raise KyaraError(f"every character has {shots} images or fewer: nothing left to query")
    known, dim = recognizer.classifier, recognizer.bundle.embedding_dim
    classifier = Classifier.of_characters(labels, prototypes, known.temperature, known.unknown_threshold, None, dim)
    return _report(classifier, queries, shots, skipped)


def write_report(report: Report, folder: Path, title: str = "kyara evaluation") -> list[Path]:
    """report.json, report.md, and confusion and reliability plots, in colour and on grayscale
    copies (`-gray.png`), in `folder`."""
    check_report_folder(folder)
    gray = report.grayscale
    files = {
        "report.json": (json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n").encode(),
        "report.md": _markdown(report, title).encode(),
        "confusion.png": _plot_confusion(report.confusion, f"top-1 {report.top1:.3f}"),
        "reliability.png": _plot_reliability(report.reliability, f"ECE {report.ece:.3f}"),
        "confusion-gray.png": _plot_confusion(
            report.grayscale_confusion, f"grayscale copies, top-1 {gray['top1']:.3f}"
        ),
        "reliability-gray.png": _plot_reliability(report.grayscale_reliability, f"grayscale, ECE {gray['ece']:.3f}"),
    }
    try:
        for name, data in files.items():
            atomic_write_bytes(folder / name, data)
    except OSError as exc:
        raise KyaraError(f"cannot write the report in {folder}: {exc}") from exc
    return [folder / name for name in files]


def check_report_folder(folder: Path) -> None:
    """Fail before a long evaluation, not after it: plots need matplotlib, files a folder."""
    try:
        pyplot()
    except ImportError as exc:
        raise KyaraError(f"report plots need the report extra: pip install 'kyara[report]' ({exc})") from exc
    if folder.exists() and not folder.is_dir():
        raise KyaraError(f"{folder} is a file; give a folder for the report")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KyaraError(f"cannot create the report folder {folder}: {exc}") from exc


def _markdown(report: Report, title: str) -> str:
    gray = report.grayscale
    lines = [
        f"# {title}",
        "",
        f"- images: {report.n} (faces found in {report.coverage:.1%})"
        + (f", {report.shots} shots" if report.shots else ""),
        f"- top-1 {report.top1:.4f}, top-5 {report.top5:.4f}, macro-F1 {report.macro_f1:.4f}, ECE {report.ece:.4f}",
        f"- grayscale copies: top-1 {gray['top1']:.4f}, top-5 {gray['top5']:.4f}, macro-F1 {gray['macro_f1']:.4f}",
        "",
        "| character | accuracy | grayscale | most often mistaken for |",
        "| --- | --- | --- | --- |",
    ]
    for name, accuracy in sorted(report.per_class.items(), key=lambda item: item[1]):
        wrong = {p: c for p, c in report.confusion.get(name, {}).items() if p != name}
        mistaken = ", ".join(f"{p} ({c})" for p, c in sorted(wrong.items(), key=lambda x: -x[1])[:2]) or "-"
        lines.append(f"| {name} | {accuracy:.3f} | {gray['per_class'][name]:.3f} | {mistaken} |")
    return "\n".join(lines) + "\n"


def _plot_confusion(confusion: dict[str, dict[str, int]], caption: str) -> bytes:
    plt = pyplot()

    classes = sorted(confusion)
    columns = classes + sorted({p for row in confusion.values() for p in row} - set(classes))
    matrix = np.array([[confusion[t].get(p, 0) for p in columns] for t in classes], float)
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6, 0.32 * len(columns))
    figure, axes = plt.subplots(figsize=(size, size * len(classes) / len(columns) + 1))
    axes.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axes.set_yticks(range(len(classes)), classes, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"confusion (row-normalised), {caption}")
    figure.tight_layout()
    return png(figure)


def _plot_reliability(reliability: list[dict[str, float]], caption: str) -> bytes:
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axes.plot([b["confidence"] for b in reliability], [b["accuracy"] for b in reliability], "o-", label="kyara")
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(f"reliability ({caption})")
    axes.legend()
    figure.tight_layout()
    return png(figure)
