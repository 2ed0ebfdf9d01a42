"""`kyara train`: read folders, fit, write the bundle (the CLI stays a thin shell over this)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kyara.bundle import ModelBundle, check_writable, default_model_path, load_bundle, save_bundle
from kyara.detectors import get_detector
from kyara.errors import KyaraError
from kyara.train.data import load_folders
from kyara.train.fit import fit_folders, too_few
from kyara.train.nets import BACKBONES
from kyara.train.trainer import TrainConfig, check_checkpoint_use


def starting_model(start: str) -> ModelBundle | None:
    if start == "imagenet":
        return None
    return load_bundle(default_model_path() if start == "default" else Path(start))


def train_command(
    folders: list[Path],
    output: Path,
    start: str,
    config: TrainConfig,
    checkpoint: Path | None,
    warn: Callable[[str], None],
) -> tuple[str, int]:
    """Train and write `output`; skipped files and thin characters go to `warn` before training.
    Returns the summary line and how many files or folders were skipped."""
    check_settings(config, output, checkpoint)
    starting = starting_model(start)
    data = load_folders(folders, detector=get_detector())
    for _, reason in data.skipped:
        warn(f"skipped {reason}")
    if len(data.classes) < 2:
        raise KyaraError(f"need at least two character folders with images, found {len(data.classes)}")
    for name, count in too_few(data).items():
        warn(f"only {count} image(s) of {name}: expect weak results")
    bundle = fit_folders(data, config, start=starting, checkpoint=checkpoint, name=output.stem)
    try:
        save_bundle(bundle, output)
    except OSError as exc:
        raise KyaraError(f"cannot write {output}: {exc}") from exc
    val_top1 = bundle.metadata["metrics"]["val_top1"]
    validation = "n/a (no validation pictures)" if val_top1 is None else f"{val_top1:.4f}"
    return f"wrote {output}: {len(bundle.labels)} characters, validation top-1 {validation}", len(data.skipped)


def check_settings(config: TrainConfig, output: Path, checkpoint: Path | None) -> None:
    """Refuse what would fail only after reading every picture and training."""
    if config.mode not in ("finetune", "linear"):
        raise KyaraError(f"unknown mode {config.mode!r}: use finetune or linear")
    if config.backbone not in BACKBONES:
        raise KyaraError(f"unknown backbone {config.backbone!r}: use {', '.join(BACKBONES)}")
    check_checkpoint_use(config, checkpoint)
    check_writable(output, "the .kyara file")
    if checkpoint is not None:
        check_writable(checkpoint, "the checkpoint")
