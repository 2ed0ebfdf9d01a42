from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kyara.detection import _decode

pytest.importorskip("torch")
from tools.face_proposals import apply_crop_answers, crop_verdicts, unsure_proposals
from tools.train_detector import (
    Face,
    Label,
    Sample,
    _paste_oval,
    _turned,
    eye_angles,
    merged,
    portrait_labels,
    source_of,
    source_weights,
    targets,
)


def test_training_targets_decode_back_to_the_same_faces():
    """What the network is taught (targets) and how kyara reads its output (_decode) must agree."""
    faces = [Face(101.3, 60.7, 48.0, -30.0), Face(30.2, 200.9, 20.0, 75.0), Face(250.0, 5.0, 120.0, 0.0)]
    maps, weights = targets(Sample(Image.new("RGB", (256, 256)), faces), canvas=256, stride=8)
    output = maps.copy()
    output[0] = np.where(maps[0] == 1, 6.0, -6.0)  # a network that is sure of the centres, and only them
    found = sorted(_decode(output, 0.5, cell=8.0), key=lambda f: f.center[0])
    assert len(found) == 3 and weights[1].sum() == 3
    for face, truth in zip(found, sorted(faces, key=lambda f: f.cx), strict=True):
        assert math.dist(face.center, (truth.cx, truth.cy)) < 1.0
        assert abs(face.box[2] - truth.side) <= 1
        assert face.angle == truth.angle


def test_cut_off_and_unsure_faces_are_left_out_of_the_loss():
    sample = Sample(Image.new("RGB", (256, 256)), [Face(-10.0, 100.0, 60.0)], ignore=[(150.0, 150.0, 200.0, 200.0)])
    maps, weights = targets(sample, canvas=256, stride=8)
    assert maps[0].max() == 0  # no centre to learn
    assert weights[0, 12, 0] == 0 and weights[0, 12, 2] == 0 and weights[0, 12, 3] == 1  # visible part (x < 20)
    assert weights[0, 20, 20] == 0 and weights[0, 30, 30] == 1 and weights[0, 5, 20] == 1


def test_pseudo_labels_keep_one_label_per_face_preferring_sure_ones():
    labels = [
        Label((100, 100, 50, 50), sure=False),
        Label((102, 98, 50, 50), sure=True),
        Label((110, 110, 25, 25), sure=True),  # inside the first sure face: the same face
        Label((300, 100, 40, 40), sure=False),
    ]
    assert merged(labels) == [Label((102, 98, 50, 50), sure=True), Label((300, 100, 40, 40), sure=False)]


def test_on_a_portrait_with_one_sure_face_other_proposals_are_background():
    face = Label((100, 100, 80, 80), sure=True)
    inside = Label((90, 90, 120, 120), sure=False)  # centred on the face: still left out
    hand = Label((20, 250, 40, 40), sure=False)
    assert portrait_labels([face, inside, hand]) == [face, inside]
    second = Label((300, 100, 80, 80), sure=True)
    assert portrait_labels([face, second, hand]) == [face, second, hand]  # two faces: nothing is assumed
    assert portrait_labels([inside, hand]) == [inside, hand]


def test_answers_on_crops_turn_proposals_into_faces_or_background(tmp_path):
    proposals = [
        {"box": [10, 10, 50, 50], "score": 0.9, "angle": 0.0, "by": "cnn384"},
        {"box": [100, 10, 40, 40], "score": 0.35, "angle": 5.0, "by": "cnn640"},
        {"box": [200, 10, 40, 40], "score": 0.3, "angle": 0.0, "by": "cnn384"},
        {"box": [300, 10, 40, 40], "score": 0.32, "angle": 0.0, "by": "closeup"},
    ]
    labels = {"hand_checked": [], "unusable": [], "pictures": {"pictures/a.png": [dict(p) for p in proposals]}}
    crops = [{"picture": "pictures/a.png", "box": p["box"], "score": p["score"]} for p in proposals[1:]]
    answers = tmp_path / "answers.json"
    answers.write_text('{"face": [0], "not_face": [1], "unsure": [2]}')
    assert apply_crop_answers(labels, crops, [answers]) == {"face": 1, "not_face": 1, "unsure": 1}
    kept = labels["pictures"]["pictures/a.png"]
    assert kept == [proposals[0], proposals[1] | {"score": 1.0, "by": "hand"}, proposals[3]]
    assert labels["rejected"] == {"pictures/a.png": [proposals[2]]}
    assert "rejected" in labels["about"]
    before = json.dumps(labels)
    with pytest.raises(SystemExit, match="applied already"):
        apply_crop_answers(labels, crops, [answers])
    assert json.dumps(labels) == before  # refused before anything changed
    for wrong in (
        '{"face": [0], "not_face": [1]}',  # crop 2 unanswered
        '{"face": [0, 1], "not_face": [1], "unsure": [2]}',  # crop 1 twice
        '{"face": [0], "not face": [1], "unsure": [2]}',  # a misspelt answer
        '{"face": [0.5], "not_face": [1], "unsure": [2]}',
        '{"face": [0], "not_face": [1], "unsure": [2, 3]}',  # no crop 3
    ):
        answers.write_text(wrong)
        with pytest.raises(SystemExit):
            crop_verdicts([answers], len(crops))


def test_crops_to_check_are_the_left_out_proposals_of_pictures_nobody_checked_whole(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "tools"))  # as when run as a script
    sure = {"box": [10, 10, 50, 50], "score": 0.9, "angle": 0.0, "by": "cnn384"}
    weak = {"box": [200, 10, 40, 40], "score": 0.4, "angle": 0.0, "by": "cnn640"}
    faint = {"box": [300, 10, 40, 40], "score": 0.2, "angle": 0.0, "by": "cnn640"}
    on_the_face = {"box": [12, 12, 48, 48], "score": 0.45, "angle": 0.0, "by": "closeup"}
    train = "pictures/illustrations/train"
    labels = {
        "hand_checked": [f"{train}/manga/checked.jpg"],
        "unusable": [],
        "pictures": {
            f"{train}/newgame-illustrations/a.png": [sure, weak, faint, on_the_face],
            f"{train}/newgame-illustrations/no-sure-face.png": [weak],
            f"{train}/manga/checked.jpg": [sure | {"by": "hand", "score": 1.0}, weak],
            f"{train}/mal-portraits/b.jpg": [sure, weak],
        },
    }
    crops = unsure_proposals(labels, min_score=0.3)
    assert crops == [{"picture": f"{train}/newgame-illustrations/a.png", "box": weak["box"], "score": 0.4}]


def test_pasted_picture_is_centred_and_turned():
    canvas = Image.new("RGB", (200, 200), "white")
    marker = Image.new("RGB", (60, 60), "white")
    marker.paste((255, 0, 0), (25, 0, 35, 20))  # a red bar at the top middle
    _paste_oval(canvas, marker, 100, 100, 90)  # turned a quarter counter-clockwise: the bar goes left
    red = np.argwhere(np.asarray(canvas)[:, :, 1] < 128)
    assert red.size and red[:, 1].mean() < 90 and abs(red[:, 0].mean() - 100) < 5


@pytest.mark.parametrize(("turn", "angle", "grown"), [(30, -35.0, 27.32), (-50, 45.0, 28.18), (90, -95.0, 20.0)])
def test_a_turned_training_picture_keeps_its_faces_where_they_went(turn, angle, grown):
    picture = Image.new("RGB", (300, 200), "white")
    picture.paste((255, 0, 0), (230, 40, 241, 51))  # a red face centred at (235.5, 45.5)
    faces = [(Face(235.5, 45.5, 10, -5.0), True), (Face(60, 150, 20), False)]
    out, (sure, unsure) = _turned(picture, faces, turn, np.random.default_rng(0))
    red = np.argwhere((np.asarray(out)[:, :, 0] > 200) & (np.asarray(out)[:, :, 1] < 80))
    # Pixel (row, column) covers [column, column + 1): its centre is half a pixel further on.
    assert math.dist(red.mean(axis=0)[::-1] + 0.5, (sure[0].cx, sure[0].cy)) < 0.5
    assert sure[0].angle == pytest.approx(angle)  # tilted a further `turn` degrees counter-clockwise
    assert unsure[0].side == pytest.approx(grown, abs=0.01)  # the turned square's bounding square


def test_real_faces_are_taught_the_tilt_of_their_eye_line_and_near_level_as_level(face_crop_path):
    from kyara.imageio import load_image
    from kyara.landmarks import Landmarker

    face = load_image(face_crop_path).convert("RGB").resize((160, 160))
    landmarker, box = Landmarker(), (20, 20, 120, 120)

    def angles_turned(picture: Image.Image, turns: tuple[float, ...], level_within: float = 0) -> list[float]:
        angles = []
        for turn in turns:
            turned = picture.rotate(turn, Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
            sure, unsure = eye_angles(turned, [Label(box, True), Label(box, False)], landmarker, level_within)
            assert unsure.angle is None  # only sure faces are taught an angle
            angles.append(sure.angle)
        return angles

    (tilted,) = angles_turned(face, (0,))  # this crop's face is drawn tilted (about 19 degrees)
    level = face.rotate(tilted, Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    upright, right, left = angles_turned(level, (0, 15, -15))
    assert abs(upright) <= 5 and abs(tilted) >= 10, (tilted, upright)
    # Turned 15 degrees counter-clockwise, it takes -15 to stand upright, and 15 the other way.
    assert abs(right + 15) <= 6 and abs(left - 15) <= 6, (right, left)
    assert angles_turned(face, (0,), level_within=abs(tilted) + 1) == [0.0]


def test_each_source_is_drawn_in_proportion_to_the_square_root_of_its_size():
    keys = [f"pictures/illustrations/train/mal-portraits/{i}.jpg" for i in range(100)]
    keys += [f"pictures/illustrations/train/manga/{i}.jpg" for i in range(4)]
    keys += ["shared/newgame-illustrations/aoba/1.png", "shared/newgame-illustrations/kou/2.png"]
    sources = [source_of(key) for key in keys]
    assert sources[0] == "mal-portraits" and sources[100] == "manga" and set(sources[-2:]) == {"newgame-illustrations"}
    weights = source_weights(sources)
    shares = {source: weights[[s == source for s in sources]].sum() for source in set(sources)}
    total = np.sqrt(100) + np.sqrt(4) + np.sqrt(2)
    assert shares["mal-portraits"] == pytest.approx(np.sqrt(100) / total)
    assert shares["manga"] == pytest.approx(np.sqrt(4) / total)
