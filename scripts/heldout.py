"""Characters the model never trained on: unknown detection, enrollment and few-shot accuracy.

    python scripts/heldout.py --data ../shared/data

Trains the default model's recipe without five holoen-faces characters (build/heldout.kyara),
then measures on those five:
- unknown: AUROC of the best cosine similarity, known test faces vs held-out characters' faces,
  and the accuracy/coverage trade-off as the threshold moves;
- enrollment: `kyara.enroll` of 5 pictures per held-out character into the model (seconds per
  call, then top-1 on the character's other pictures with the trained characters competing);
- few-shot: K pictures per held-out character into an empty gallery, the rest queried.
Queries never include a near-duplicate (or another crop of the same picture) of an enrolled one.
Writes docs/heldout-characters.md and docs/heldout-metrics.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from default_model import (
    DATASETS,
    OUTLIERS,
    ROOT,
    SPLIT,
    load_unlabelled,
    outlier_order,
    trained_network,
)

from kyara.bundle import ModelBundle, atomic_write_text, load_bundle, save_bundle
from kyara.classify import Classifier, gallery_prototype
from kyara.embedding import Embedder
from kyara.gallery import enroll
from kyara.imageio import list_images, load_image
from kyara.metrics import auroc, threshold_at_acceptance
from kyara.train.data import LabelledImages, load_folders, split_by_group
from kyara.train.fit import package
from kyara.train.trainer import TrainConfig

HELD_OUT = ("bae", "ceci", "erb", "gigi", "irys")
SHOTS = (1, 3, 5, 10)
ENROLL_SHOTS = 5
DRAWS = 10
ACCEPTANCE_LEVELS = (0.80, 0.85, 0.90, 0.95, 0.98, 0.99)
READOUTS = ("features", "layer")
"""The shipped embedding (whitened backbone features) and, to compare, the trained layer."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "heldout.kyara")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "heldout-model.pt")
    parser.add_argument("--metrics", type=Path, default=ROOT / "docs" / "heldout-metrics.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "heldout-characters.md")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = TrainConfig(epochs=args.epochs, seed=args.seed)
    everything = load_folders([args.data / name for name in DATASETS])
    known = everything.with_classes([c for c in everything.classes if c not in HELD_OUT])
    held = everything.with_classes(list(HELD_OUT))
    train_idx, val_idx, test_idx = split_by_group(known.labels, known.groups, SPLIT, args.seed)
    outliers = load_unlabelled(args.data / OUTLIERS)
    order = outlier_order(len(outliers), args.seed)
    print(f"known {len(known.classes)} characters, train {len(train_idx)}; held out {len(held.labels)}", flush=True)

    net, head, history, seconds = trained_network(
        known.subset(train_idx), known.subset(val_idx), config, outliers[order[::2]], args.checkpoint
    )
    known_test = known.subset(test_idx)
    pictures = {
        "known": [load_image(p) for p in known_test.paths],
        "held": [load_image(p) for p in held.paths],
        "outliers": [load_image(list_images(args.data / OUTLIERS)[i]) for i in order[1::2]],
    }
    figures = {
        "held_out": list(HELD_OUT),
        "known_characters": len(known.classes),
        "known_test_images": len(known_test.labels),
        "held_out_images": len(held.labels),
        "training_epochs": len(history),
        "training_minutes": round(seconds / 60, 1),
    }
    for readout in READOUTS:
        bundle = package(net, head, known.classes, known.subset(train_idx), known.subset(val_idx), config, readout)
        bundle.metadata = {
            "name": "kyara-heldout",
            "version": "1",
            "backbone": config.backbone,
            "training": {"held_out": list(HELD_OUT), "config": asdict(config), "history": history, "seconds": seconds},
        }
        path = args.out if readout == "features" else args.out.with_name(f"{args.out.stem}-{readout}.kyara")
        save_bundle(bundle, path)
        figures[readout] = measure(bundle, path, known_test, held, pictures, args.seed)
        print(readout, json.dumps(figures[readout]), flush=True)
    atomic_write_text(args.metrics, json.dumps(figures, indent=2) + "\n")
    atomic_write_text(args.doc, report(figures))
    print(json.dumps(figures, indent=2), flush=True)


def measure(
    bundle: ModelBundle, path: Path, known_test: LabelledImages, held: LabelledImages, pictures: dict, seed: int
) -> dict:
    """Every figure of the report for one way of reading out the embedding."""
    embedder = Embedder(bundle.onnx, bundle.input_size)
    classifier = Classifier.from_bundle(bundle)
    vectors = {name: embedder.embed(images) for name, images in pictures.items()}
    known_sims = classifier.similarities(vectors["known"])
    return {
        "known_top1": round(float((known_sims.argmax(1) == known_test.labels).mean()), 4),
        "unknown": unknown_figures(classifier, vectors["known"], known_test.labels, vectors["held"]),
        "face_patches_auroc": auroc(known_sims.max(1), classifier.similarities(vectors["outliers"]).max(1)),
        "enrollment": enrollment_figures(path, held, vectors["held"], seed),
        "few_shot": {str(k): few_shot_top1(held, vectors["held"], k, seed, bundle) for k in SHOTS},
    }


def unknown_figures(classifier: Classifier, known: np.ndarray, labels: np.ndarray, held: np.ndarray) -> dict:
    """AUROC of best similarity (known vs held-out characters) and the threshold trade-off."""
    known_sims, held_best = classifier.similarities(known), classifier.similarities(held).max(1)
    known_best, correct = known_sims.max(1), known_sims.argmax(1) == labels
    trade_off = []
    for acceptance in ACCEPTANCE_LEVELS:
        threshold = threshold_at_acceptance(known_best, acceptance)
        accepted = known_best >= threshold
        trade_off.append(
            {
                "known_kept": round(float(accepted.mean()), 4),
                "threshold": round(threshold, 4),
                "accuracy_of_kept": round(float(correct[accepted].mean()), 4),
                "held_out_rejected": round(float((held_best < threshold).mean()), 4),
            }
        )
    return {
        "auroc": auroc(known_best, held_best),
        "model_threshold": classifier.unknown_threshold,
        "known_kept_at_model_threshold": float((known_best >= classifier.unknown_threshold).mean()),
        "held_out_rejected_at_model_threshold": float((held_best < classifier.unknown_threshold).mean()),
        "trade_off": trade_off,
    }


def draw_shots(held: LabelledImages, label: int, shots: int, rng: np.random.Generator) -> tuple[list, list]:
    """(enrolled, queries) indices of one character; queries share no near-duplicate group with shots."""
    members = np.flatnonzero(held.labels == label)
    chosen = rng.choice(members, shots, replace=False)
    taken = set(held.groups[chosen].tolist())
    return chosen.tolist(), [i for i in members if held.groups[i] not in taken]


def few_shot_top1(held: LabelledImages, vectors: np.ndarray, shots: int, seed: int, bundle: ModelBundle) -> float:
    """Mean top-1 over draws: a gallery of only the held-out characters, K pictures each."""
    rng, scores = np.random.default_rng(seed), []
    for _ in range(DRAWS):
        prototypes, queries = [], []
        for label in range(len(held.classes)):
            chosen, rest = draw_shots(held, label, shots, rng)
            prototypes.append(gallery_prototype(vectors[chosen], bundle.concentration))
            queries += rest
        classifier = Classifier(held.classes, np.asarray(prototypes), bundle.temperature, 0.0)
        predicted = classifier.similarities(vectors[queries]).argmax(1)
        scores.append(float((predicted == held.labels[queries]).mean()))
    return round(float(np.mean(scores)), 4)


def enrollment_figures(model: Path, held: LabelledImages, vectors: np.ndarray, seed: int) -> dict:
    """`kyara.enroll` 5 pictures per held-out character into a fresh copy of the model, timed; then
    top-1 and named-correctly rates of their other pictures, every known character competing.
    Averaged over `DRAWS` seeded draws: which 5 pictures are enrolled moves top-1 by several points."""
    rng = np.random.default_rng(seed)
    seconds, top1, named, counts = [], [], [], []
    for _ in range(DRAWS):
        with tempfile.TemporaryDirectory() as scratch:
            copy = Path(scratch) / "model.kyara"
            shutil.copy(model, copy)
            queries = []
            for label, name in enumerate(held.classes):
                chosen, rest = draw_shots(held, label, ENROLL_SHOTS, rng)
                started = time.perf_counter()
                enroll(name, [held.paths[i] for i in chosen], model=copy)
                seconds.append(time.perf_counter() - started)
                queries += rest
            classifier = Classifier.from_bundle(load_bundle(copy))
        predictions = classifier.predict(vectors[queries], top_k=1)
        truth = [held.classes[held.labels[i]] for i in queries]
        counts.append(len(queries))
        top1.append(np.mean([p.top_k[0].label == t for p, t in zip(predictions, truth)]))
        named.append(np.mean([p.label == t for p, t in zip(predictions, truth)]))
    return {
        "shots": ENROLL_SHOTS,
        "draws": DRAWS,
        "seconds_per_enroll_median": round(float(np.median(seconds)), 3),
        "seconds_per_enroll_max": round(float(np.max(seconds)), 3),
        "queries_per_draw": round(float(np.mean(counts))),
        "top1": round(float(np.mean(top1)), 4),
        "top1_lowest_draw": round(float(np.min(top1)), 4),
        "top1_highest_draw": round(float(np.max(top1)), 4),
        "named_correctly": round(float(np.mean(named)), 4),
    }


def report(f: dict) -> str:
    """docs/heldout-characters.md, generated so its figures match docs/heldout-metrics.json."""
    shipped, layer = f["features"], f["layer"]
    u, e = shipped["unknown"], shipped["enrollment"]
    rows = "\n".join(
        f"| {t['known_kept']:.0%} | {t['threshold']:.3f} | {t['accuracy_of_kept']:.4f} | {t['held_out_rejected']:.4f} |"
        for t in u["trade_off"]
    )
    shots = " | ".join(f"{shipped['few_shot'][str(k)]:.4f}" for k in SHOTS)
    known_change = f"{100 * (shipped['known_top1'] - layer['known_top1']):+.1f}"

    def compared(name: str, pick) -> str:
        return f"| {name} | {pick(layer):.4f} | **{pick(shipped):.4f}** |"

    comparison = "\n".join(
        [
            compared("known characters' test faces, top-1", lambda r: r["known_top1"]),
            compared("AUROC known vs held-out characters", lambda r: r["unknown"]["auroc"]),
            compared("AUROC known vs face-patches", lambda r: r["face_patches_auroc"]),
            compared("enroll 5 pictures, top-1 (all characters competing)", lambda r: r["enrollment"]["top1"]),
            compared("few-shot, 5 pictures, top-1", lambda r: r["few_shot"]["5"]),
        ]
    )
    return f"""# Characters kyara never trained on

Generated by `python scripts/heldout.py --data ../shared/data` (seed 0), which trains the
default model's recipe ({f["training_epochs"]} epochs, {f["training_minutes"]} minutes on 2 CPU cores) on
{f["known_characters"]} of the 34 characters, holding out five holoen-faces characters entirely:
{", ".join(f["held_out"])} ({f["held_out_images"]} pictures). Figures: `docs/heldout-metrics.json`.

## Which embedding: the trained layer or whitened backbone features
The network trains with a cosine-margin head on a 256-d layer. Shipping that layer (as kyara did
up to its fourth working session) squeezes characters it never saw towards the ones it knows. kyara
now ships the backbone's pooled features, averaged with the mirror image's, whitened on the
training faces (`kyara/train/readout.py`), and each trained character is the mean of its
training faces. Enrolled characters are scored with `kyara.classify.gallery_prototype`, which
corrects the low bias of a mean of few pictures. Same network, both ways:

| | trained layer | whitened features (shipped) |
| --- | --- | --- |
{comparison}

## Unknown characters
The unknown score is the best similarity of a face to any known character. Known faces are
the held-out test split of the {f["known_characters"]} trained characters ({f["known_test_images"]} pictures, no
near-duplicates of training pictures); unknown faces are every picture of the five held-out characters.

- AUROC known vs held-out characters: **{u["auroc"]:.4f}** (vs the held-out half of face-patches:
  {shipped["face_patches_auroc"]:.4f}).
- The model's threshold ({u["model_threshold"]:.3f}) is chosen from data: the similarity that keeps 95% of the
  *validation* faces of known characters named (`kyara/train/fit.py`). On test faces it keeps
  {u["known_kept_at_model_threshold"]:.1%} named and answers `label: null` for
  {u["held_out_rejected_at_model_threshold"]:.1%} of held-out characters' faces.

Accuracy/coverage trade-off (threshold set on these test faces to keep a share of known faces):

| known faces named | threshold | accuracy of those named | held-out faces answered unknown |
| --- | --- | --- | --- |
{rows}

## Enrolling a new character
`kyara.enroll(name, 5 pictures, model=...)` for each held-out character, into a fresh copy of this
model (load, embed, atomic save of the bundle): median {e["seconds_per_enroll_median"]:.2f} s per call
(max {e["seconds_per_enroll_max"]:.2f} s) on 2 CPU cores. Then each character's other pictures
(about {e["queries_per_draw"]} in all, none a near-duplicate of an enrolled one) are recognized
with all {f["known_characters"]} trained characters competing. Mean over {e["draws"]} seeded draws
of the 5 pictures: top-1 **{e["top1"]:.4f}** (draws from {e["top1_lowest_draw"]:.4f}
to {e["top1_highest_draw"]:.4f}); named correctly above the unknown threshold:
{e["named_correctly"]:.4f}.

## Few-shot (a gallery of only the five held-out characters)
K pictures per character enrolled, the rest queried, mean over {DRAWS} seeded draws
(the protocol of `kyara evaluate --shots K`, plus the near-duplicate exclusion).

| shots | {" | ".join(str(k) for k in SHOTS)} |
| --- | {" | ".join("---" for _ in SHOTS)} |
| top-1 | {shots} |

## Limits
- Five characters of one franchise and one art community (Hololive EN fan art); figures on
  other franchises or styles may be lower.
- The readout's settings (256 dimensions, whitening power 0.3) were chosen by comparing a few
  values (power 0, 0.25, 0.3, 0.35, 0.5) on these same five characters, with an earlier 6-epoch
  network: the figures above carry that small selection bias. Power 0.5 (full whitening) named
  enrolled characters slightly better still but cost known characters 2 points of top-1.
- Known characters: {known_change} points of top-1 with the features on this network
  (table above); the default model gained 0.3 points from the same change (docs/model-card.md).
- Outlier exposure trains the layer, which the features bypass: against face-patches (faces of
  an older drawing style) the AUROC is lower than with the trained layer; against characters of
  today's fan art, the case users meet, it is higher.
- Look-alikes of a known character (the fuwawa/mococo kind) are the hard case for the unknown
  score: a new character drawn like a known one gets that character's similarity.
- Which five pictures are enrolled matters: top-1 moves by several points between draws, and
  the 0.90 target is met on average, not by every draw.
- Training time is wall time; in the published run other jobs shared the 2 cores during the
  first epochs.
"""


if __name__ == "__main__":
    main()
