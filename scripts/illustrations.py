"""Fan art for characters whose training crops are anime screenshots (New Game!).

Half of each character's illustrations (seeded) is enrolled into the model's gallery: per
picture, the detected face most likely to be the folder's character, kept only when that name is
in the face's top 5 (a picture often shows several characters). The other half measures it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from kyara.bundle import ModelBundle
from kyara.classify import Classifier
from kyara.cut import cuts_of, drawn_gray, gray_cuts
from kyara.dataset import LabelledFile, labelled_files
from kyara.errors import ImageError
from kyara.evaluate import embed_files, report_for
from kyara.pipeline import Recognizer

TOP_K = 5


def split_files(root: Path, seed: int) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """(enroll, test): each character's pictures halved at random, the same for a given seed."""
    rng = np.random.default_rng(seed)
    enroll, test = [], []
    by_label: dict[str, list[LabelledFile]] = {}
    for file in labelled_files([root]):
        by_label.setdefault(file.label, []).append(file)
    for files in by_label.values():
        order = rng.permutation(len(files))
        enroll += [files[i] for i in order[: len(files) // 2]]
        test += [files[i] for i in order[len(files) // 2 :]]
    return enroll, test


def enroll_faces(bundle: ModelBundle, files: list[LabelledFile]) -> int:
    """Add the best matching face of each picture to `bundle`'s gallery (with its gray copy, as
    `kyara enroll` does); returns how many."""
    recognizer = Recognizer(bundle)
    labels = recognizer.classifier.labels
    vectors, gray, names = [], [], []
    for file in tqdm(files, desc="illustration faces"):
        try:
            picture = recognizer.load(file.path)
        except ImageError:
            continue
        faces = recognizer.detector.detect(picture)
        if not faces or file.label not in labels:
            continue
        cuts = cuts_of(picture, faces)
        embeddings = recognizer.embed(cuts)
        similarities = recognizer.classifier.similarities(embeddings, drawn_gray(cuts))
        probabilities = recognizer.classifier.probabilities(similarities)
        column = labels.index(file.label)
        best = int(probabilities[:, column].argmax())
        if column in np.argsort(-probabilities[best])[:TOP_K]:
            vectors.append(embeddings[best])
            gray.append(recognizer.embed(gray_cuts(picture, [cuts[best]]))[0])
            names.append(file.label)
    if vectors:
        bundle.add_to_gallery(np.asarray(vectors), names, np.asarray(gray))
    return len(vectors)


def measure(before: ModelBundle, after: ModelBundle, files: list[LabelledFile]) -> dict:
    """Top-1/top-5 of the most confident face on held-out illustrations, without and with them."""
    images, _ = embed_files(Recognizer(after), files)
    models = {"before": before, "after": after}
    reports = {name: report_for(Classifier.from_bundle(model), images) for name, model in models.items()}
    return {
        "test_images": len(images),
        "coverage": reports["after"].coverage,
        **{f"top1_{name}": r.top1 for name, r in reports.items()},
        **{f"top5_{name}": r.top5 for name, r in reports.items()},
    }
