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
from PIL import ImageOps
from tqdm import tqdm

from kyara.bundle import atomic_write_bytes, atomic_write_text
from kyara.classify import Classifier, gallery_prototype
from kyara.dataset import LabelledFile, labelled_files
from kyara.errors import ImageError, KyaraError
from kyara.metrics import expected_calibration_error
from kyara.pipeline import Recognizer, input_crops
from kyara.plots import png, pyplot


@dataclass
class EmbeddedImage:
    """The faces of one labelled image, embedded in colour and in grayscale."""

    file: LabelledFile
    colour: np.ndarray
    gray: np.ndarray
    detector_scores: np.ndarray
    face_found: bool


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
        faces = recognizer.detector.detect(picture)
        gray = ImageOps.grayscale(picture).convert("RGB")
        embedded.append(
            EmbeddedImage(
                file,
                recognizer.embedder.embed(input_crops(picture, faces)),
                recognizer.embedder.embed(input_crops(gray, faces)),
                np.array([f.score for f in faces] or [0.0]),
                bool(faces),
            )
        )
    return embedded, skipped


def _best_face_probabilities(classifier: Classifier, faces: np.ndarray) -> np.ndarray:
    """Probabilities of the face the classifier is most confident about."""
    probabilities = classifier.probabilities(classifier.similarities(faces))
    return probabilities[int(probabilities.max(axis=1).argmax())]


def _score(classifier: Classifier, images: Sequence[EmbeddedImage], gray: bool) -> tuple[np.ndarray, list[str]]:
    rows = [_best_face_probabilities(classifier, image.gray if gray else image.colour) for image in images]
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
        raise KyaraError("no readable images to evaluate")
    probabilities, truth = _score(classifier, images, gray=False)
    gray_probabilities, _ = _score(classifier, images, gray=True)
    predicted = [classifier.labels[i] for i in probabilities.argmax(axis=1)]
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
    return Report(
        n=len(images),
        top1=_accuracy(probabilities, truth, classifier.labels, 1),
        top5=_accuracy(probabilities, truth, classifier.labels, 5),
        macro_f1=macro_f1(truth, predicted, classes),
        per_class={name: float(correct[[t == name for t in truth]].mean()) for name in classes},
        grayscale={
            "top1": _accuracy(gray_probabilities, truth, classifier.labels, 1),
            "top5": _accuracy(gray_probabilities, truth, classifier.labels, 5),
        },
        shots=shots,
        coverage=float(np.mean([image.face_found for image in images])),
        ece=expected_calibration_error(confidence, correct),
        confusion=confusion,
        reliability=reliability,
        skipped=skipped,
    )


def report_for(classifier: Classifier, images: Sequence[EmbeddedImage]) -> Report:
    """Closed-set figures of `classifier` on images embedded already (see `embed_files`)."""
    return _report(classifier, images, None, [])


def _embed_folders(recognizer: Recognizer, folder: Path | Sequence[Path]) -> tuple[list[EmbeddedImage], list[dict]]:
    roots = [folder] if isinstance(folder, Path | str) else list(folder)
    return embed_files(recognizer, labelled_files([Path(r) for r in roots]))


def evaluate(recognizer: Recognizer, folder: Path | Sequence[Path]) -> Report:
    """Closed-set accuracy of `recognizer`'s model on a folder per character."""
    images, skipped = _embed_folders(recognizer, folder)
    return _report(recognizer.classifier, images, None, skipped)


def evaluate_few_shot(
    recognizer: Recognizer, folder: Path | Sequence[Path], shots: int, repeats: int = 1, seed: int = 0
) -> Report:
    """Enroll `shots` seeded images per character into an empty gallery, query with the rest.

    Only the model's embedder is used, so characters it never trained on can be measured.
    Figures are averaged over `repeats` draws; per-class figures and plots come from the first.
    """
    images, skipped = _embed_folders(recognizer, folder)
    reports = [_few_shot_draw(recognizer, images, shots, seed + r, skipped) for r in range(repeats)]
    first = reports[0]
    for name in ("top1", "top5", "macro_f1", "ece"):
        setattr(first, name, float(np.mean([getattr(r, name) for r in reports])))
    first.grayscale = {k: float(np.mean([r.grayscale[k] for r in reports])) for k in first.grayscale}
    return first


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
        enrolled = np.stack([images[i].colour[int(images[i].detector_scores.argmax())] for i in chosen])
        labels.append(label)
        prototypes.append(gallery_prototype(enrolled, recognizer.bundle.concentration))
        queries += [images[i] for i in members if i not in chosen]
    if not labels:
        raise KyaraError(f"every character has {shots} images or fewer: nothing left to query")
    vectors = np.asarray(prototypes, np.float32)
    classifier = Classifier(labels, vectors, recognizer.classifier.temperature, recognizer.classifier.unknown_threshold)
    return _report(classifier, queries, shots, skipped)


def write_report(report: Report, folder: Path, title: str = "kyara evaluation") -> list[Path]:
    """report.json, report.md, confusion.png and reliability.png in `folder`."""
    written = [folder / "report.json", folder / "report.md", folder / "confusion.png", folder / "reliability.png"]
    atomic_write_text(written[0], json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(written[1], _markdown(report, title))
    atomic_write_bytes(written[2], _plot_confusion(report))
    atomic_write_bytes(written[3], _plot_reliability(report))
    return written


def _markdown(report: Report, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        f"- images: {report.n} (faces found in {report.coverage:.1%})"
        + (f", {report.shots} shots" if report.shots else ""),
        f"- top-1 {report.top1:.4f}, top-5 {report.top5:.4f}, macro-F1 {report.macro_f1:.4f}, ECE {report.ece:.4f}",
        f"- grayscale: top-1 {report.grayscale['top1']:.4f}, top-5 {report.grayscale['top5']:.4f}",
        "",
        "| character | accuracy | most often mistaken for |",
        "| --- | --- | --- |",
    ]
    for name, accuracy in sorted(report.per_class.items(), key=lambda item: item[1]):
        wrong = {p: c for p, c in report.confusion.get(name, {}).items() if p != name}
        mistaken = ", ".join(f"{p} ({c})" for p, c in sorted(wrong.items(), key=lambda x: -x[1])[:2]) or "-"
        lines.append(f"| {name} | {accuracy:.3f} | {mistaken} |")
    return "\n".join(lines) + "\n"


def _plot_confusion(report: Report) -> bytes:
    plt = pyplot()

    classes = sorted(report.per_class)
    columns = classes + sorted({p for row in report.confusion.values() for p in row} - set(classes))
    matrix = np.array([[report.confusion[t].get(p, 0) for p in columns] for t in classes], float)
    matrix /= np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(6, 0.32 * len(columns))
    figure, axes = plt.subplots(figsize=(size, size * len(classes) / len(columns) + 1))
    axes.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axes.set_yticks(range(len(classes)), classes, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"confusion (row-normalised), top-1 {report.top1:.3f}")
    figure.tight_layout()
    return png(figure)


def _plot_reliability(report: Report) -> bytes:
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    axes.plot(
        [b["confidence"] for b in report.reliability], [b["accuracy"] for b in report.reliability], "o-", label="kyara"
    )
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(f"reliability (ECE {report.ece:.3f})")
    axes.legend()
    figure.tight_layout()
    return png(figure)
