"""Characters the model never trained on: unknown detection, enrollment and few-shot accuracy.

    python -m kyara.train.heldout --data ../shared/data

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

from kyara.bundle import atomic_write_text, load_bundle, save_bundle
from kyara.classify import Classifier
from kyara.embedding import Embedder
from kyara.gallery import enroll
from kyara.imageio import list_images, load_image
from kyara.metrics import auroc, threshold_at_acceptance
from kyara.train.data import LabelledImages, load_folders, split_by_group
from kyara.train.default_model import (
    DATASETS,
    OUTLIERS,
    SPLIT,
    load_unlabelled,
    outlier_order,
    trained_network,
)
from kyara.train.fit import package
from kyara.train.trainer import TrainConfig

HELD_OUT = ("bae", "ceci", "erb", "gigi", "irys")
SHOTS = (1, 3, 5, 10)
ENROLL_SHOTS = 5
DRAWS = 10
ACCEPTANCE_LEVELS = (0.80, 0.85, 0.90, 0.95, 0.98, 0.99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("build/heldout.kyara"))
    parser.add_argument("--checkpoint", type=Path, default=Path("build/heldout-model.pt"))
    parser.add_argument("--metrics", type=Path, default=Path("docs/heldout-metrics.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/heldout-characters.md"))
    parser.add_argument("--epochs", type=int, default=6)
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
    bundle = package(net, head, known.classes, known.subset(val_idx), config)
    bundle.metadata = {
        "name": "kyara-heldout",
        "version": "1",
        "backbone": config.backbone,
        "training": {"held_out": list(HELD_OUT), "config": asdict(config), "history": history, "seconds": seconds},
    }
    save_bundle(bundle, args.out)

    embedder = Embedder(bundle.onnx, bundle.input_size)
    classifier = Classifier.from_bundle(bundle)
    known_test = known.subset(test_idx)
    known_vectors = embedder.embed([load_image(p) for p in known_test.paths])
    held_vectors = embedder.embed([load_image(p) for p in held.paths])
    outlier_vectors = embedder.embed([load_image(list_images(args.data / OUTLIERS)[i]) for i in order[1::2]])
    figures = {
        "held_out": list(HELD_OUT),
        "known_characters": len(known.classes),
        "known_test_images": len(known_test.labels),
        "held_out_images": len(held.labels),
        "training_epochs": len(history),
        "training_minutes": round(seconds / 60, 1),
        "unknown": unknown_figures(classifier, known_vectors, known_test.labels, held_vectors),
        "face_patches_auroc": auroc(
            classifier.similarities(known_vectors).max(1), classifier.similarities(outlier_vectors).max(1)
        ),
        "enrollment": enrollment_figures(args.out, held, held_vectors, args.seed),
        "few_shot": {str(k): few_shot_top1(held, held_vectors, k, args.seed, bundle.temperature) for k in SHOTS},
    }
    atomic_write_text(args.metrics, json.dumps(figures, indent=2) + "\n")
    atomic_write_text(args.doc, report(figures))
    print(json.dumps(figures, indent=2), flush=True)


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


def few_shot_top1(held: LabelledImages, vectors: np.ndarray, shots: int, seed: int, temperature: float) -> float:
    """Mean top-1 over draws: a gallery of only the held-out characters, K pictures each."""
    rng, scores = np.random.default_rng(seed), []
    for _ in range(DRAWS):
        prototypes, queries = [], []
        for label in range(len(held.classes)):
            chosen, rest = draw_shots(held, label, shots, rng)
            prototypes.append(vectors[chosen].mean(axis=0))
            queries += rest
        gallery = np.asarray(prototypes) / np.linalg.norm(prototypes, axis=1, keepdims=True)
        classifier = Classifier(held.classes, gallery, temperature, 0.0)
        predicted = classifier.similarities(vectors[queries]).argmax(1)
        scores.append(float((predicted == held.labels[queries]).mean()))
    return round(float(np.mean(scores)), 4)


def enrollment_figures(model: Path, held: LabelledImages, vectors: np.ndarray, seed: int) -> dict:
    """`kyara.enroll` 5 pictures per held-out character into a copy of the model, timed; then
    top-1 and named-correctly rates of their other pictures, every known character competing."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "model.kyara"
        shutil.copy(model, copy)
        seconds, queries = [], []
        for label, name in enumerate(held.classes):
            chosen, rest = draw_shots(held, label, ENROLL_SHOTS, rng)
            started = time.perf_counter()
            enroll(name, [held.paths[i] for i in chosen], model=copy)
            seconds.append(time.perf_counter() - started)
            queries += rest
        classifier = Classifier.from_bundle(load_bundle(copy))
    predictions = classifier.predict(vectors[queries], top_k=1)
    truth = [held.classes[held.labels[i]] for i in queries]
    top1 = [p.top_k[0].label == t for p, t in zip(predictions, truth)]
    named = [p.label == t for p, t in zip(predictions, truth)]
    return {
        "shots": ENROLL_SHOTS,
        "seconds_per_enroll_median": round(float(np.median(seconds)), 3),
        "seconds_per_enroll_max": round(float(np.max(seconds)), 3),
        "queries": len(queries),
        "top1": round(float(np.mean(top1)), 4),
        "named_correctly": round(float(np.mean(named)), 4),
    }


def report(f: dict) -> str:
    """docs/heldout-characters.md, generated so its figures match docs/heldout-metrics.json."""
    u, e = f["unknown"], f["enrollment"]
    rows = "\n".join(
        f"| {t['known_kept']:.0%} | {t['threshold']:.3f} | {t['accuracy_of_kept']:.4f} | {t['held_out_rejected']:.4f} |"
        for t in u["trade_off"]
    )
    shots = " | ".join(f"{f['few_shot'][str(k)]:.4f}" for k in SHOTS)
    return f"""# Characters kyara never trained on

Generated by `python -m kyara.train.heldout --data ../shared/data` (seed 0), which trains the
default model's recipe ({f["training_epochs"]} epochs, {f["training_minutes"]} minutes on 2 CPU cores) on
{f["known_characters"]} of the 34 characters, holding out five holoen-faces characters entirely:
{", ".join(f["held_out"])} ({f["held_out_images"]} pictures). Figures: `docs/heldout-metrics.json`.

## Unknown characters
The unknown score is the best cosine similarity of a face to any known character. Known faces are
the held-out test split of the {f["known_characters"]} trained characters ({f["known_test_images"]} pictures, no
near-duplicates of training pictures); unknown faces are every picture of the five held-out characters.

- AUROC known vs held-out characters: **{u["auroc"]:.4f}** (vs the held-out half of face-patches:
  {f["face_patches_auroc"]:.4f}).
- The model's threshold ({u["model_threshold"]:.3f}) is chosen from data: the similarity that keeps 95% of the
  *validation* faces of known characters named (`kyara/train/fit.py`). On test faces it keeps
  {u["known_kept_at_model_threshold"]:.1%} named and answers `label: null` for
  {u["held_out_rejected_at_model_threshold"]:.1%} of held-out characters' faces.

Accuracy/coverage trade-off (threshold set on these test faces to keep a share of known faces):

| known faces named | threshold | accuracy of those named | held-out faces answered unknown |
| --- | --- | --- | --- |
{rows}

## Enrolling a new character
`kyara.enroll(name, 5 pictures, model=...)` for each held-out character, into a copy of this model
(load, embed, atomic save of the bundle): median {e["seconds_per_enroll_median"]:.2f} s per call (max
{e["seconds_per_enroll_max"]:.2f} s) on 2 CPU cores. Then each character's other pictures ({e["queries"]}, none a
near-duplicate of an enrolled one) are recognized with all {f["known_characters"]} trained characters competing:
top-1 **{e["top1"]:.4f}**; named correctly above the unknown threshold: {e["named_correctly"]:.4f}.

## Few-shot (a gallery of only the five held-out characters)
K pictures per character enrolled, the rest queried, mean over {DRAWS} seeded draws
(the protocol of `kyara evaluate --shots K`, plus the near-duplicate exclusion).

| shots | {" | ".join(str(k) for k in SHOTS)} |
| --- | {" | ".join("---" for _ in SHOTS)} |
| top-1 | {shots} |

## Limits
- Five characters of one franchise and one art community (Hololive EN fan art); figures on
  other franchises or styles may be lower.
- Look-alikes of a known character (the fuwawa/mococo kind) are the hard case for the unknown
  score: a new character drawn like a known one gets that character's similarity.
- Training time is wall time on the machine as it was: during the published run it was shared
  with other jobs (load average 5 to 10); alone, the same 6 epochs take about 20 minutes.
- Targets not met yet: AUROC >= 0.95, >= 90% top-1 after enrolling 5 pictures, >= 90% at 5 shots.
  The trained characters win too often against a prototype averaged from 5 pictures. Tried on
  these embeddings: mirrored copies averaged into each embedding, and the best single enrolled
  picture instead of the average, gain 3 to 6 points of enrollment top-1 together (0.75 -> 0.80);
  in the few-shot protocol mirrored copies add less than a point (5 shots: 0.875 -> 0.883), and
  centring embeddings on the known characters' mean adds nothing;
  a bonus on enrolled characters' similarity only moves errors: +0.1 gives 0.80 to 0.83
  enrollment top-1 but known characters' top-1 falls from 0.96 to 0.91-0.94 (3 draws);
  the larger gain needs a better embedding (more epochs and characters than this run had).
"""


if __name__ == "__main__":
    main()
