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
    assert first.exit_code == 0, first.output
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
    assert again.exit_code == 0 and "training" not in again.output  # every setting was already measured
    other_study = runner.invoke(app, compare_args(two_characters, report, per_character="10"))
    assert other_study.exit_code == 2 and "another study" in other_study.stderr


def test_compare_rejects_unknown_grid_values(two_characters, tmp_path):
    result = runner.invoke(app, [*compare_args(two_characters, tmp_path / "r"), "--modes", "magic"])
    assert result.exit_code == 2 and "magic" in result.stderr


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
