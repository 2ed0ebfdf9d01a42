from __future__ import annotations

import io
import json
import os
import shutil

from typer.testing import CliRunner

from kyara.cli import app
from tests.conftest import ROOT, data_path

runner = CliRunner()


def test_recognize_json_batch_with_a_bad_file(tmp_path):
    source = data_path("newgame-illustrations", "yagami_kou")
    folder = tmp_path / "my pics (1)"
    folder.mkdir()
    for name in ("1.jpg", "10.jpg"):
        shutil.copy(source / name, folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = runner.invoke(app, ["recognize", str(folder), "--json", "--top-k", "2"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    paths = [image["path"] for image in document["images"]]
    assert paths == [str(folder / "1.jpg"), str(folder / "10.jpg"), str(folder / "broken.png")]
    good, _, bad = document["images"]
    assert set(bad) == {"path", "error"} and "broken.png" in bad["error"]
    assert good["width"] > 0 and good["faces"]
    for face in good["faces"]:
        assert {"box", "detector_score", "label", "confidence", "top_k", "fallback"} <= set(face)
        assert len(face["top_k"]) == 2
    assert document["model"]["characters"] == 148
    assert "broken.png" in result.stderr


def test_recognize_table_and_glob(tmp_path):
    source = data_path("newgame-illustrations", "yagami_kou")
    pattern = str(source / "1[0-2].jpg")  # a glob with three matches
    result = runner.invoke(app, ["recognize", pattern, "--top-k", "3"])
    assert result.exit_code == 0, result.output
    assert "10.jpg" in result.stdout and "12.jpg" in result.stdout and "confidence" in result.stdout
    assert "13.jpg" not in result.stdout

    drawn = runner.invoke(app, ["recognize", str(ROOT / "docs" / "example.png")])
    unknown = next(line for line in drawn.stdout.splitlines() if "unknown (closest:" in line)
    # No percentage of its own: the closest guess's shows with the other guesses.
    assert unknown.split("│")[3].strip() == "-" and "%" in unknown.split("│")[4]


def test_detect_json(tmp_path):
    image = data_path("newgame-illustrations", "yagami_kou") / "1.jpg"
    result = runner.invoke(app, ["detect", str(image), "--json"])
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    faces = document["images"][0]["faces"]
    assert document["detector"] == "cnn"
    assert faces and all(len(face["box"]) == 4 and face["score"] > 0 for face in faces)
    # animeface, on request, adds landmarks and colours.
    result = runner.invoke(app, ["detect", str(image), "--json", "--detector", "animeface"])
    faces = json.loads(result.stdout)["images"][0]["faces"]
    assert result.exit_code == 0 and faces and all(face["landmarks"] and face["colors"] for face in faces)
    unknown = runner.invoke(app, ["detect", str(image), "--detector", "yolo"])
    assert unknown.exit_code == 2 and "unknown detector 'yolo'" in unknown.output


def test_missing_file_and_bad_model_exit_non_zero(tmp_path):
    result = runner.invoke(app, ["recognize", str(tmp_path / "nothing.png"), "--json"])
    assert result.exit_code == 1 and "no such file" in json.loads(result.stdout)["images"][0]["error"]
    bad_model = tmp_path / "bad.kyara"
    bad_model.write_text("nope")
    result = runner.invoke(app, ["recognize", str(tmp_path / "x.png"), "--model", str(bad_model)])
    assert result.exit_code == 2 and "not a valid kyara model" in result.stderr
    for command in (["recognize", str(bad_model), "--model"], ["train", str(tmp_path), "-o", "m.kyara", "--from"]):
        folder = runner.invoke(app, [*command, str(tmp_path)])
        assert folder.exit_code == 2 and "a folder, not a model file" in folder.stderr


def test_names_that_are_not_utf8_are_printed_escaped(tmp_path, face_crop_path):
    folder = tmp_path / os.fsdecode(b"pics \xff")
    folder.mkdir()
    shutil.copy(face_crop_path, folder / "a.jpg")
    result = runner.invoke(app, ["recognize", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    (image,) = json.loads(result.stdout)["images"]
    assert image["path"].startswith(str(tmp_path)) and "\udcff" in image["path"] and image["faces"]


def test_user_text_is_printed_literally_never_as_markup_or_raw_control_characters(tmp_path):
    """Square brackets in paths and messages are not rich markup; an ESC in a file name is shown escaped."""
    from kyara.cli import shown

    assert "kyara[index]" in rendered(shown("pip install 'kyara[index]'"))
    assert rendered(shown("[bold]X")) == "[bold]X"
    assert "\x1b" not in shown("a\x1b[31mred.png") and "\\x1b" in shown("a\x1b[31mred.png")
    picture = tmp_path / "[a]x.png"
    picture.write_bytes(b"not a picture")
    result = CliRunner().invoke(app, ["recognize", str(picture)])
    assert result.exit_code == 1 and "[a]x.png" in result.stderr


def rendered(markup: str) -> str:
    """What rich prints for `markup`, without styles."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(markup, end="")
    return console.file.getvalue()


def test_an_empty_argument_is_no_picture_not_the_current_folder(tmp_path, monkeypatch):
    """`kyara enroll NAME "$UNSET"` enrolled every picture under the current folder."""
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 180, 160)).save(tmp_path / "here.png")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["detect", "", "--json"])
    assert result.exit_code == 1 and "here.png" not in result.output, result.output


def test_an_empty_path_option_is_refused_not_the_current_folder(tmp_path, monkeypatch):
    """`kyara index "$UNSET" --db x` indexed the current folder: typer reads '' as Path('.')."""
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 180, 160)).save(tmp_path / "here.png")
    monkeypatch.chdir(tmp_path)
    for arguments in (["crop", "", "out"], ["index", "", "--db", "x.kyaradb"], ["characters", "--model", " "]):
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2 and "an empty path" in result.output, (arguments, result.output)
    # A file to write named like a folder: Path dropped the slash and wrote a file "out".
    for arguments in (["train", ".", "-o", "out/"], ["explain", "here.png", "-o", "out/"]):
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2 and "names a folder" in result.output, (arguments, result.output)
    assert sorted(os.listdir(tmp_path)) == ["here.png"]


def test_an_empty_folder_is_reported_not_silently_skipped(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["recognize", str(tmp_path / "empty"), "--json"])
    assert result.exit_code == 0 and "no image files" in result.stderr
    assert json.loads(result.stdout)["images"] == []


def test_a_file_that_cannot_be_read_makes_the_exit_status_1(tmp_path):
    """The README's rule; crop, evaluate and enroll said 0 with some files skipped."""
    from tests.conftest import drawing_module

    model = tmp_path / "model.kyara"
    shutil.copy(ROOT / "kyara" / "models" / "default.kyara", model)
    face = tmp_path / "pictures" / "violet" / "face.png"
    face.parent.mkdir(parents=True)
    drawing_module().draw_character(200, (90, 60, 160), (60, 120, 220)).convert("RGB").save(face)
    broken = face.with_name("broken.png")
    broken.write_bytes(face.read_bytes()[:300])
    result = runner.invoke(app, ["enroll", "violet", str(face), str(broken), "--model", str(model)])
    assert result.exit_code == 1 and "enrolled 1 picture(s)" in result.stdout and "broken.png" in result.stderr
    result = runner.invoke(app, ["crop", str(tmp_path / "pictures"), str(tmp_path / "crops")])
    assert result.exit_code == 1 and "1 unreadable" in result.stdout, result.output
    broken.unlink()
    result = runner.invoke(app, ["crop", str(tmp_path / "pictures"), str(tmp_path / "crops2")])
    assert result.exit_code == 0 and "0 unreadable" in result.stdout, result.output
