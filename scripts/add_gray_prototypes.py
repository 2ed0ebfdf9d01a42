"""Give the shipped default model gray prototypes, without training, and measure what they change.

    git show 9803e90:kyara/models/default.kyara > build/default-0.3.0.kyara   # the model it was run on
    python scripts/add_gray_prototypes.py --model build/default-0.3.0.kyara  # same corpus and seed

`kyara.train.fit.package` now makes, for each trained character, a second prototype from gray copies
of its training faces (`gray_prototypes`), and enrolling a picture keeps its gray copy's embedding
too; a face drawn in gray is named against the gray prototypes (kyara/classify.py). The default
model 0.3.0 was built before that. This computes the same for it through ONNX Runtime: the gray
prototypes from the same training split; the gallery of fan-art faces enrolled again from the same
pictures (the same faces, checked) with their gray copies; the temperature and the unknown threshold
recalibrated on the validation split (`calibrated`). It measures the test split before and after,
measures the framing and fan-art figures again, and writes the model (0.5.0), its metrics and its
card. A model built by scripts/default_model.py today has all of it already.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
from pathlib import Path

import illustrations
import numpy as np
from corpus import ROOT, corpus_arguments, load_corpus
from default_model import ILLUSTRATIONS, SHIPPED_FIGURES, embed_test, evaluate_bundle, framing_figures, model_card
from PIL import Image
from recipe import SPLIT

from kyara.bundle import ModelBundle, atomic_write_text, load_bundle, save_bundle
from kyara.embedding import Embedder
from kyara.train.data import split_by_group
from kyara.train.fit import calibrated, gray_prototypes

COMPARED = ("top1", "top5", "grayscale_top1", "manga_top1", "known_accepted", "accuracy_of_accepted", "ece")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus_arguments(parser)
    parser.add_argument("--model", type=Path, default=ROOT / "kyara" / "models" / "default.kyara", help="0.3.0")
    parser.add_argument("--out", type=Path, default=ROOT / "kyara" / "models" / "default.kyara")
    parser.add_argument("--metrics", type=Path, default=ROOT / "docs" / "default-model-metrics.json")
    parser.add_argument("--card", type=Path, default=ROOT / "docs" / "model-card.md")
    args = parser.parse_args()

    shipped = load_bundle(args.model)
    if shipped.gray_head is not None:
        parser.error(f"{args.model} has gray prototypes already")
    data = load_corpus(args.data, args.faces, args.cache).images
    if data.classes != shipped.labels:
        parser.error("the corpus does not hold the model's characters: build it as scripts/default_model.py says")
    train_idx, val_idx, test_idx = split_by_group(data.labels, data.groups, SPLIT, args.seed)
    embedder = Embedder(shipped.onnx, shipped.input_size)

    def embed(pixels: np.ndarray) -> np.ndarray:
        return embedder.embed([Image.fromarray(p) for p in pixels])

    gray_head = gray_prototypes(embed, data.subset(train_idx))
    val = data.subset(val_idx)
    typical = np.asarray(shipped.typical)
    val_vectors = embed(val.pixels)
    temperature, threshold, _ = calibrated(shipped.labels, shipped.head, gray_head, typical, val_vectors, val)
    enroll_files, illustration_test = illustrations.split_files(args.data / ILLUSTRATIONS, args.seed)
    enrolled = _without_gallery(shipped)
    illustrations.enroll_faces(enrolled, enroll_files)
    same_faces = enrolled.gallery.shape == shipped.gallery.shape and np.allclose(
        enrolled.gallery, shipped.gallery, atol=1e-3
    )
    if enrolled.gallery_labels != shipped.gallery_labels or not same_faces:
        parser.error(f"{args.model}'s gallery holds other faces than those enrolled again: another model or data")
    upgraded = replace(
        shipped,
        gray_head=gray_head,
        gallery_gray=enrolled.gallery_gray,
        temperature=temperature,
        unknown_threshold=threshold,
        metadata=copy.deepcopy(shipped.metadata),
    )

    test_set = data.subset(test_idx)
    vectors = embed_test(shipped, test_set)
    figures = {}
    for name, bundle in (("before", shipped), ("after", upgraded)):
        trained_only = evaluate_bundle(_without_gallery(bundle), test_set, vectors)
        figures[name] = {key: trained_only[key] for key in COMPARED}
        figures[name]["as_shipped"] = {key: evaluate_bundle(bundle, test_set, vectors)[key] for key in SHIPPED_FIGURES}
        if name == "after":
            upgraded.metadata["metrics"].update({key: trained_only[key] for key in (*COMPARED, "per_source")})
            upgraded.metadata["metrics"]["per_character"] = trained_only["per_character"]
            upgraded.metadata["metrics"]["as_shipped"] = figures[name]["as_shipped"]
    upgraded.metadata["metrics"]["framing"] = framing_figures(upgraded, test_set, args.seed)
    upgraded.metadata["metrics"]["illustrations"] = {
        "enrolled_faces": len(upgraded.gallery_labels),
        "enrolled_from": len(enroll_files),
        **illustrations.measure(_without_gallery(upgraded), upgraded, illustration_test),
    }
    upgraded.metadata["version"] = "0.5.0"
    upgraded.metadata["metrics"]["gray_prototypes"] = {
        "command": "python scripts/add_gray_prototypes.py",
        "temperature": {"before": shipped.temperature, "after": temperature},
        "unknown_threshold": {"before": shipped.unknown_threshold, "after": threshold},
        **figures,
    }
    save_bundle(upgraded, args.out)
    written = json.loads(args.metrics.read_text())
    written.update(upgraded.metadata)
    atomic_write_text(args.metrics, json.dumps(written, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(args.card, model_card(upgraded.metadata, upgraded))
    print(json.dumps(upgraded.metadata["metrics"]["gray_prototypes"], indent=2))


def _without_gallery(bundle: ModelBundle) -> ModelBundle:
    nothing = np.zeros((0, bundle.embedding_dim), np.float32)
    return replace(bundle, gallery=nothing, gallery_gray=nothing, gallery_labels=[])


if __name__ == "__main__":
    main()
