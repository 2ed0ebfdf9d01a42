"""`kyara compare`: train and measure a grid of settings on the same honest split.

backbone x mode (linear: MoeFlow's frozen features + new last layer; finetune) x input size x
grayscale augmentation, each trained from ImageNet weights with the same seed, then measured on
the same held-out test split (colour and grayscale copies), with training time and inference
milliseconds per face. Results are kept in `experiments.json` after every setting, so a killed
run goes on where it stopped; `experiments.md` and `experiments-accuracy.png` summarise them.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kyara.bundle import atomic_write_bytes, atomic_write_text
from kyara.classify import Classifier
from kyara.cut import gray_copy
from kyara.detection import Detector
from kyara.embedding import Embedder
from kyara.errors import KyaraError
from kyara.evaluate import check_report_folder
from kyara.metrics import top_k_accuracy
from kyara.plots import png, pyplot
from kyara.train.data import LabelledImages, load_folders, split_by_group
from kyara.train.fit import package, too_few
from kyara.train.trainer import TrainConfig, train

SPLIT = (0.75, 0.10, 0.15)
GRAYSCALE_P = 0.3
TIMING_RUNS = 20
STORE_SIDE = 252


@dataclass(frozen=True)
class Setting:
    backbone: str
    mode: str
    input_size: int
    grayscale_augmentation: bool

    @property
    def key(self) -> str:
        gray = "gray-aug" if self.grayscale_augmentation else "colour-only"
        return f"{self.backbone}/{self.mode}/{self.input_size}/{gray}"


@dataclass
class Study:
    """What the grid runs on; a report folder only resumes a study with the same description."""

    folders: list[str]
    epochs: int
    train_per_character: int | None
    seed: int
    store_side: int
    images: dict[str, int]
    finetuned_embedding: str = "whitened features"
    """What fine-tuned settings export (kyara/train/readout.py). Studies run before kyara shipped
    that readout exported the trained layer; their results are not mixed with these."""


def grid(
    backbones: Sequence[str], modes: Sequence[str], sizes: Sequence[int], grayscale: Sequence[bool]
) -> list[Setting]:
    return [Setting(*values) for values in itertools.product(backbones, modes, sizes, grayscale)]


def compare(
    folders: Sequence[Path],
    report: Path,
    settings: Sequence[Setting],
    epochs: int = 6,
    train_per_character: int | None = 60,
    seed: int = 0,
    detector: Detector | None = None,
    warn: Callable[[str], None] = print,
) -> tuple[list[dict], int]:
    """Run every setting not yet in `report`/experiments.json; write the table and plot. Returns
    the rows and how many files or folders were skipped.

    Skipped files and characters with few pictures are passed to `warn` before training starts.
    """
    # Pixels are kept a little larger than the biggest input, so random crops keep their resolution,
    # and at one side for every grid up to 224 px, so a study can be resumed with more sizes.
    check_report_folder(report)
    side = max(STORE_SIDE, round(max(s.input_size for s in settings) * 1.125))
    data = load_folders(folders, side=side, detector=detector)
    if len(data.classes) < 2:
        raise KyaraError(f"need at least two character folders with images, found {len(data.classes)}")
    for _, reason in data.skipped:
        warn(f"skipped {reason}")
    for name, count in too_few(data).items():
        warn(f"only {count} image(s) of {name}: it may have no test picture")
    train_idx, val_idx, test_idx = split_by_group(data.labels, data.groups, SPLIT, seed)
    if len(test_idx) == 0:
        raise KyaraError("the split left no test pictures: add pictures (about 15% of each character are tested)")
    train_idx = at_most_per_class(data.labels, train_idx, train_per_character, seed)
    study = Study(
        [str(f) for f in folders],
        epochs,
        train_per_character,
        seed,
        side,
        {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx), "characters": len(data.classes)},
    )
    results = _resume(report / "experiments.json", study)
    for setting in settings:
        if setting.key in results:
            continue
        print(f"{setting.key}: training", flush=True)
        results[setting.key] = run_setting(
            setting, data.subset(train_idx), data.subset(val_idx), data.subset(test_idx), epochs, seed
        )
        document = {"study": asdict(study), "results": results}
        atomic_write_text(report / "experiments.json", json.dumps(document, indent=2) + "\n")
    rows = [results[s.key] for s in settings]
    atomic_write_text(report / "experiments.md", markdown(rows, study))
    atomic_write_bytes(report / "experiments-accuracy.png", plot(rows))
    return rows, len(data.skipped)


def at_most_per_class(labels: np.ndarray, indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """A seeded sample of at most `limit` indices per class (all of them without a limit)."""
    if limit is None:
        return indices
    rng = np.random.default_rng(seed)
    kept = [rng.permutation(indices[labels[indices] == c])[:limit] for c in np.unique(labels[indices])]
    return np.sort(np.concatenate(kept))


RESULT_KEYS = frozenset({"backbone", "mode", "input_size", "top1", "top5", "grayscale_top1"})
"""What the table needs of each saved result (`run_setting` writes them)."""


def _resume(path: Path, study: Study) -> dict[str, dict]:
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON
        raise KyaraError(f"{path} is not a kyara comparison ({exc}): use another --report") from exc
    results = saved.get("results") if isinstance(saved, dict) else None
    if not isinstance(results, dict) or not all(
        isinstance(r, dict) and r.keys() >= RESULT_KEYS for r in results.values()
    ):
        raise KyaraError(f"{path} is not a kyara comparison (damaged or another file): use another --report")
    if saved.get("study") != asdict(study):
        raise KyaraError(f"{path} holds results of another study (other data or settings): use another --report")
    return results


def run_setting(
    setting: Setting, train_set: LabelledImages, val: LabelledImages, test: LabelledImages, epochs: int, seed: int
) -> dict:
    config = TrainConfig(
        backbone=setting.backbone,
        mode=setting.mode,
        input_size=setting.input_size,
        epochs=epochs,
        grayscale_p=GRAYSCALE_P if setting.grayscale_augmentation else 0.0,
        ood_weight=0.0,
        seed=seed,
    )
    started = time.perf_counter()
    result = train(train_set, val, config)
    seconds = time.perf_counter() - started
    # Colour prototypes only, as in every study so far: `linear` models have no gray head, and a
    # finetuned one's would make the grayscale column compare two methods, not two networks.
    bundle = replace(package(result.net, result.head, train_set.classes, train_set, val, config), gray_head=None)
    embedder, classifier = Embedder(bundle.onnx, bundle.input_size), Classifier.from_bundle(bundle)
    crops = [Image.fromarray(p) for p in tqdm(test.pixels, desc="test", leave=False)]
    colour = classifier.similarities(embedder.embed(crops))
    gray = classifier.similarities(embedder.embed([gray_copy(c) for c in crops]))
    return {
        **asdict(setting),
        "top1": top_k_accuracy(colour, test.labels, 1),
        "top5": top_k_accuracy(colour, test.labels, 5),
        "grayscale_top1": top_k_accuracy(gray, test.labels, 1),
        "train_seconds": round(seconds, 1),
        "ms_per_face": round(milliseconds_per_face(embedder, crops[0]), 2),
    }


def milliseconds_per_face(embedder: Embedder, crop: Image.Image) -> float:
    """Median time to embed one face (batch of one), after a warm-up run."""
    embedder.embed([crop])
    times = []
    for _ in range(TIMING_RUNS):
        started = time.perf_counter()
        embedder.embed([crop])
        times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def markdown(rows: list[dict], study: Study) -> str:
    table = "\n".join(
        f"| {r['backbone']} | {r['mode']} | {r['input_size']} | {'on' if r['grayscale_augmentation'] else 'off'} "
        f"| {r['top1']:.4f} | {r['top5']:.4f} | {r['grayscale_top1']:.4f} | {r['train_seconds'] / 60:.1f} "
        f"| {r['ms_per_face']:.1f} |"
        for r in rows
    )
    best = max(rows, key=lambda r: r["top1"])
    n = study.images
    return f"""# kyara compare

{n["characters"]} characters from {", ".join(study.folders)}; split 75/10/15 per character with
near-duplicates grouped (no group straddles train, validation and test); training uses at most
{study.train_per_character or "all"} images per character ({n["train"]} train, {n["val"]} validation,
{n["test"]} test images). Every setting starts from ImageNet weights, seed {study.seed}; fine-tuning runs
{study.epochs} epochs at most (early stopping on validation), linear training fits its layer on frozen
features. Grayscale top-1: the same test images turned gray (manga-like). Time: 2 CPU cores.

| backbone | mode | input px | gray aug. | top-1 | top-5 | gray top-1 | train min | ms/face |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{table}

Best top-1: {best["backbone"]} {best["mode"]} at {best["input_size"]} px, gray augmentation
{"on" if best["grayscale_augmentation"] else "off"}: {best["top1"]:.4f}.

{answers(rows)}

![accuracy by setting](experiments-accuracy.png)
"""


def answers(rows: list[dict]) -> str:
    """The three questions of the study, answered from the rows: each factor is compared between
    settings that differ in that factor alone, so the other factors cannot blur the difference."""
    lines = [_paired(rows, "mode", "finetune", "linear", "top1", "Fine-tuning vs last layer only (MoeFlow)")]
    sizes = sorted({r["input_size"] for r in rows})
    for smaller, larger in itertools.pairwise(sizes):
        lines.append(_paired(rows, "input_size", larger, smaller, "top1", f"Input {larger} px vs {smaller} px"))
    for flag, name in ((False, "without"), (True, "with")):
        chosen = [r for r in rows if r["grayscale_augmentation"] == flag]
        if chosen:
            drops = [100 * (r["grayscale_top1"] - r["top1"]) for r in chosen]
            lines.append(
                f"- Grayscale vs colour test images, {name} grayscale augmentation: {_spread(drops)} "
                f"over {len(drops)} settings."
            )
    lines.append(_paired(rows, "grayscale_augmentation", True, False, "grayscale_top1", "Gray augmentation, gray test"))
    lines.append(_paired(rows, "grayscale_augmentation", True, False, "top1", "Gray augmentation, colour test"))
    header = "## Answers\n\nEach line compares settings that differ only in the factor named, in points.\n\n"
    return header + "\n".join(line for line in lines if line)


def _paired(rows: list[dict], factor: str, first: object, second: object, metric: str, title: str) -> str:
    """`first` minus `second` in `metric`, over every pair of rows equal in all other settings."""
    others = [k for k in asdict(Setting("", "", 0, False)) if k != factor]
    by_rest = {tuple(r[k] for k in others): r for r in rows if r[factor] == second}
    differences = []
    for r in rows:
        partner = by_rest.get(tuple(r[k] for k in others))
        if r[factor] == first and partner is not None:
            differences.append(100 * (r[metric] - partner[metric]))
    if not differences:
        return ""
    wins = sum(d > 0 for d in differences)
    return f"- {title}: {_spread(differences)}; ahead in {wins} of {len(differences)} pairs."


def _spread(points: list[float]) -> str:
    return f"mean {np.mean(points):+.1f} points (from {min(points):+.1f} to {max(points):+.1f})"


def plot(rows: list[dict]) -> bytes:
    """Top-1 (colour and grayscale) against input size, one line per backbone, mode and augmentation."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    series: dict[tuple, list[dict]] = {}
    for r in rows:
        series.setdefault((r["backbone"], r["mode"], r["grayscale_augmentation"]), []).append(r)
    for (backbone, mode, gray_aug), members in sorted(series.items()):
        members.sort(key=lambda r: r["input_size"])
        sizes = [r["input_size"] for r in members]
        style = {"linestyle": "-" if mode == "finetune" else ":", "marker": "o" if gray_aug else "s"}
        label = f"{backbone} {mode}{' +gray aug' if gray_aug else ''}"
        axes[0].plot(sizes, [r["top1"] for r in members], label=label, **style)
        axes[1].plot(sizes, [r["grayscale_top1"] for r in members], label=label, **style)
    for axis, title in zip(axes, ("colour test images", "grayscale test images")):
        axis.set_title(title)
        axis.set_xlabel("input size (px)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("top-1")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))  # outside: no line hidden
    figure.tight_layout()
    return png(figure)
