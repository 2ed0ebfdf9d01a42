from __future__ import annotations

import io
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kyara.bundle import default_model_path, load_bundle, save_bundle
from kyara.cli import app
from kyara.cut import gray_cuts
from kyara.errors import KyaraError, ModelError, NoFaceError
from kyara.gallery import characters, editable_model_path, enroll, forget
from kyara.pipeline import Recognizer
from tests.conftest import drawing_module

runner = CliRunner()
PURPLE = ((90, 60, 160), (60, 120, 220))
ORANGE = ((230, 160, 70), (200, 60, 90))


def picture(colours, size: int, background) -> Image.Image:
    """An original character on a canvas: a whole picture, not a crop, so the detector is used."""
    head = drawing_module().draw_character(size, *colours)
    canvas = Image.new("RGB", (size + 300, size + 80), background)
    canvas.paste(head, (150, 40), head)
    return canvas


@pytest.fixture()
def model(tmp_path):
    path = tmp_path / "model.kyara"
    shutil.copy(default_model_path(), path)
    return path


def test_enroll_recognize_forget(model, tmp_path):
    backgrounds = [(255, 255, 255), (230, 240, 255), (255, 240, 230), (240, 255, 240)]
    for name, colours in (("Aoi (OC)", PURPLE), ("Mikan オレンジ", ORANGE)):
        result = enroll(name, [picture(colours, s, b) for s, b in zip((300, 340, 380, 420), backgrounds)], model)
        assert result.added == 4 and not result.skipped
    recognizer = Recognizer(model)
    aoi = recognizer.recognize(picture(PURPLE, 360, (250, 250, 200)))
    mikan = recognizer.recognize(picture(ORANGE, 360, (250, 250, 200)))
    assert [f.label for f in aoi] == ["Aoi (OC)"] and [f.label for f in mikan] == ["Mikan オレンジ"]
    assert {"name": "Aoi (OC)", "trained": False, "training_images": 0, "enrolled_images": 4} in characters(model)
    first = picture(PURPLE, 300, backgrounds[0])
    gray_face = recognizer.embed(gray_cuts(first, recognizer.cuts_to_learn(first)[:1]))[0]
    stored = load_bundle(model)
    np.testing.assert_allclose(stored.gallery_gray[stored.gallery_labels.index("Aoi (OC)")], gray_face, atol=1e-4)
    assert float(gray_face @ stored.gallery[stored.gallery_labels.index("Aoi (OC)")]) < 0.99  # not the colour one

    assert forget("Aoi (OC)", model) == 4
    assert load_bundle(model).gallery_gray.shape == load_bundle(model).gallery.shape
    after = Recognizer(model).recognize(picture(PURPLE, 360, (250, 250, 200)))
    assert after[0].label != "Aoi (OC)"
    assert "Aoi (OC)" not in load_bundle(model).all_labels()


def test_forgetting_a_trained_character_removes_both_its_prototypes(model):
    before = load_bundle(model)
    name = before.labels[0]
    assert forget(name, model) == 1
    after = load_bundle(model)
    assert name not in after.all_labels() and after.head.shape == (len(before.labels) - 1, before.embedding_dim)
    assert np.array_equal(after.gray_head, before.gray_head[1:]) and np.array_equal(after.head, before.head[1:])


def test_enrollment_finds_faces_with_the_callers_recognizer(model):
    recognizer = Recognizer(model)
    detected = []
    detect = recognizer.detector.detect
    recognizer.detector = type("Counting", (), {"detect": lambda _, image: detected.append(image) or detect(image)})()
    result = enroll("Aoi (OC)", [picture(PURPLE, 340, (255, 255, 255))], recognizer)
    assert result.added == 1 and len(detected) == 1 and result.model == str(model)
    assert "Aoi (OC)" in load_bundle(model).all_labels() and "Aoi (OC)" not in recognizer.bundle.all_labels()
    with pytest.raises(ModelError, match="in memory"):
        enroll("Aoi (OC)", [picture(PURPLE, 340, (255, 255, 255))], Recognizer(load_bundle(model)))


def test_failed_enrollment_changes_nothing(model, tmp_path):
    before = model.read_bytes()
    blank = tmp_path / "blank.png"
    Image.new("RGB", (900, 600), (255, 255, 255)).save(blank)
    with pytest.raises(NoFaceError, match="no usable picture"):
        enroll("Nobody", [blank, tmp_path / "missing.png"], model)
    with pytest.raises(KyaraError, match="printable"):
        enroll("bad\nname", [blank], model)
    with pytest.raises(KyaraError, match="cannot be a character name"):
        enroll("..", [blank], model)
    with pytest.raises(KyaraError, match="not a character"):
        forget("Nobody", model)
    assert model.read_bytes() == before


def test_cli_uses_the_users_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    shipped = default_model_path().read_bytes()
    shipped_gallery = load_bundle(default_model_path()).gallery_labels
    pictures = []
    for i, size in enumerate((300, 360, 420)):
        pictures.append(tmp_path / f"aoi {i}.png")
        picture(PURPLE, size, (255, 255, 255)).save(pictures[-1])
    result = runner.invoke(app, ["enroll", "Aoi", *map(str, pictures)])
    assert result.exit_code == 0, result.output
    user_copy = tmp_path / "data" / "kyara" / "model.kyara"
    assert user_copy.is_file() and load_bundle(user_copy).gallery_labels == [*shipped_gallery, "Aoi", "Aoi", "Aoi"]
    listed = runner.invoke(app, ["characters", "--json"])
    assert '"Aoi"' in listed.stdout and '"gura"' in listed.stdout
    assert default_model_path().read_bytes() == shipped  # the shipped model is untouched
    result = runner.invoke(app, ["forget", "gura"])
    assert result.exit_code == 0 and "gura" not in load_bundle(user_copy).labels


def test_the_shipped_model_named_by_its_path_is_never_changed(tmp_path, monkeypatch):
    """kyara.enroll(model=<the package's default.kyara>) wrote into the package (an editable
    install's checkout): the shipped model, however named, sends changes to the user's copy."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    shipped = default_model_path().read_bytes()
    package_copy = tmp_path / "package" / "default.kyara"  # should the rule break, the checkout's file stays whole
    package_copy.parent.mkdir()
    package_copy.write_bytes(shipped)
    monkeypatch.setattr("kyara.gallery.default_model_path", lambda: package_copy)
    (tmp_path / "link.kyara").symlink_to(package_copy)
    pictures = [tmp_path / f"aoi {i}.png" for i in range(2)]
    for path, size in zip(pictures, (300, 380), strict=True):
        picture(PURPLE, size, (255, 255, 255)).save(path)
    result = enroll("Aoi", pictures, str(tmp_path / "link.kyara"))
    user_copy = tmp_path / "data" / "kyara" / "model.kyara"
    assert result.added == 2 and result.model == str(user_copy)
    assert forget("gura", package_copy) == 1
    assert package_copy.read_bytes() == shipped
    assert "Aoi" in load_bundle(user_copy).gallery_labels and "gura" not in load_bundle(user_copy).labels


def test_enroll_arguments_of_the_wrong_kind_are_clear_errors(model, tmp_path):
    before = model.read_bytes()
    blank = np.full((64, 64, 3), 255, np.uint8)  # crop-sized: it was taken whole, a face of 'blank'
    with pytest.raises(NoFaceError, match="no face"):
        enroll("blank", [blank], model)
    with pytest.raises(KyaraError, match="no pictures"):
        enroll("Aoi", [], model)
    for name in (None, b"Aoi", 5):
        with pytest.raises(KyaraError, match="is text"):
            enroll(name, [blank], model)
    photo = tmp_path / "aoi.png"
    picture(PURPLE, 300, (255, 255, 255)).save(photo)
    with pytest.raises(ModelError, match="not a kyara model"):
        enroll("Aoi", [photo], photo)
    assert not (tmp_path / ".aoi.png.lock").exists()  # no lock file left beside the picture
    assert model.read_bytes() == before
    assert enroll("Aoi", str(photo), model).added == 1  # one picture, not its path's characters


def test_the_users_copy_is_made_once_and_only_when_needed(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    user_copy = tmp_path / "data" / "kyara" / "model.kyara"
    with pytest.raises(KyaraError, match="not a character"):
        forget("nobody")
    assert not user_copy.exists()  # forgetting nobody does not freeze the shipped model
    with ThreadPoolExecutor(4) as pool:  # four first enrollments at once
        paths = list(pool.map(editable_model_path, [None] * 4))
    assert paths == [user_copy] * 4 and user_copy.read_bytes() == default_model_path().read_bytes()
    assert [p.name for p in user_copy.parent.iterdir() if not p.name.endswith(".lock")] == ["model.kyara"]
    with pytest.raises(ModelError, match="no such model"):
        enroll("Aoi", [tmp_path / "aoi.png"], tmp_path / "no folder" / "model.kyara")
    assert not (tmp_path / "no folder").exists()
    assert forget(" gura ", user_copy) == 1  # names are cleaned as enroll cleans them


def test_trained_names_as_folders_gave_them_and_bytes_without_a_face(tmp_path):
    bundle = load_bundle(default_model_path())
    decomposed = "Ame\u0301lie "  # a folder name from macOS, with a trailing space
    bundle.labels = [decomposed, *bundle.labels[1:]]
    model = tmp_path / "model.kyara"
    save_bundle(bundle, model)
    assert forget(decomposed, model) == 1 and decomposed not in load_bundle(model).labels
    blank = io.BytesIO()
    Image.new("RGB", (900, 600), (255, 255, 255)).save(blank, "PNG")
    with pytest.raises(NoFaceError) as refused:
        enroll("Aoi", [blank.getvalue()], model)
    assert "picture 1: no face found" in str(refused.value) and len(str(refused.value)) < 200
