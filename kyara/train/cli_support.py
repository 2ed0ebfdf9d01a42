"""`kyara train`: read folders, fit, write the bundle (the CLI stays a thin shell over this)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from kyara.bundle import ModelBundle, default_model_path, load_bundle, save_bundle
from kyara.detection import get_detector
from kyara.errors import KyaraError
from kyara.train.data import load_folders
from kyara.train.fit import fit_folders, too_few
from kyara.train.nets import BACKBONES
from kyara.train.trainer import TrainConfig


def starting_model(start: str) -> ModelBundle | None:
    if start == "imagenet":
        return None
    return load_bundle(default_model_path() if start == "default" else Path(start))


def train_command(
    folders: list[Path], output: Path, start: str, config: TrainConfig, checkpoint: Path | None, console: Console
) -> ModelBundle:
    data = load_folders(folders, detector=get_detector())
    for _, reason in data.skipped:
        console.print(f"[yellow]skipped[/yellow] {reason}", highlight=False)
    if len(data.classes) < 2:
        raise KyaraError(f"need at least two character folders with images, found {len(data.classes)}")
    for name, count in too_few(data).items():
        console.print(f"[yellow]warning[/yellow] only {count} image(s) of {name}: expect weak results", highlight=False)
    if config.mode not in ("finetune", "linear"):
        raise KyaraError(f"unknown mode {config.mode!r}: use finetune or linear")
    if config.backbone not in BACKBONES:
        raise KyaraError(f"unknown backbone {config.backbone!r}: use {', '.join(BACKBONES)}")
    bundle = fit_folders(data, config, start=starting_model(start), checkpoint=checkpoint, name=output.stem)
    save_bundle(bundle, output)
    console.print(
        f"wrote {output}: {len(bundle.labels)} characters, validation top-1 {bundle.metadata['metrics']['val_top1']}"
    )
    return bundle
