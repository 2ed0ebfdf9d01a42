"""kyara explain: a heat map per face, and the checks that the maps are honest (Adebayo et al., 2018)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

import kyara
from kyara.cli import app
from kyara.cut import cut_face
from kyara.explanation import (
    _heat_layer,
    caption_boxes,
    explain_crop,
    explain_to_file,
    input_pixels,
    overlay,
    saliency_map,
    scorer,
)
from kyara.pipeline import Recognizer
from tests.conftest import ROOT, data_path
from tests.explanation_checks import deletion_area, deletion_curve, randomized_model, rank_correlation

EXAMPLE = ROOT / "docs" / "example.png"
runner = CliRunner()


@pytest.fixture(scope="module")
def held_out_faces(held_out_files):
    """One held-out holoen-faces crop (never trained on) of each of eight characters."""
    by_character = defaultdict(list)
    for path in held_out_files:
        if path.parts[-3] == "holoen-faces":
            by_character[path.parent.name].append(path)
    rng = random.Random(0)
    return [rng.choice(by_character[name]) for name in rng.sample(sorted(by_character), 8)]


def heat_peak_pixel(face: dict) -> tuple[tuple[int, int], bool]:
    """Where a face's strongest evidence lies in the picture (from its JSON), and whether it is for the label."""
    heatmap = np.asarray(face["heatmap"])
    row, column = np.unravel_index(np.abs(heatmap).argmax(), heatmap.shape)
    x, y, width, height = face["crop_box"]
    dx = (column + 0.5) / heatmap.shape[1] * width - width / 2
    dy = (row + 0.5) / heatmap.shape[0] * height - height / 2
    turn = math.radians(face["angle"])
    point = (
        x + width / 2 + dx * math.cos(turn) - dy * math.sin(turn),
        y + height / 2 + dx * math.sin(turn) + dy * math.cos(turn),
    )
    return (round(point[0]), round(point[1])), bool(heatmap[row, column] > 0)


def assert_heat_shown_on_every_face(drawn: Image.Image, faces: list[dict]) -> None:
    for face in faces:
        point, supports = heat_peak_pixel(face)
        red, _, blue = (int(c) for c in drawn.getpixel(point))
        assert (red - blue if supports else blue - red) > 80, (face["label"], point, drawn.getpixel(point))


def test_heat_map_sits_where_the_face_was_cut(recognizer):
    """The crop square, turned by the face's angle, is exactly what the model was shown."""
    picture = kyara.load_image(EXAMPLE)
    faces = recognizer.detect(picture)
    assert any(face.angle for face in faces)  # our drawing has a tilted face
    for face in faces:
        cut = cut_face(picture, face)
        x, y, width, height = cut.square
        centre = (x + width / 2, y + height / 2)
        turned = picture.rotate(face.angle, Image.Resampling.BILINEAR, center=centre, fillcolor=(255, 255, 255))
        ours = np.asarray(turned.crop((x, y, x + width, y + height)), np.float32)
        shown = np.asarray(cut.pixels.resize((width, height)), np.float32)
        assert np.abs(ours - shown).mean() < 8


def test_deleting_salient_pixels_first_lowers_the_score_faster_than_random(recognizer, held_out_faces):
    ours, shuffled = [], []
    size = recognizer.embedder.input_size
    for path in held_out_faces:
        crop, label = kyara.load_image(path), path.parent.name
        explanation = explain_crop(crop, recognizer, label)
        score = scorer(recognizer.classifier, label)
        curve = deletion_curve(recognizer.embedder, crop, explanation.heatmap, score)
        assert curve[0] == pytest.approx(explanation.score, abs=1e-5) and curve[-1] < curve[0]
        ours.append(deletion_area(curve))
        random_maps = [np.random.default_rng(seed).random((size, size)) for seed in range(3)]
        shuffled.append(
            np.mean([deletion_area(deletion_curve(recognizer.embedder, crop, m, score)) for m in random_maps])
        )
    assert np.mean(ours) < 0.75 * np.mean(shuffled)  # 60 faces: 0.29 against 0.77 (docs/explanations.md)
    assert np.mean(np.array(ours) < np.array(shuffled)) >= 0.75


def test_heat_map_changes_when_the_weights_are_randomized(recognizer, held_out_faces):
    """Cascading randomization from the top: the map must follow the model, not the picture alone.
    A second draw of masks on the intact model shows the map's own noise, to compare with."""
    bundle = recognizer.bundle
    randomized = {
        share: Recognizer(dataclasses.replace(bundle, onnx=randomized_model(bundle.onnx, share)), recognizer.detector)
        for share in (0.1, 1.0)
    }
    redrawn, changed = [], defaultdict(list)
    for path in held_out_faces[:4]:
        crop, label = kyara.load_image(path), path.parent.name
        original = explain_crop(crop, recognizer, label).heatmap
        pixels = input_pixels(crop, recognizer.embedder.input_size)
        _, again = saliency_map(recognizer.embedder, pixels, scorer(recognizer.classifier, label), seed=1)
        redrawn.append(rank_correlation(original, again))
        for share, model in randomized.items():
            changed[share].append(abs(rank_correlation(original, explain_crop(crop, model, label).heatmap)))
    assert np.mean(redrawn) > 0.5  # measured on 12 faces: 0.63
    for share, correlations in changed.items():
        assert np.mean(correlations) < 0.4, (share, correlations)  # measured on 12 faces: 0.24 and 0.20


def test_why_fuwawa_and_not_mococo(recognizer, held_out_files):
    """The look-alike twins: the contrast explains sim(fuwawa) - sim(mococo), not fuwawa alone."""
    data_path("holoen-faces")
    fuwawa = [p for p in held_out_files if p.parts[-3:-1] == ("holoen-faces", "fuwawa")]
    path = next(p for p in fuwawa if recognizer.recognize_crop(p).label == "fuwawa")
    crop = kyara.load_image(path)
    plain = explain_crop(crop, recognizer)
    contrast = explain_crop(crop, recognizer, versus="mococo")
    similarities = recognizer.classifier.similarities(recognizer.embedder.embed([crop]))[0]
    labels = recognizer.classifier.labels
    assert (plain.label, plain.versus, plain.known) == ("fuwawa", None, True)
    assert plain.caption.startswith("fuwawa ") and plain.score == pytest.approx(similarities[labels.index("fuwawa")])
    assert (contrast.label, contrast.versus) == ("fuwawa", "mococo") and contrast.caption.startswith("fuwawa vs mococo")
    expected = similarities[labels.index("fuwawa")] - similarities[labels.index("mococo")]
    assert contrast.score == pytest.approx(expected, abs=1e-5) and contrast.score > 0
    # The contrast is fuwawa's map minus mococo's, and mococo's part is not negligible.
    rival = explain_crop(crop, recognizer, label="mococo")
    np.testing.assert_allclose(contrast.heatmap, plain.heatmap - rival.heatmap, atol=1e-6)
    assert np.abs(rival.heatmap).max() > 0.05 * np.abs(plain.heatmap).max()  # 0.09 with model 0.2.0
    assert np.array_equal(explain_crop(crop, recognizer, versus="mococo").heatmap, contrast.heatmap)
    # A face named `versus` itself is explained against its runner-up.
    runner_up = explain_crop(crop, recognizer, versus="fuwawa")
    assert runner_up.label == "fuwawa" and runner_up.versus not in (None, "fuwawa")


def test_every_face_of_a_multi_face_illustration_gets_a_readable_overlay(recognizer):
    source = data_path("newgame-illustrations", "yagami_kou", "0.jpg")  # seven faces, some tilted
    picture = kyara.load_image(source)
    faces = recognizer.detect(picture)
    explanations = kyara.explain(picture, recognizer)
    assert len(explanations) == len(faces) >= 5 and [e.box for e in explanations] == [f.box for f in faces]
    drawn = overlay(picture, explanations)
    assert drawn.size == picture.size
    # A neighbour's caption may cover the heat of a face under 40 px (here a hair ornament the
    # detector takes for a 29 px face): the captions must not overlap each other, checked below.
    readable = [e.to_dict() for e in explanations if e.box[2] >= 40]
    assert len(readable) >= 5
    assert_heat_shown_on_every_face(drawn, readable)
    boxes = caption_boxes(explanations, picture.size)
    for i, (left, top, right, bottom) in enumerate(boxes):
        assert 0 <= left < right <= picture.width and 0 <= top < bottom <= picture.height
        assert not any(left < b[2] and b[0] < right and top < b[3] and b[1] < bottom for b in boxes[i + 1 :])


def test_max_faces_explains_only_the_most_face_like(recognizer):
    picture = kyara.load_image(EXAMPLE)  # three drawn faces
    faces = recognizer.detect(picture)
    explanations = kyara.explain(picture, recognizer, max_faces=2)
    assert len(faces) == 3 and [e.box for e in explanations] == [f.box for f in faces[:2]]


def test_cli_explain_writes_the_overlay_and_json(tmp_path):
    output = tmp_path / "out" / "explained.png"
    result = runner.invoke(app, ["explain", str(EXAMPLE), "-o", str(output), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["output"] == str(output) and len(document["faces"]) == 3
    for face in document["faces"]:
        assert np.asarray(face["heatmap"]).shape == (32, 32) and len(face["crop_box"]) == 4 and face["label"]
    drawn = kyara.load_image(output)
    assert drawn.size == Image.open(EXAMPLE).size
    assert_heat_shown_on_every_face(drawn, document["faces"])
    assert [p.name for p in output.parent.iterdir()] == ["explained.png"]  # no temporary file left
    table = runner.invoke(app, ["explain", str(EXAMPLE), "-o", str(tmp_path / "again.jpg"), "--versus", "kronii"])
    assert table.exit_code == 0 and "vs" in table.stdout and (tmp_path / "again.jpg").stat().st_size > 0


def test_picture_without_a_face_is_explained_whole(recognizer):
    picture = Image.new("RGB", (300, 200), (240, 240, 250))
    ImageDraw.Draw(picture).ellipse([100, 50, 200, 150], fill=(200, 60, 90))
    [explanation] = kyara.explain(picture, recognizer)
    assert explanation.fallback and explanation.box == (0, 0, 300, 200) and explanation.crop_box == (0, -50, 300, 300)
    assert json.dumps(explanation.to_dict())
    with pytest.raises(kyara.KyaraError, match="cells"):
        explanation.to_dict(cells=0)  # was Pillow's ValueError
    assert overlay(picture, [explanation]).size == (300, 200)
    # A long, thin picture: the heat over its padded square was the long side squared (1.6 GB at 20,000 px).
    thin = Image.new("RGB", (8000, 20), (240, 240, 250))
    [explanation] = kyara.explain(thin, recognizer)
    heat, corner = _heat_layer(explanation, thin.size)
    assert heat.size == (8000, 20) and corner == (0, 0)
    assert np.asarray(overlay(thin, [explanation])).shape == (20, 8000, 3)
    for wrong in (0, -1, 1.5):
        with pytest.raises(kyara.KyaraError, match="max_faces"):
            kyara.explain(picture, recognizer, max_faces=wrong)


def test_bad_requests_get_clear_errors_and_write_nothing(tmp_path, recognizer):
    with pytest.raises(kyara.KyaraError, match="does not know 'nobody'"):
        kyara.explain(EXAMPLE, recognizer, label="nobody")
    with pytest.raises(kyara.KyaraError, match="against itself"):
        explain_crop(EXAMPLE, recognizer, label="gura", versus="gura")
    output = tmp_path / "explained.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cases = [
        ([str(broken), "-o", str(output)], 1, "broken.png"),
        ([str(EXAMPLE), "-o", str(tmp_path / "explained.gif")], 2, ".png, .jpg"),
        ([str(EXAMPLE), "-o", str(output), "--versus", "nobody"], 2, "does not know"),
    ]
    for arguments, status, message in cases:
        result = runner.invoke(app, ["explain", *arguments])
        assert result.exit_code == status and message in result.stderr, result.output
    assert list(tmp_path.iterdir()) == [broken]
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 90), (250, 250, 250)).save(blank)
    taken = tmp_path / "taken.png"
    taken.mkdir()
    result = runner.invoke(app, ["explain", str(blank), "-o", str(taken)])  # said before the work now
    assert result.exit_code == 2 and "is a folder" in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.png", "broken.png", "taken.png"]
    under_a_file = tmp_path / "blank.png" / "out.png"
    with pytest.raises(kyara.KyaraError, match="cannot create the folder"):
        explain_to_file(blank, under_a_file, recognizer)
    before = blank.read_bytes()  # it was overwritten with its heat maps
    result = runner.invoke(app, ["explain", str(blank), "-o", str(tmp_path / "." / "blank.png")])
    assert result.exit_code == 2 and "is the picture being explained" in result.stderr, result.output
    assert blank.read_bytes() == before
