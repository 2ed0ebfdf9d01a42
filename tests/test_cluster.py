from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kyara.cli import app
from kyara.cluster import SUMMARY, cluster_faces, embed_faces, threshold_for, write_clusters
from kyara.detection import AnimeFaceDetector
from kyara.errors import KyaraError
from kyara.pipeline import Recognizer
from tests.clustering_scores import adjusted_rand_index, clustering_scores
from tests.conftest import data_path

runner = CliRunner()
CHARACTERS = ("gura", "calli", "kiara")


@pytest.fixture(scope="module")
def crops(held_out_files):
    """15 held-out face crops (never trained on) of each of three characters, with their names."""
    chosen = [path for name in CHARACTERS for path in [f for f in held_out_files if f.parent.name == name][:15]]
    assert len(chosen) == 45
    return chosen


@pytest.fixture(scope="module")
def embedded(crops, recognizer):
    return embed_faces(recognizer, crops, progress=False)


def test_adjusted_rand_index_matches_known_values():
    assert adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]) == pytest.approx(0.242424, abs=1e-6)
    assert adjusted_rand_index(list("aabbcc"), list("abcabc")) < 0
    scores = clustering_scores(list("aaabbb"), np.array([0, 0, 1, 1, 1, -1]))
    assert scores["purity"] == 0.8 and scores["noise_share"] == pytest.approx(1 / 6, abs=1e-4)


def test_faces_of_three_characters_fall_into_pure_groups(crops, embedded):
    truth = [path.parent.name for path in crops]
    assert [face.source for face in embedded.faces] == crops  # face crops are used as they are
    assignment = cluster_faces(embedded.embeddings)
    scores = clustering_scores(truth, assignment)
    assert scores["purity"] >= 0.95 and scores["ari"] >= 0.85 and scores["noise_share"] <= 0.1, scores
    assert 3 <= scores["groups"] <= 5
    sizes = np.bincount(assignment[assignment >= 0])
    assert list(sizes) == sorted(sizes, reverse=True)  # the largest group first
    everything_apart = cluster_faces(embedded.embeddings, threshold=0.01)
    assert (everything_apart == -1).all()  # no group reaches three faces


def test_the_default_cut_follows_the_embedding_the_model_exports(recognizer):
    assert threshold_for(recognizer.bundle) == 0.75  # whitened features (a fine-tuned model)
    linear = replace(recognizer.bundle, metadata={"training": {"config": {"mode": "linear"}}})
    assert threshold_for(linear) == 0.5  # its trained layer packs faces tighter
    assert threshold_for(replace(recognizer.bundle, metadata={})) == 0.75


def test_write_clusters_and_refuse_to_overwrite(crops, embedded, recognizer, tmp_path):
    assignment = cluster_faces(embedded.embeddings)
    target = tmp_path / "clusters"
    summary = write_clusters(embedded, assignment, target, recognizer.detector)
    document = json.loads((target / SUMMARY).read_text())
    assert len(summary.clusters) == assignment.max() + 1 == len(document["clusters"])
    written = sorted(p for p in target.rglob("*.jpg"))
    assert len(written) == len(crops)
    for cluster in document["clusters"]:
        files = sorted((target / cluster["folder"]).iterdir())
        assert len(files) == cluster["size"] == len(cluster["members"])
        assert cluster["model_guess"] in CHARACTERS and cluster["guess_share"] > 0.8
        member = cluster["members"][0]
        assert (target / member["file"]).read_bytes() == Path(member["source"]).read_bytes()

    with pytest.raises(KyaraError, match="--force"):
        write_clusters(embedded, assignment, target, recognizer.detector)
    (target / "my notes.txt").write_text("kept")
    (target / "cluster-notes").mkdir()  # the user's, not one kyara wrote: --force deleted it
    (target / "cluster-list.txt").write_text("kept")
    apart = np.full(len(crops), -1)
    summary = write_clusters(embedded, apart, target, recognizer.detector, force=True)
    assert summary.clusters == [] and summary.noise == len(crops)
    kept = [SUMMARY, "cluster-list.txt", "cluster-notes", "my notes.txt", "noise"]
    assert sorted(p.name for p in target.iterdir()) == sorted(kept)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_a_crop_removed_while_grouping_is_said_so(crops, embedded, recognizer, tmp_path):
    moved = tmp_path / "moved.jpg"
    shutil.copyfile(crops[0], moved)
    face_set = replace(embedded, faces=[replace(embedded.faces[0], source=moved), *embedded.faces[1:]])
    moved.unlink()  # gone between embedding and writing
    with pytest.raises(KyaraError, match="removed while its faces were being grouped"):
        write_clusters(face_set, cluster_faces(embedded.embeddings), tmp_path / "out", recognizer.detector)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written, no staging left


def test_illustrations_are_cut_into_faces(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pictures = [data_path("newgame-illustrations", "yagami_kou", name) for name in ("1.jpg", "3.jpg")]
    blank, broken = tmp_path / "blank.png", tmp_path / "broken.jpg"
    Image.new("RGB", (900, 600), "white").save(blank)
    broken.write_bytes(b"\xff\xd8\xff broken")
    recognizer = Recognizer(detector=AnimeFaceDetector(angles=(0.0,)))
    face_set = embed_faces(recognizer, [*pictures, blank, broken], progress=False)
    found = [len(recognizer.detector.detect(Image.open(p).convert("RGB"))) for p in pictures]
    assert [face.number for face in face_set.faces] == [n for count in found for n in range(1, count + 1)]
    assert face_set.without_face == [str(blank)] and "broken.jpg" in face_set.unreadable[0]
    summary = write_clusters(face_set, np.zeros(len(face_set.faces), int), tmp_path / "out", recognizer.detector)
    (cluster,) = summary.clusters
    crops = sorted((tmp_path / "out" / cluster["folder"]).iterdir())
    assert len(crops) == sum(found) and all(p.suffix == ".png" for p in crops)
    assert all(Image.open(p).size[0] == Image.open(p).size[1] for p in crops)  # upright square crops


def test_cli_cluster(crops, tmp_path):
    source = tmp_path / "unlabelled pictures"
    source.mkdir()
    for number, path in enumerate(crops):
        shutil.copyfile(path, source / f"{number:02d}.jpg")
    target = tmp_path / "clusters"
    result = runner.invoke(app, ["cluster", str(source), "-o", str(target), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["faces"] == len(crops) and len(document["clusters"]) >= 3
    assert "members" not in document["clusters"][0] and (target / "cluster-001").is_dir()
    result = runner.invoke(app, ["cluster", str(source), "-o", str(target)])
    assert result.exit_code == 2 and "--force" in result.stderr
    result = runner.invoke(app, ["cluster", str(source), "-o", str(target), "--force", "--min-size", "100"])
    assert result.exit_code == 0 and "0 groups" in result.stdout
    assert len(list((target / "noise").iterdir())) == len(crops)


def test_hostile_names_and_a_symlinked_old_cluster(crops, recognizer, tmp_path):
    source = tmp_path / "pictures"
    source.mkdir()
    long_name = source / ("🦈" * 62 + ".jpg")  # 248 bytes of name: fine alone, too long with a prefix
    shutil.copyfile(crops[0], long_name)
    shutil.copyfile(crops[1], source / "plain.jpg")
    not_utf8 = Path(os.fsdecode(bytes(source) + b"/b\xff\xfe.jpg"))
    shutil.copyfile(crops[2], not_utf8)
    face_set = embed_faces(recognizer, [long_name, source / "plain.jpg", not_utf8], progress=False)
    assert [face.source for face in face_set.faces] == [long_name, source / "plain.jpg"]
    assert len(face_set.unreadable) == 1 and "not valid UTF-8" in face_set.unreadable[0]

    target, elsewhere = tmp_path / "clusters", tmp_path / "keep me"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("not ours")
    target.mkdir()
    (target / "cluster-001").symlink_to(elsewhere, target_is_directory=True)
    summary = write_clusters(face_set, np.array([0, 0]), target, recognizer.detector, force=True)
    assert summary.clusters[0]["size"] == 2 and len(list((target / "cluster-001").iterdir())) == 2
    assert (elsewhere / "precious.txt").read_text() == "not ours"  # the link went, not what it pointed to
    assert all(len(p.name.encode()) <= 255 for p in (target / "cluster-001").iterdir())


def test_too_many_faces_and_output_inside_the_input(crops, recognizer, tmp_path, monkeypatch):
    import kyara.cluster

    monkeypatch.setattr(kyara.cluster, "MAX_FACES", 10)
    with pytest.raises(KyaraError, match="more than 10 faces"):
        embed_faces(recognizer, crops[:12], progress=False)
    monkeypatch.undo()

    source = tmp_path / "pictures"
    source.mkdir()
    for number, path in enumerate(crops[:6]):
        shutil.copyfile(path, source / f"{number}.jpg")
    for _ in range(2):  # the second run must not group the first run's output again
        result = runner.invoke(app, ["cluster", str(source), "-o", str(source / "clusters"), "--force", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["faces"] == 6
    # The output is the input: said, not 'no face found'.
    result = runner.invoke(app, ["cluster", str(source), "-o", str(source), "--force"])
    assert result.exit_code == 2 and "where the clusters go" in result.stderr, result.output
    with pytest.raises(KyaraError, match="list of files"):
        kyara.cluster.cluster_folder(str(source), tmp_path / "out")
    for options, message in (({"threshold": "x"}, "cosine distance"), ({"min_size": None}, "min_size")):
        with pytest.raises(KyaraError, match=message):  # said before any face is embedded
            kyara.cluster.cluster_folder(list(source.iterdir()), tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_cluster_says_scipy_is_missing_before_any_work(tmp_path, monkeypatch):
    import kyara.cluster

    def missing():
        raise KyaraError("clustering needs the index extra: pip install 'kyara[index]'")

    def embedding_must_not_run(*args, **kwargs):
        raise AssertionError("embedding ran before the missing extra was reported")

    monkeypatch.setattr(kyara.cluster, "hierarchy", missing)
    monkeypatch.setattr(kyara.cluster, "embed_faces", embedding_must_not_run)
    result = runner.invoke(app, ["cluster", str(tmp_path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "index extra" in result.stderr


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    """These raised FileExistsError, NotADirectoryError, PermissionError or 'File name too long'
    as tracebacks, after every face was embedded."""
    import kyara.cluster

    def embedding_must_not_run(*args, **kwargs):
        raise AssertionError("embedding ran before the output was checked")

    monkeypatch.setattr(kyara.cluster, "embed_faces", embedding_must_not_run)
    (tmp_path / "a.jpg").write_bytes(b"not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    for output, said in ((tmp_path / "a.jpg" / "out", "cannot write there"), (tmp_path / "link", "is a link")):
        result = runner.invoke(app, ["cluster", str(tmp_path / "empty"), "-o", str(output)])
        assert result.exit_code == 2 and said in result.stderr, result.output
    kyara.cluster.check_target(tmp_path / ("n" * 250), force=False)  # long but valid: its staging name is shortened
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.jpg", "empty", "link"])
