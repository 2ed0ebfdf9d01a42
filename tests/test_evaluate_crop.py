from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from kyara.cli import app
from kyara.imageio import list_images
from tests.conftest import data_path

runner = CliRunner()


def small_labelled_folder(root, held_out_files, per_character=6):
    """A few held-out crops of three characters, plus one file that cannot be read."""
    for name in ("gura", "fuwawa", "mococo"):
        (root / name).mkdir(parents=True)
        for path in [p for p in held_out_files if p.parent.name == name][:per_character]:
            shutil.copy(path, root / name / path.name)
    (root / "gura" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    return root


def test_evaluate_json_and_report(tmp_path, held_out_files):
    folder = small_labelled_folder(tmp_path / "test", held_out_files)
    result = runner.invoke(app, ["evaluate", str(folder), "--json", "--report", str(tmp_path / "report")])
    assert result.exit_code == 1, result.output  # truncated.jpg could not be read; the rest is measured
    report = json.loads(result.stdout)
    assert {"n", "top1", "top5", "macro_f1", "per_class", "grayscale", "shots", "coverage"} <= set(report)
    assert report["n"] == 18 and report["shots"] is None
    assert report["top1"] >= 0.7 and report["top5"] >= report["top1"]
    assert set(report["per_class"]) == {"gura", "fuwawa", "mococo"}
    assert "truncated.jpg" in result.stderr
    gray = report["grayscale"]
    assert 0.2 <= gray["top1"] <= gray["top5"] <= 1 and set(gray["per_class"]) == set(report["per_class"])
    assert gray["top1"] == pytest.approx(sum(gray["per_class"].values()) / 3)  # six pictures each
    for name in ("confusion.png", "reliability.png", "confusion-gray.png", "reliability-gray.png"):
        assert (tmp_path / "report" / name).read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "report" / "report.json").read_text())["grayscale"] == gray
    assert "| grayscale |" in (tmp_path / "report" / "report.md").read_text()


def test_few_shot_on_unseen_characters(tmp_path):
    """danbooru6 characters enrolled from 3 pictures each, queried with the rest."""
    root = tmp_path / "few"
    for name in ("aisaka_taiga", "albedo", "aqua_(konosuba)"):
        shutil.copytree(data_path("danbooru6-faces", name), root / name)
        for extra in sorted((root / name).iterdir())[15:]:
            extra.unlink()
    result = runner.invoke(app, ["evaluate", str(root), "--shots", "3", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["shots"] == 3 and report["n"] == 36
    assert report["top1"] >= 0.6


def test_crop_writes_faces_and_drops_duplicates(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    raw = tmp_path / "raw" / "Yagami Kou (八神)"
    raw.mkdir(parents=True)
    source = data_path("newgame-illustrations", "yagami_kou") / "1.jpg"
    shutil.copy(source, raw / "a.jpg")
    shutil.copy(source, raw / "a copy.jpg")
    (raw / "bad.png").write_bytes(b"nope")
    result = runner.invoke(app, ["crop", str(tmp_path / "raw"), str(tmp_path / "faces"), "--size", "96", "--json"])
    assert result.exit_code == 1, result.output  # bad.png could not be read; the rest is done
    summary = json.loads(result.stdout)
    assert summary["images"] == 3 and len(summary["unreadable"]) == 1
    assert summary["faces"] >= 2 and summary["written"] == summary["faces"] // 2
    written = sorted((tmp_path / "faces" / "Yagami Kou (八神)").iterdir())
    assert len(written) == summary["written"] and written[0].suffix == ".png"
    assert not list((tmp_path / "faces").rglob("*.tmp"))


def test_an_interrupted_crop_run_again_writes_what_one_run_writes(tmp_path, monkeypatch):
    from kyara.crop import crop_folder
    from kyara.detectors import get_detector

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    raw = tmp_path / "raw" / "kou"
    raw.mkdir(parents=True)
    for path in list_images(data_path("newgame-illustrations", "yagami_kou"))[:4]:
        shutil.copy(path, raw / path.name)
    detector = get_detector()
    crop_folder(tmp_path / "raw", tmp_path / "whole", detector)

    class StopsOnTheThird:
        name, seen = detector.name, 0

        def detect(self, image):
            self.seen += 1
            if self.seen == 3:
                raise KeyboardInterrupt
            return detector.detect(image)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))  # the first run's cache is not used
    with pytest.raises(KeyboardInterrupt):
        crop_folder(tmp_path / "raw", tmp_path / "again", StopsOnTheThird())
    assert 0 < len(list((tmp_path / "again").rglob("*.png"))) < len(list((tmp_path / "whole").rglob("*.png")))
    crop_folder(tmp_path / "raw", tmp_path / "again", detector)
    whole = {p.relative_to(tmp_path / "whole"): p.read_bytes() for p in (tmp_path / "whole").rglob("*") if p.is_file()}
    again = {p.relative_to(tmp_path / "again"): p.read_bytes() for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert again == whole


def test_crop_margin_sets_the_context_and_a_target_inside_the_source_is_not_input(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    crops = {}
    for margin in ("1.0", "2.0"):
        raw = tmp_path / f"raw-{margin}"
        (raw / "kou").mkdir(parents=True)
        shutil.copy(data_path("newgame-illustrations", "yagami_kou") / "1.jpg", raw / "kou" / "a.jpg")
        target = raw / "faces"  # inside the source, on purpose
        for _ in range(2):  # the second run must not crop the first run's crops
            result = runner.invoke(app, ["crop", str(raw), str(target), "--margin", margin, "--json"])
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["images"] == 1
        crops[margin] = np.asarray(Image.open(target / "kou" / "a.jpg-1.png").convert("L"), float)
    tight, wide = crops["1.0"], crops["2.0"]
    side = wide.shape[0]
    centre = Image.fromarray(wide[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4].astype(np.uint8))
    centre = np.asarray(centre.resize(tight.shape[::-1]), float)
    # Twice the margin: the face fills the middle half of the wide crop.
    assert np.abs(centre - tight).mean() < 0.5 * np.abs(wide - tight).mean()
    refused = runner.invoke(app, ["crop", str(raw / "kou"), str(raw)])  # the crops would land in the source
    assert refused.exit_code == 2 and "holds the source" in refused.stderr


def test_crop_keeps_face_crops_and_survives_long_names_and_loops(tmp_path, monkeypatch, held_out_files):
    from PIL import Image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    raw = tmp_path / "raw" / "mix"
    raw.mkdir(parents=True)
    long_name = "🦈" * 61 + ".jpg"  # 248 bytes: with "-1.png" it would pass the 255-byte cap
    shutil.copy(data_path("newgame-illustrations", "yagami_kou") / "1.jpg", raw / long_name)
    shutil.copy(held_out_files[0], raw / "crop.jpg")  # a face crop, kept whole
    Image.linear_gradient("L").resize((300, 300)).convert("RGB").save(raw / "shaded.png")  # no face found: kept
    Image.new("RGB", (300, 300), (250, 250, 240)).save(raw / "blank.png")  # one colour: no face at all
    (raw / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link: reported, the rest cropped
    result = runner.invoke(app, ["crop", str(tmp_path / "raw"), str(tmp_path / "faces"), "--size", "64", "--json"])
    assert result.exit_code == 1 and "gone.png" in result.stderr, result.output
    summary = json.loads(result.stdout)
    written = sorted(p.name for p in (tmp_path / "faces" / "mix").iterdir())
    assert summary["without_face"] == [str(raw / "blank.png")] and len(written) == summary["written"] >= 3
    assert {"crop.jpg-1.png", "shaded.png-1.png"} <= set(written)
    assert any(name.startswith("🦈") and len(name.encode()) <= 255 for name in written)
    assert Image.open(tmp_path / "faces" / "mix" / "crop.jpg-1.png").size == (64, 64)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    result = runner.invoke(app, ["crop", str(tmp_path / "raw"), str(tmp_path / "loop")])
    assert result.exit_code == 2 and "cannot resolve" in result.stderr


def test_evaluating_folders_of_unreadable_files_names_them(tmp_path):
    for character in ("gura", "ina"):
        (tmp_path / character).mkdir()
        (tmp_path / character / f"{character} broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a picture")
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2 and "no readable images" in result.stderr, result.output
    assert "gura broken.png" in result.stderr and "ina broken.png" in result.stderr  # they were not named
