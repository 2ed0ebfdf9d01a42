"""Study: would another unknown score, read from the same similarities, tell new characters better?

    python scripts/heldout.py           # first: the held-out study's model, build/heldout.kyara
    python scripts/unknown_scores.py    # about 2 minutes: embeds the known test and held-out faces

kyara answers unknown when a face's familiarity (its best similarity less that character's typical
similarity, `Classifier.familiarity`) falls short of the model's threshold. Candidates measured
here, each an AUROC of known test faces against the held-out series' faces (and the held-out
Hololive EN ones), on the held-out study's model:
- `margin`: best similarity less the second best (ambiguous faces are new ones);
- `familiarity + w * margin`;
- `energy`: T * log sum exp((similarity - typical) / T) over every character;
- `nearest training faces`: mean similarity with the k most similar of 4,000 training faces.
A weight chosen on some series must hold on the others: each is also given on two halves of the
held-out series. Writes docs/unknown-scores.json and docs/unknown-scores.md.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from corpus import HELD_OUT_HOLOEN, ROOT, corpus_arguments, load_corpus, series_of
from heldout import embedded, held_out_split, members_of

from kyara.bundle import atomic_write_text, load_bundle
from kyara.classify import Classifier
from kyara.embedding import Embedder
from kyara.imageio import load_image
from kyara.metrics import auroc

HALVES = {"idolmaster, clannad": ("idolmaster", "clannad"), "ichigo_mashimaro, higurashi, hayate_no_gotoku": (
    "ichigo_mashimaro", "higurashi", "hayate_no_gotoku")}  # fmt: skip
TRAINING_SAMPLE = 4000


def margin(similarities: np.ndarray) -> np.ndarray:
    ranked = np.sort(similarities, axis=1)
    return ranked[:, -1] - ranked[:, -2]


def energy(similarities: np.ndarray, typical: np.ndarray, temperature: float) -> np.ndarray:
    scaled = (similarities - typical) / temperature
    top = scaled.max(axis=1)
    return temperature * (top + np.log(np.exp(scaled - top[:, None]).sum(axis=1)))


def nearest(embeddings: np.ndarray, training: np.ndarray, k: int) -> np.ndarray:
    return np.sort(embeddings @ training.T, axis=1)[:, -k:].mean(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus_arguments(parser)
    parser.add_argument("--model", type=Path, default=ROOT / "build" / "heldout.kyara")
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    split = held_out_split(load_corpus(args.data, args.faces, args.cache), args.seed)
    embedder = Embedder(bundle.onnx, bundle.input_size)
    known, held = embedded(embedder, split.known_test), embedded(embedder, split.held)
    sample = np.random.default_rng(args.seed).choice(len(split.train.labels), TRAINING_SAMPLE, replace=False)
    training = embedder.embed([load_image(split.train.paths[i]) for i in sample])
    classifier = Classifier.from_bundle(bundle)
    known_sims = classifier.similarities(known.colour, known.drawn_gray)
    held_sims = classifier.similarities(held.colour, held.drawn_gray)
    typical = classifier.typical
    scores: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
        "familiarity (kyara's)": lambda s, e: classifier.familiarity(s),
        "margin": lambda s, e: margin(s),
        **{
            f"familiarity + {w} * margin": lambda s, e, w=w: classifier.familiarity(s) + w * margin(s)
            for w in (0.25, 0.5, 1.0)
        },
        **{f"energy, T = {t}": lambda s, e, t=t: energy(s, typical, t) for t in (0.02, 0.05, 0.1)},
        **{f"nearest {k} training faces": lambda s, e, k=k: nearest(e, training, k) for k in (1, 5, 20)},
    }
    series_held = [c for c in split.held.classes if c not in HELD_OUT_HOLOEN]
    groups = {
        "held-out series": members_of(split.held, series_held),
        **{
            half: members_of(split.held, [c for c in series_held if series_of(c) in series])
            for half, series in HALVES.items()
        },
        "holoen": members_of(split.held, list(HELD_OUT_HOLOEN)),
    }
    figures = {}
    for name, score in scores.items():
        known_score, held_score = score(known_sims, known.colour), score(held_sims, held.colour)
        figures[name] = {group: round(auroc(known_score, held_score[rows]), 4) for group, rows in groups.items()}
    atomic_write_text(ROOT / "docs" / "unknown-scores.json", json.dumps(figures, indent=2) + "\n")
    atomic_write_text(ROOT / "docs" / "unknown-scores.md", report(figures, list(groups)))
    print(json.dumps(figures, indent=2))


def report(figures: dict[str, dict[str, float]], groups: list[str]) -> str:
    rows = "\n".join(f"| {name} | " + " | ".join(f"{f[g]:.4f}" for g in groups) + " |" for name, f in figures.items())
    return f"""# Other unknown scores: measured, not adopted

Generated by `python scripts/unknown_scores.py` (figures: `docs/unknown-scores.json`): AUROC of
each score, known test faces against held-out faces, on the held-out study's model
(docs/heldout-characters.md; the same known test faces, {TRAINING_SAMPLE} of its training faces for the
nearest-face scores). The script's docstring says what each score is.

| score | {" | ".join(groups)} |
| --- | {" | ".join("---:" for _ in groups)} |
{rows}

None is adopted: what a second look at the same similarities adds is within a few thousandths on
the held-out series, and it costs as much on Hololive EN faces; the nearest training faces do
worse than the characters' prototypes. What would tell new characters from known ones better
has to come from the embedding itself, not from how its similarities are read.
"""


if __name__ == "__main__":
    main()
