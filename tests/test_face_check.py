"""The face check (`--detector cnn-checked`): what it keeps, where its settings come from, and that
it refuses a check that does not fit the shipped embedder."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kyara.cli import app
from kyara.detection import CnnDetector, iou
from kyara.detectors import get_detector
from kyara.errors import KyaraError, ModelError
from kyara.face_check import CheckedCnnDetector, FaceCheck, rescored
from kyara.imageio import list_images, load_image
from kyara.pipeline import Recognizer
from tests.conftest import ROOT, data_path


@pytest.fixture(scope="module")
def checked() -> CheckedCnnDetector:
    return CheckedCnnDetector()


@pytest.fixture(scope="module")
def pictures():
    """A quarter of the old benchmark's hand-checked pictures, with their boxes."""
    boxes = json.loads((ROOT / "benchmarks" / "detection_boxes.json").read_text())
    entries = [e for e in boxes["images"] if e["faces"]][1::4]
    return [(load_image(data_path(e["path"])), e["faces"]) for e in entries]


def test_sure_faces_are_the_cnns_and_unsure_ones_pass_the_check(checked, pictures):
    low, high = checked.check.band
    candidates = CnnDetector(min_score=low)
    hits = faces = detections = checked_kept = 0
    for image, truth in pictures:
        found = checked.detect(image)
        seen = candidates.detect(image)
        assert {f.box for f in seen if f.score >= high} <= {f.box for f in found}  # sure: kept unchecked
        for face in found:
            (cnn,) = [s for s in seen if s.box == face.box]  # every face kept is one of the CNN's candidates
            if cnn.score >= high:
                assert face.score == cnn.score
            else:  # checked: the check's probability, mapped into the band, below every sure face
                assert checked.min_score <= face.score <= high
                checked_kept += 1
        assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
        detections += len(found)
        faces += len(truth)
        hits += sum(any(iou(f.box, t["box"]) >= 0.4 for f in found) for t in truth)
    assert checked_kept > 0  # the band is not empty on these pictures
    assert hits / faces >= 0.8, f"recall {hits}/{faces}"
    assert hits / detections >= 0.8, f"precision {hits}/{detections}"


def test_the_check_drops_junk_the_cnn_is_unsure_of(checked):
    """Non-face patches kept out of training, 64 to a mosaic: no more false faces than the CNN alone."""
    patches = list_images(data_path("face-patches", "not-face"))[5::10]
    plain = CnnDetector()
    false_checked = false_plain = 0
    for start in range(0, len(patches), 64):
        mosaic = Image.new("RGB", (512, 512))
        for i, path in enumerate(patches[start : start + 64]):
            mosaic.paste(load_image(path), ((i % 8) * 64, (i // 8) * 64))
        false_checked += len(checked.detect(mosaic))
        false_plain += len(plain.detect(mosaic))
    assert false_checked <= max(false_plain, 4), (false_checked, false_plain)
    assert checked.detect(Image.new("RGB", (300, 200), "white")) == []


def test_copies_for_workers_find_the_same_faces(checked, pictures):
    image = pictures[0][0]
    for copy in (pickle.loads(pickle.dumps(checked)), checked.with_threads(1)):
        assert [(f.box, f.angle) for f in copy.detect(image)] == [(f.box, f.angle) for f in checked.detect(image)]
        assert np.allclose([f.score for f in copy.detect(image)], [f.score for f in checked.detect(image)], atol=1e-4)
    assert checked.settings != CnnDetector().settings  # caches of detections tell the two apart


def test_a_check_that_does_not_fit_is_refused(tmp_path):
    check = FaceCheck.load()
    with pytest.raises(ModelError, match="another embedder"):
        CheckedCnnDetector(check=dataclasses.replace(check, embedder="0" * 16))
    with pytest.raises(ModelError, match="reads 7 numbers"):
        CheckedCnnDetector(check=dataclasses.replace(check, weights=np.ones(8)))
    good = check.to_dict()
    for changed in ({"band": [0.8, 0.35]}, {"band": [0.35, 2]}, {"min_score": "x"}, {"weights": "x"}, {"bias": None}):
        (tmp_path / "check.json").write_text(json.dumps(good | changed))
        with pytest.raises(ModelError, match="face check"):
            FaceCheck.load(tmp_path / "check.json")
    for text in ("", "{", '{"weights": [1, 2]}'):
        (tmp_path / "check.json").write_text(text)
        with pytest.raises(ModelError, match="face check"):
            FaceCheck.load(tmp_path / "check.json")
    with pytest.raises(KyaraError, match="float32 only"):
        get_detector("cnn-checked", precision="int8")
    for wrong in ("x", float("nan"), 2):
        with pytest.raises(KyaraError, match="min_score"):
            CheckedCnnDetector(min_score=wrong, check=check)


def test_checked_scores_rank_below_sure_ones():
    scores = rescored((0.35, 0.8), np.array([0.9, 0.5, 0.36, 0.2]), np.array([0.0, 1.0, 0.5, 1.0]))
    assert np.allclose(scores, [0.9, 0.8, 0.575, 0.0])  # sure kept, band mapped, under the band dropped


def test_recognize_and_the_cli_take_it_by_name():
    picture = data_path("newgame-illustrations", "yagami_kou") / "1.jpg"
    recognizer = Recognizer(detector="cnn-checked")
    assert recognizer.detector.name == "cnn-checked" and recognizer.recognize(picture)
    result = CliRunner().invoke(app, ["detect", str(picture), "--detector", "cnn-checked", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["detector"] == "cnn-checked" and document["images"][0]["faces"]
