from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kyara.bundle import load_bundle
from kyara.cli import app
from kyara.pipeline import Recognizer
from tests.conftest import data_path

pytest.importorskip("torch")
runner = CliRunner()


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory):
    """Two real characters under awkward names, a one-image character, an empty one, a broken file."""
    root = tmp_path_factory.mktemp("faces")
    sources = {"Ninomae Ina'nis (イナ)": "ina", "gura [shark] ü": "gura"}
    for folder, source in sources.items():
        (root / folder).mkdir()
        for path in sorted(data_path("holoen-faces", source).iterdir())[:24]:
            shutil.copy(path, root / folder / path.name)
    (root / "Ninomae Ina'nis (イナ)" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (root / "lonely one").mkdir()
    shutil.copy(sorted(data_path("holoen-faces", "calli").iterdir())[0], root / "lonely one" / "calli.jpg")
    (root / "empty").mkdir()
    return root


def test_train_linear_on_odd_folders(odd_dataset, tmp_path):
    output = tmp_path / "out" / "mine.kyara"
    result = runner.invoke(
        app,
        [
            "train",
            str(odd_dataset),
            "-o",
            str(output),
            "--mode",
            "linear",
            "--from",
            "imagenet",
            "--epochs",
            "2",
            "--input-size",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.stderr and "empty" in result.stderr and "only 1 image" in result.stderr
    model = load_bundle(output)
    assert model.labels == ["Ninomae Ina'nis (イナ)", "gura [shark] ü", "lonely one"]
    assert model.input_size == 64 and model.weights
    recognizer = Recognizer(output)
    ina = sorted((odd_dataset / "Ninomae Ina'nis (イナ)").glob("*.jpg"))[0]
    assert recognizer.recognize_crop(ina).top_k[0].label in model.labels


def test_train_refuses_a_single_character(tmp_path):
    (tmp_path / "only").mkdir()
    shutil.copy(sorted(data_path("holoen-faces", "ina").iterdir())[0], tmp_path / "only" / "a.jpg")
    result = runner.invoke(app, ["train", str(tmp_path), "-o", str(tmp_path / "m.kyara"), "--from", "imagenet"])
    assert result.exit_code == 2 and "at least two" in result.stderr
    assert not (tmp_path / "m.kyara").exists()


def test_finetuned_model_exports_mirror_invariant_whitened_features(tmp_path):
    from PIL import ImageOps

    from kyara.classify import Classifier
    from kyara.embedding import Embedder
    from kyara.train.data import load_folders
    from kyara.train.fit import fit_folders
    from kyara.train.readout import READOUT_DIM
    from kyara.train.trainer import TrainConfig

    for name in ("ina", "gura"):
        (tmp_path / name).mkdir()
        for path in sorted(data_path("holoen-faces", name).iterdir())[:40]:
            shutil.copy(path, tmp_path / name / path.name)
    data = load_folders([tmp_path])
    train_part = np.flatnonzero(np.arange(len(data.labels)) % 4 != 0)
    config = TrainConfig(epochs=1, input_size=64, ood_weight=0.0)
    bundle = fit_folders(data.subset(train_part), config)

    embedder = Embedder(bundle.onnx, bundle.input_size)
    assert embedder.dim == READOUT_DIM == bundle.embedding_dim
    np.testing.assert_allclose(np.linalg.norm(bundle.head, axis=1), 1.0, atol=1e-5)
    assert 0 < bundle.concentration < 1
    faces = [Image.fromarray(p) for p in data.pixels[np.arange(0, len(data.labels), 4)]]
    vectors = embedder.embed(faces)
    mirrored = embedder.embed([ImageOps.mirror(face) for face in faces])
    np.testing.assert_allclose(vectors, mirrored, atol=1e-4)
    predicted = Classifier.from_bundle(bundle).similarities(vectors).argmax(axis=1)
    assert (predicted == data.labels[np.arange(0, len(data.labels), 4)]).mean() >= 0.9
