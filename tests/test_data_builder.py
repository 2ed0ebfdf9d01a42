"""tools/build_data.py: labels joined right, reserved characters and repositories never used, LFS refused."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import data_path
from tools import build_data


def git_snapshot(mirrors: Path, repo: str, files: dict[str, bytes]) -> str:
    """A one-commit repository laid out as the fetch tool leaves snapshots; returns its commit."""
    folder = mirrors / repo.replace("/", "+") / "repo"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    run = {"cwd": folder, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q"], **run)
    subprocess.run(["git", "add", "-A"], **run)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"], **run)
    return subprocess.run(["git", "rev-parse", "HEAD"], **run, text=True).stdout.strip()


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def mirrors(tmp_path, monkeypatch):
    labels = "\n".join(
        [
            "0,011_kawashima_ami/face_1.png",
            "1,000_hatsune_miku/face_2.png",  # reserved for independent evaluation
            "2,012_yuno/face_3.png",
            "3,013_nerine/face_3.png",  # the same file name in two classes: no label can be trusted
            "4,014_shana_other/face_4.png",
        ]
    )
    pictures = {f"data/face_{i}.png": png(c) for i, c in enumerate(["red", "green", "blue"], start=1)}
    pictures["data/face_4.png"] = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n"
    commits = {
        "arkel23/moeimouto_animefacecharacterdataset": git_snapshot(
            tmp_path, "arkel23/moeimouto_animefacecharacterdataset",
            {"moeimouto_animefacecharacterdataset.csv": labels.encode()},
        ),
        "rajkarthik2003/Anime-YOLO-AI": git_snapshot(tmp_path, "rajkarthik2003/Anime-YOLO-AI", pictures),
    }  # fmt: skip
    monkeypatch.setattr(build_data, "COMMITS", {**build_data.COMMITS, **commits})
    return tmp_path


def test_moeimouto_faces_are_labelled_once_and_reserved_characters_never_written(mirrors, tmp_path):
    out = tmp_path / "out"
    builder = build_data.Builder(mirrors, out)
    builder.moeimouto()
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["faces/moeimouto/011_kawashima_ami/face_1.png"]
    assert [e.character for e in builder.entries] == ["011_kawashima_ami"]
    assert not any(e.character in build_data.RESERVED_MOEIMOUTO for e in builder.entries)


def test_reserved_repositories_are_refused(mirrors):
    for repo in build_data.NEVER_USE:
        with pytest.raises(SystemExit, match="reserved"):
            build_data.Snapshot(mirrors, repo)


@pytest.mark.parametrize(
    "name",
    ["Konata_Izumi_2169_0.jpg", "illustrations/train/mal-portraits/Shana_1426_0.jpg", "C_Akiyama_Mio", "Hatsune Miku",
     "Akiyama Mio, Hirasawa Yui", "Card_KonataIzumi.webp", "Fate_T._Harlaown_1_0.jpg", "Lelouch_vi_Britannia"],
)  # fmt: skip
def test_reserved_characters_are_recognised_under_any_spelling(name):
    assert build_data.is_reserved(name)


@pytest.mark.parametrize(
    "name", ["Haruhi_Fujioka_18_0.jpg", "Kushana_541_0.jpg", "Teletha_Testarossa_273_0.jpg", "Miku_Nakano", "mio_1.jpg"]
)
def test_other_characters_sharing_a_name_are_kept(name):
    assert not build_data.is_reserved(name)


def test_a_portrait_of_a_reserved_character_is_never_written(tmp_path):
    builder = build_data.Builder(tmp_path, tmp_path / "out")
    for name in ("Konata_Izumi_2169_0.jpg", "Kagami_Hiiragi_2170_0.jpg"):
        builder.illustration("KevinMorrison-629/HakaribotImages", "train", f"mal-portraits/{name}", png("red"))
    written = [p.name for p in (tmp_path / "out").rglob("*.jpg")]
    assert written == ["Kagami_Hiiragi_2170_0.jpg"]
    assert builder.reserved_left_out == ["illustrations/train/mal-portraits/Konata_Izumi_2169_0.jpg"]


def test_no_training_label_is_a_reserved_character():
    """The labels committed for training and the benchmark's pictures name no reserved character
    (shipped models and the corpus)."""
    labels = json.loads((Path(__file__).parents[1] / "tools" / "detector-labels.json").read_text())
    assert not [key for key in labels["pictures"] if build_data.is_reserved(key)]
    benchmark = json.loads((Path(__file__).parents[1] / "benchmarks" / "detection_boxes_anime.json").read_text())
    assert not [image["path"] for image in benchmark["images"] if build_data.is_reserved(image["path"])]
    # cc-anime-images names its pictures by first name only ("miku_1.jpg"): those are listed as skipped.
    reserved_skipped = {entry["path"] for entry in benchmark["skipped"] if "reserved" in entry["reason"]}
    assert len(reserved_skipped) == 5 and not reserved_skipped & {image["path"] for image in benchmark["images"]}
    reserved_names = {name.split("_", 1)[1] for name in build_data.RESERVED_MOEIMOUTO}
    from kyara.bundle import default_model_path, load_bundle

    known = {label.lower() for label in load_bundle(default_model_path()).all_labels()}
    assert not any(name in label for label in known for name in reserved_names)


def test_the_recognition_corpus_names_a_character_once_and_refuses_reserved_ones(tmp_path, monkeypatch):
    """scripts/corpus.py: moeimouto's numbered folder and danbooru6's folder of the same character are
    one class; a folder of a reserved character stops the build."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "scripts"))
    import corpus

    data, faces = tmp_path / "data", tmp_path / "faces"
    folders = ["holoen-faces/gura", "newgame-faces/toyama_rin", "danbooru6-faces/aisaka_taiga",
               "moeimouto/030_aisaka_taiga", "moeimouto/054_horo"]  # fmt: skip
    for index, folder in enumerate(folders):
        root = data if "moeimouto" not in folder else faces
        (root / folder).mkdir(parents=True)
        for shade in range(2):
            Image.new("RGB", (96, 96), (40 * index, 90 * shade, 200)).save(root / folder / f"{shade}.png")
    (faces / "naruto").mkdir()
    loaded = corpus.load_corpus(data, faces, tmp_path / "corpus.npz").images
    assert loaded.classes == ["aisaka_taiga", "gura", "horo", "toyama_rin"]
    assert loaded.counts()["aisaka_taiga"] == 4
    assert corpus.series_of("aisaka_taiga") == "toradora" and corpus.series_of("gura") == "hololive_en"

    (faces / "moeimouto" / "000_hatsune_miku").mkdir()
    Image.new("RGB", (96, 96), "white").save(faces / "moeimouto" / "000_hatsune_miku" / "0.png")
    with pytest.raises(SystemExit, match="reserved"):
        corpus.load_corpus(data, faces, tmp_path / "other.npz")


def test_portraits_leave_out_benchmark_characters_and_pages_that_are_not_pictures(tmp_path, monkeypatch):
    """...and the manifest says which were left out, a reserved character's among the reserved."""
    commits = {
        "Nis5l/WaifuCollector": git_snapshot(
            tmp_path, "Nis5l/WaifuCollector",
            {"server/static/card/Card_Ai_Hayasaka.png": png("red"), "server/static/card/Card_Rem.png": png("blue")},
        ),
        "KevinMorrison-629/HakaribotImages": git_snapshot(
            tmp_path, "KevinMorrison-629/HakaribotImages",
            {
                "images/Monkey_D._Luffy_40_0.jpg": png("green"),
                "images/AiHayasaka_123_0.jpg": png("red"),  # the same character, spelt otherwise
                "images/Gorou_Majima_196180_0.jpg": b"<!DOCTYPE html><html></html>",  # a saved web page
                "images/Konata_Izumi_2169_0.jpg": png("red"),  # reserved, and in the benchmark
            },
        ),
    }  # fmt: skip
    monkeypatch.setattr(build_data, "COMMITS", {**build_data.COMMITS, **commits})
    builder = build_data.Builder(tmp_path, tmp_path / "out")
    builder.portraits({build_data.character_key("Ai Hayasaka"), build_data.character_key("Konata Izumi")})
    assert sorted(e.path for e in builder.entries) == [
        "illustrations/train/mal-portraits/Monkey_D._Luffy_40_0.jpg",
        "illustrations/train/portraits/Card_Rem.png",
    ]
    assert {e.character for e in builder.entries} == {"Monkey_D._Luffy", "Rem"}
    assert sorted(builder.benchmark_left_out) == [
        "illustrations/train/mal-portraits/AiHayasaka_123_0.jpg",
        "illustrations/train/portraits/Card_Ai_Hayasaka.png",
    ]
    assert builder.reserved_left_out == ["illustrations/train/mal-portraits/Konata_Izumi_2169_0.jpg"]


def test_portrait_identities_leave_out_corpus_characters_and_the_held_out_series(tmp_path, monkeypatch):
    """scripts/corpus.py: a MyAnimeList portrait becomes an identity of its own unless it names a
    corpus character (in either name order, long vowels folded, more words allowed), any character
    of a held-out series or a reserved one, or its face is missing or unsure; faces are cut by the
    detector once, then read from the cache."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "scripts"))
    import corpus

    assert set(corpus.HELD_OUT_CASTS) == set(corpus.HELD_OUT_SERIES)
    folder = tmp_path / "mal-portraits"
    folder.mkdir()
    drawing = data_path("newgame-illustrations", "yagami_kou", "0.jpg")
    names = ["Tamaki_Kosaka_1_0", "Gura_Gawr_2_0", "Konata_Izumi_3_0", "Nobue_Itou_572_0",
             "Tomoya_Okazaki_4606_0", "Someone_New_7_0", "Other_One_8_0"]  # fmt: skip
    for name in names:
        (folder / f"{name}.jpg").write_bytes(drawing.read_bytes())
    Image.new("RGB", (225, 350), "white").save(folder / "Blank_Card_9_0.png")  # no face
    classes, cache = ["kousaka_tamaki", "gura"], tmp_path / "portraits.npz"
    portraits = corpus.portrait_identities(folder, classes, cache)
    assert portraits.classes == ["Other_One", "Someone_New"]
    assert portraits.labels.tolist() == [0, 1] and portraits.pixels.shape == (2, 144, 144, 3)

    def no_detector(*args, **kwargs):
        raise AssertionError("the faces should come from the cache")

    with monkeypatch.context() as patched:
        patched.setattr(corpus, "get_detector", no_detector)
        np.testing.assert_array_equal(corpus.portrait_identities(folder, classes, cache).pixels, portraits.pixels)
    monkeypatch.setattr(corpus, "PORTRAIT_MIN_SCORE", 0.9999)  # no face is that sure: none kept
    assert corpus.portrait_identities(folder, classes, cache).classes == []

    from kyara.train.data import LabelledImages

    one_character = LabelledImages(portraits.pixels[[0, 0]], np.zeros(2, np.int64), np.zeros(2, np.int64),
                                   ["kousaka_tamaki"], portraits.paths[:1] * 2)  # fmt: skip
    both = corpus.with_identities(one_character, portraits)
    assert both.labels.tolist() == [0, 0, 1, 2] and both.classes == ["kousaka_tamaki", "Other_One", "Someone_New"]
