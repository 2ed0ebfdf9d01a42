"""The networks in 8-bit integers (`precision="int8"`): they answer as the float ones do, and an
index keeps the precision it was made with."""

from __future__ import annotations

import contextlib
import json
import pickle
import shutil
import sqlite3
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from kyara.bundle import default_model_path, load_bundle, save_bundle
from kyara.cli import app
from kyara.detection import CnnDetector, iou
from kyara.errors import KyaraError, ModelError
from kyara.gallery import enroll
from kyara.index import DATABASE, CollectionIndex
from kyara.index.store import stored_precision
from kyara.pipeline import Recognizer
from tests.conftest import ROOT, data_path, held_out
from tests.test_bundle import tiny_onnx

runner = CliRunner()


@pytest.fixture(scope="module")
def int8() -> Recognizer:
    return Recognizer(precision="int8")


def test_the_int8_networks_find_and_name_faces_as_the_float_ones_do(recognizer, int8):
    pictures = held_out("illustration_test_files")[::19][:20]
    matched, agreeing, faces = 0, 0, 0
    for path in pictures:
        floats, integers = recognizer.recognize(path), int8.recognize(path)
        faces += len(floats)
        for face in floats:
            twin = max(integers, key=lambda other: iou(face.box, other.box), default=None)
            if twin is not None and iou(face.box, twin.box) >= 0.5:
                matched, agreeing = matched + 1, agreeing + (twin.label == face.label)
    assert faces >= 20 and matched >= 0.9 * faces  # 44 of 44 when measured
    assert agreeing >= 0.85 * matched  # 41 of 44

    cuts = [cut.pixels for path in pictures for cut in recognizer.cuts_to_name(recognizer.load(path))]
    cosines = np.sum(recognizer.embedder.embed(cuts) * int8.embedder.embed(cuts), axis=1)
    assert np.median(cosines) > 0.97 and cosines.min() > 0.9  # 0.988 and 0.971
    assert not np.allclose(cosines, 1.0, atol=1e-4)  # another network, not the float one again


def test_each_precision_is_its_own_network(recognizer, int8):
    assert int8.detector.model_digest != recognizer.detector.model_digest
    bundle = load_bundle(default_model_path())
    assert bundle.onnx_int8 is not None and len(bundle.onnx_int8) < len(bundle.onnx) / 2
    for copy in (int8.with_threads(1), pickle.loads(pickle.dumps(int8))):  # as kyara index and Ray copy it
        assert copy.precision == "int8" and copy.detector.model_digest == int8.detector.model_digest
        assert copy.embedder_weights == int8.embedder_weights == bundle.onnx_int8
    with pytest.raises(KyaraError, match="unknown precision 'int4'"):
        Recognizer(precision="int4")
    with pytest.raises(KyaraError, match="unknown precision"):
        CnnDetector(precision="float16")
    for given in ("", "int4"):  # an empty one ran as float32
        result = runner.invoke(app, ["detect", str(ROOT / "docs" / "example.png"), "--precision", given])
        assert result.exit_code == 2 and "is not one of float32, int8" in result.output, result.output


def test_the_8_bit_embedder_travels_with_the_model_and_old_copies_borrow_it(tmp_path):
    shipped = load_bundle(default_model_path())
    path = tmp_path / "copy.kyara"
    save_bundle(shipped, path)
    assert load_bundle(path).onnx_int8 == shipped.onnx_int8

    shipped.onnx_int8 = None  # a copy of the default model saved before it had one
    save_bundle(shipped, path)
    copy = load_bundle(path)
    assert copy.onnx_int8 is None and copy.embedder_onnx("int8") == load_bundle(default_model_path()).onnx_int8

    copy.onnx = tiny_onnx()  # a model of one's own: float only
    with pytest.raises(ModelError, match="has no 8-bit embedder"):
        copy.embedder_onnx("int8")
    assert copy.embedder_onnx("float32") == copy.onnx


def test_an_index_keeps_the_precision_it_was_made_with(tmp_path, int8):
    source = data_path("newgame-illustrations", "yagami_kou")
    root = tmp_path / "pictures"
    root.mkdir()
    for name in ("1.jpg", "2.jpg"):
        shutil.copyfile(source / name, root / name)
    db = tmp_path / "pictures.kyaradb"
    result = runner.invoke(app, ["index", str(root), "--db", str(db), "--precision", "int8", "--json"])
    assert result.exit_code == 0, result.output
    assert stored_precision(db) == "int8"

    with CollectionIndex.open(db) as collection:  # no precision asked: the index's own
        assert collection.recognizer.precision == "int8"
        assert collection.stats()["faces"] >= 2
    result = runner.invoke(app, ["search", str(root / "1.jpg"), "--db", str(db), "--top-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    (hit,) = json.loads(result.stdout)["faces"][0]["hits"]
    assert hit["path"] == "1.jpg" and hit["similarity"] > 0.99  # the query's own face, embedded alike

    # Another precision is refused with the command that adopts it, and that command works.
    result = runner.invoke(app, ["search", str(root / "1.jpg"), "--db", str(db), "--precision", "float32"])
    assert result.exit_code == 2 and "(int8)" in result.stderr
    assert f"--db {db} --reembed --precision float32`" in result.stderr
    result = runner.invoke(app, ["index", str(root), "--db", str(db), "--reembed", "--precision", "float32", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["reembedded"] == 2, result.output
    assert stored_precision(db) == "float32"
    with pytest.raises(KyaraError, match="runs at int8, not at the float32"):
        CollectionIndex.open(db, int8, precision="float32")

    # An index made before kyara had precisions is a float one.
    with contextlib.closing(sqlite3.connect(db / DATABASE)) as connection, connection:
        connection.execute("DELETE FROM meta WHERE key = 'precision'")
    assert stored_precision(db) == "float32" and stored_precision(tmp_path / "none.kyaradb") is None
    with CollectionIndex.open(db) as collection:
        assert collection.recognizer.precision == "float32"


def test_an_int8_index_opened_with_a_float_only_model_says_how_to_go_on(tmp_path):
    root = tmp_path / "pictures"
    root.mkdir()
    shutil.copyfile(data_path("newgame-illustrations", "yagami_kou") / "1.jpg", root / "1.jpg")
    db = tmp_path / "pictures.kyaradb"
    assert runner.invoke(app, ["index", str(root), "--db", str(db), "--precision", "int8"]).exit_code == 0
    mine = load_bundle(default_model_path())
    mine.onnx_int8, mine.weights = None, {}
    save_bundle(mine, tmp_path / "copy.kyara")  # a copy of the shipped model, saved before it had one
    with CollectionIndex.open(db, tmp_path / "copy.kyara") as collection:  # borrows the shipped one
        assert collection.recognizer.precision == "int8"

    with zipfile.ZipFile(tmp_path / "copy.kyara") as archive:  # a network of one's own: float only
        assert "embedder-int8.onnx" not in archive.namelist()
    other = tmp_path / "other.kyara"
    mine.metadata = {**mine.metadata, "name": "mine"}
    mine.onnx = retitled(mine.onnx)
    save_bundle(mine, other)
    with pytest.raises(
        KyaraError, match=r"indexed at int8.*'mine' has no 8-bit embedder.*--reembed --precision float32"
    ):
        CollectionIndex.open(db, other)
    # A model file that is not there is just that: re-embedding would not help.
    result = runner.invoke(app, ["find", "gura", "--db", str(db), "--model", str(tmp_path / "gone.kyara")])
    assert result.exit_code == 2 and "gone.kyara" in result.stderr and "--reembed" not in result.stderr, result.output


def retitled(onnx: bytes) -> bytes:
    """The same network under another graph name: other bytes, so another embedder to kyara."""
    import onnx as onnx_format

    proto = onnx_format.load_from_string(onnx)
    proto.graph.name = "mine"
    return proto.SerializeToString()


def test_enrolling_takes_the_float_network(tmp_path):
    model = tmp_path / "model.kyara"
    shutil.copyfile(default_model_path(), model)
    mine = Recognizer(model, precision="int8")
    picture = data_path("newgame-illustrations", "yagami_kou") / "1.jpg"
    with pytest.raises(KyaraError, match="float32"):
        enroll("kou", [picture], mine)


def test_kyara_evaluate_measures_the_precision_asked_for_and_says_so(tmp_path):
    root = tmp_path / "faces"
    for character in ("gura", "ina"):
        source = data_path("holoen-faces", character)
        (root / character).mkdir(parents=True)
        for path in sorted(source.iterdir())[:4]:
            shutil.copyfile(path, root / character / path.name)
    report = tmp_path / "report"
    result = runner.invoke(app, ["evaluate", str(root), "--precision", "int8", "--report", str(report), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["top1"] >= 0.75
    assert (report / "report.md").read_text().startswith("# kyara-default (int8) on ")
