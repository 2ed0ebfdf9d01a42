from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from kyara.cli import app
from tests.conftest import data_path

pytest.importorskip("torch")
runner = CliRunner()


@pytest.fixture(scope="module")
def two_characters(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("two")
    for name in ("ina", "gura"):
        (root / name).mkdir()
        for path in sorted(data_path("holoen-faces", name).iterdir())[:40]:
            shutil.copy(path, root / name / path.name)
    (root / "ina" / "broken.png").write_bytes(b"not a picture")
    return root


def compare_args(folder: Path, report: Path, per_character: str = "20") -> list[str]:
    return [
        "compare",
        str(folder),
        "--report",
        str(report),
        "--backbones",
        "mobilenetv2,efficientnet_lite0",
        "--modes",
        "linear",
        "--sizes",
        "64",
        "--grayscale",
        "off",
        "--train-per-character",
        per_character,
    ]


def test_compare_measures_each_setting_and_resumes(two_characters, tmp_path):
    report = tmp_path / "report"
    first = runner.invoke(app, compare_args(two_characters, report))
    assert first.exit_code == 1, first.output  # broken.png could not be read (the README's rule)
    assert "broken.png" in first.stderr
    document = json.loads((report / "experiments.json").read_text())
    assert document["study"]["images"]["characters"] == 2
    rows = document["results"]
    assert set(rows) == {"mobilenetv2/linear/64/colour-only", "efficientnet_lite0/linear/64/colour-only"}
    for row in rows.values():
        # Two very different characters: ImageNet features with a new last layer must separate them.
        assert row["top1"] >= 0.75, row
        assert 0 <= row["grayscale_top1"] <= 1 and row["train_seconds"] > 0 and row["ms_per_face"] > 0
    table = (report / "experiments.md").read_text()
    assert "| mobilenetv2 | linear | 64 | off |" in table and "## Answers" in table
    assert (report / "experiments-accuracy.png").read_bytes().startswith(b"\x89PNG")

    again = runner.invoke(app, compare_args(two_characters, report))
    assert again.exit_code == 1 and "training" not in again.output  # every setting was already measured
    other_study = runner.invoke(app, compare_args(two_characters, report, per_character="10"))
    assert other_study.exit_code == 2 and "another study" in other_study.stderr

    # A damaged study or a report that cannot be a folder: said before anything is trained.
    results = document["results"]
    damaged = {
        "truncated": '{"study": ',
        "a list": "[1, 2]",
        "a bad result": json.dumps({**document, "results": {"x": {"garbage": 1}}}),
    }
    for what, text in damaged.items():
        (report / "experiments.json").write_text(text)
        result = runner.invoke(app, compare_args(two_characters, report))
        assert result.exit_code == 2 and "not a kyara comparison" in result.stderr, (what, result.output)
    (report / "experiments.json").write_text(json.dumps({**document, "results": results}))
    result = runner.invoke(app, compare_args(two_characters, report / "experiments.md"))
    assert result.exit_code == 2 and "is a file" in result.stderr and "training" not in result.output


def test_compare_rejects_unknown_grid_values(two_characters, tmp_path):
    result = runner.invoke(app, [*compare_args(two_characters, tmp_path / "r"), "--modes", "magic"])
    assert result.exit_code == 2 and "magic" in result.stderr
    result = runner.invoke(app, [*compare_args(two_characters, tmp_path / "r"), "--sizes", "96,0"])
    assert result.exit_code == 2 and "32 to 512" in result.stderr
    assert not (tmp_path / "r").exists()


def test_with_classes_relabels_in_the_given_order():
    from kyara.train.data import LabelledImages

    data = LabelledImages(
        np.zeros((5, 2, 2, 3), np.uint8),
        np.array([0, 1, 2, 1, 0]),
        np.arange(5),
        ["a", "b", "c"],
        [Path(f"{i}.png") for i in range(5)],
    )
    part = data.with_classes(["c", "a"])
    assert part.classes == ["c", "a"]
    assert part.labels.tolist() == [1, 0, 1] and [p.name for p in part.paths] == ["0.png", "2.png", "4.png"]


def test_at_most_per_class_is_seeded_and_bounded():
    from kyara.train.compare import at_most_per_class

    labels = np.array([0] * 10 + [1] * 3)
    kept = at_most_per_class(labels, np.arange(13), 4, seed=1)
    assert np.bincount(labels[kept]).tolist() == [4, 3]
    assert kept.tolist() == at_most_per_class(labels, np.arange(13), 4, seed=1).tolist()


def test_answers_compare_settings_that_differ_in_one_factor_only():
    from kyara.train.compare import answers

    def row(backbone: str, mode: str, size: int, top1: float) -> dict:
        setting = {"backbone": backbone, "mode": mode, "input_size": size, "grayscale_augmentation": False}
        return {**setting, "top1": top1, "grayscale_top1": top1 - 0.2}

    rows = [
        row("mobilenetv2", "linear", 96, 0.70),
        row("mobilenetv2", "finetune", 96, 0.90),
        row("efficientnet_lite0", "linear", 96, 0.60),
        row("efficientnet_lite0", "finetune", 96, 0.90),
        row("efficientnet_lite0", "finetune", 128, 0.85),  # no linear partner at 128: not a pair
    ]
    text = answers(rows)
    assert "Fine-tuning vs last layer only (MoeFlow): mean +25.0 points (from +20.0 to +30.0); ahead in 2 of 2" in text
    assert "Input 128 px vs 96 px: mean -5.0 points (from -5.0 to -5.0); ahead in 0 of 1 pairs." in text
    assert "without grayscale augmentation: mean -20.0 points" in text and "with grayscale augmentation" not in text
