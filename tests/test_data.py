"""Honest splits: near-duplicates and crops of one picture never straddle train and test."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from kyara.train.data import load_folders, split_by_group
from tests.conftest import data_path


def test_near_duplicates_and_crops_of_one_picture_share_a_group_and_a_side(tmp_path):
    sources = {name: sorted(data_path("holoen-faces", name).iterdir())[:30] for name in ("ina", "gura")}
    for name, paths in sources.items():
        (tmp_path / name).mkdir()
        for path in paths:
            shutil.copy(path, tmp_path / name / path.name)
    original = sources["ina"][0]
    smaller = Image.open(original).convert("RGB").resize((150, 150))
    smaller.save(tmp_path / "ina" / "resaved smaller.jpg", quality=70)
    for number, path in enumerate(sources["gura"][1:3], 1):  # two faces cut from one illustration
        shutil.copy(path, tmp_path / "gura" / f"party.jpg-{number}.png")

    data = load_folders([tmp_path])
    group = {path.name: g for path, g in zip(data.paths, data.groups.tolist())}
    assert group["resaved smaller.jpg"] == group[original.name]
    assert group["party.jpg-1.png"] == group["party.jpg-2.png"]

    for seed in range(20):
        parts = split_by_group(data.labels, data.groups, (0.7, 0.15, 0.15), seed)
        assert sorted(np.concatenate(parts).tolist()) == list(range(len(data.labels)))
        sides = [set(data.groups[part].tolist()) for part in parts]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2]), seed
        for label in (0, 1):  # stratified: every character is in every part
            assert all((data.labels[part] == label).any() for part in parts)
    once, twice = (split_by_group(data.labels, data.groups, (0.7, 0.15, 0.15), seed=3) for _ in range(2))
    assert all(a.tolist() == b.tolist() for a, b in zip(once, twice))


def test_a_group_shared_by_two_characters_stays_on_one_side():
    labels = np.array([0] * 10 + [1] * 10)
    groups = np.arange(20)
    groups[15] = groups[2]  # the same picture filed under both characters
    for seed in range(30):
        train = split_by_group(labels, groups, (0.5, 0.5), seed)[0]
        assert (2 in train) == (15 in train), seed


def test_what_a_training_picture_teaches(tmp_path, monkeypatch, recognizer, held_out_files):
    """A face crop is taken whole without detecting; an illustration teaches its best face, cut as
    recognition cuts it; an illustration without a face teaches nothing."""
    from kyara.crop import training_cuts

    class NoDetection:
        name = "none"

        def detect(self, image):
            raise AssertionError("a face crop must not be detected")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    crop = Image.open(held_out_files[0]).convert("RGB")
    crop.save(tmp_path / "crop.png")
    (whole,) = training_cuts(tmp_path / "crop.png", crop, NoDetection())
    assert whole.pixels is crop and whole.whole
    canvas = Image.new("RGB", (900, 900), (250, 250, 240))
    canvas.paste(crop.resize((200, 200)), (600, 80))
    poster = Image.new("RGB", (900, 600), (250, 250, 240))
    for name, picture in {"canvas.png": canvas, "poster.png": poster}.items():
        picture.save(tmp_path / name)
    face = training_cuts(tmp_path / "canvas.png", canvas, recognizer.detector)[0].pixels
    (expected,) = recognizer.cuts_to_name(canvas)
    assert face.size == expected.pixels.size and face.width < 450
    assert training_cuts(tmp_path / "poster.png", poster, recognizer.detector) == []


def test_linked_and_look_alike_character_folders_are_refused(tmp_path):
    """A link to the root or above it pulled every picture in again under a new name; two folders
    leading to one place, or named alike in two Unicode spellings, made one character two."""
    from kyara.dataset import character_folders, labelled_files
    from kyara.errors import KyaraError

    root = tmp_path / "faces"
    (root / "aoi").mkdir(parents=True)
    elsewhere = tmp_path / "hifumi pictures"
    elsewhere.mkdir()
    (root / "hifumi").symlink_to(elsewhere)  # a linked folder of its own: fine
    (root / "aoi" / "sub").mkdir()
    assert [f.name for f in character_folders([root])] == ["aoi", "hifumi"]
    for link, target, message in (
        ("self", root, "holds the character folders"),
        ("parent", tmp_path, "holds the"),
        ("hifumi again", elsewhere, "count twice"),
        ("inside aoi", root / "aoi" / "sub", "count twice"),
    ):
        (root / link).symlink_to(target)
        with pytest.raises(KyaraError, match=message):
            character_folders([root])
        (root / link).unlink()
    (root / "cafe\u0301").mkdir()
    (root / "caf\u00e9").mkdir()
    with pytest.raises(KyaraError, match="appears twice"):
        character_folders([root])
    (root / "cafe\u0301").rmdir()
    (root / "two\nlines").mkdir()  # a label of two lines, in tables and reports
    with pytest.raises(KyaraError, match="control characters"):
        character_folders([root])
    (root / "two\nlines").rmdir()
    (root / "aoi" / "gone.png").symlink_to(tmp_path / "nothing.png")  # listed, to be reported unreadable
    (root / "aoi" / "photo.jfif").write_bytes(b"")
    assert {f.path.name for f in labelled_files([root])} == {"gone.png", "photo.jfif"}
