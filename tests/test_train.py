from __future__ import annotations

import json
import shutil
from dataclasses import replace

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
    # "[/red]": rich markup in a printed path ended the command in a MarkupError traceback.
    (root / "Ninomae Ina'nis (イナ)" / "broken [").mkdir()
    (root / "Ninomae Ina'nis (イナ)" / "broken [" / "red].jpg").write_bytes(b"\xff\xd8\xff not really")
    (root / "lonely one").mkdir()
    shutil.copy(sorted(data_path("holoen-faces", "calli").iterdir())[0], root / "lonely one" / "calli.jpg")
    (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def odd_model(odd_dataset, tmp_path_factory):
    """A linear model trained by the CLI on the odd folders, with its command's result."""
    output = tmp_path_factory.mktemp("model") / "new folder" / "mine.kyara"
    arguments = [str(odd_dataset), "-o", str(output), "--mode", "linear", "--from", "imagenet", "--input-size", "64"]
    return output, runner.invoke(app, ["train", *arguments])


def test_train_linear_on_odd_folders(odd_model, odd_dataset):
    output, result = odd_model
    assert result.exit_code == 1, result.output  # the README's rule: a file could not be read
    assert "broken [/red].jpg" in result.stderr and "empty" in result.stderr and "only 1 image" in result.stderr
    model = load_bundle(output)
    assert model.labels == ["Ninomae Ina'nis (イナ)", "gura [shark] ü", "lonely one"]
    assert model.input_size == 64 and model.weights
    recognizer = Recognizer(output)
    unseen = {"Ninomae Ina'nis (イナ)": "ina", "gura [shark] ü": "gura"}
    right = [
        recognizer.recognize_crop(path).top_k[0].label == folder
        for folder, source in unseen.items()
        for path in sorted(data_path("holoen-faces", source).iterdir())[100:120]
    ]
    assert np.mean(right) >= 0.8


def test_evaluate_reports_odd_folders_one_image_and_empty(odd_model, odd_dataset, tmp_path):
    output, _ = odd_model
    result = runner.invoke(app, ["evaluate", str(odd_dataset), "--model", str(output), "--json"])
    assert result.exit_code == 1, result.output  # the broken file could not be read; the rest is measured
    report = json.loads(result.stdout)
    assert set(report["per_class"]) == {"Ninomae Ina'nis (イナ)", "gura [shark] ü", "lonely one"}
    assert set(report["grayscale"]["per_class"]) == set(report["per_class"])
    assert report["n"] == 24 + 24 + 1
    assert "broken [/red].jpg" in result.stderr and "empty: no images" in result.stderr
    # A report inside the evaluated folder would have its plots measured as a character's pictures.
    inside = odd_dataset / "report"
    result = runner.invoke(app, ["evaluate", str(odd_dataset), "--model", str(output), "--report", str(inside)])
    assert result.exit_code == 2 and "inside the folder evaluated" in result.stderr and not inside.exists()


def test_train_refuses_bad_settings_before_reading_pictures(odd_dataset, tmp_path):
    a_folder = tmp_path / "taken"
    a_folder.mkdir()
    cases = [
        (["-o", str(a_folder)], "is a folder"),
        (["-o", str(tmp_path / "m.kyara"), "--mode", "linear", "--checkpoint", str(tmp_path / "c.pt")], "finetune"),
        (["-o", str(tmp_path / "m.kyara"), "--mode", "fast"], "unknown mode"),
        (["-o", str(tmp_path / "m.kyara"), "--from", str(tmp_path / "missing.kyara")], "missing.kyara"),
        # under a file: a traceback after the first epoch
        (
            ["-o", str(tmp_path / "m.kyara"), "--checkpoint", str(odd_dataset / "lonely one" / "calli.jpg" / "c.pt")],
            "cannot create",
        ),
    ]
    for options, message in cases:
        result = runner.invoke(app, ["train", str(odd_dataset), *options])
        assert result.exit_code == 2 and message in result.stderr, (options, result.output)
        assert "ina" not in result.stderr.lower()  # refused before any folder was read
    assert not (tmp_path / "m.kyara").exists()


def test_train_refuses_a_single_character(tmp_path):
    (tmp_path / "only").mkdir()
    shutil.copy(sorted(data_path("holoen-faces", "ina").iterdir())[0], tmp_path / "only" / "a.jpg")
    result = runner.invoke(app, ["train", str(tmp_path), "-o", str(tmp_path / "m.kyara"), "--from", "imagenet"])
    assert result.exit_code == 2 and "at least two" in result.stderr
    assert not (tmp_path / "m.kyara").exists()
    (tmp_path / "nothing").mkdir()  # no picture at all: was a numpy reshape traceback
    result = runner.invoke(app, ["train", str(tmp_path / "nothing"), "-o", str(tmp_path / "m.kyara")])
    assert result.exit_code == 2 and "at least two" in result.stderr, result.output


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
    assert bundle.gray_head.shape == bundle.head.shape  # each character as it looks in gray too
    np.testing.assert_allclose(np.linalg.norm(bundle.gray_head, axis=1), 1.0, atol=1e-5)
    assert 0 < bundle.concentration < 1
    faces = [Image.fromarray(p) for p in data.pixels[np.arange(0, len(data.labels), 4)]]
    vectors = embedder.embed(faces)
    mirrored = embedder.embed([ImageOps.mirror(face) for face in faces])
    np.testing.assert_allclose(vectors, mirrored, atol=1e-4)
    predicted = Classifier.from_bundle(bundle).similarities(vectors).argmax(axis=1)
    assert (predicted == data.labels[np.arange(0, len(data.labels), 4)]).mean() >= 0.9


def test_an_interrupted_finetune_resumes_to_the_same_network(tmp_path, monkeypatch):
    import torch

    from kyara.errors import KyaraError
    from kyara.train import trainer
    from kyara.train.data import load_folders
    from kyara.train.trainer import TrainConfig, train

    for name in ("ina", "gura"):
        (tmp_path / "faces" / name).mkdir(parents=True)
        for path in sorted(data_path("holoen-faces", name).iterdir())[:12]:
            shutil.copy(path, tmp_path / "faces" / name / path.name)
    data = load_folders([tmp_path / "faces"])
    config = TrainConfig(epochs=2, input_size=64, batch_size=8, ood_weight=0.0)
    checkpoint = tmp_path / "run.pt"
    no_validation = data.subset(np.arange(0))  # so the last epoch is kept, not the best
    whole = train(data, no_validation, config)

    save = trainer._save_checkpoint

    def save_then_stop(*args):
        save(*args)
        raise KeyboardInterrupt  # killed once the first epoch is saved

    monkeypatch.setattr(trainer, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(data, no_validation, config, checkpoint=checkpoint)
    monkeypatch.setattr(trainer, "_save_checkpoint", save)
    resumed = train(data, no_validation, config, checkpoint=checkpoint)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    for name, value in whole.net.state_dict().items():
        torch.testing.assert_close(resumed.net.state_dict()[name], value, msg=name)

    with pytest.raises(KyaraError, match="other settings, characters or pictures"):
        train(data.subset(np.arange(len(data.labels) - 1)), data, config, checkpoint=checkpoint)
    lengthened = r"a run of 2 epochs, not 5: resume it with --epochs 2.*kyara train --from MODEL\.kyara"
    with pytest.raises(KyaraError, match=lengthened):
        train(data, no_validation, replace(config, epochs=5), checkpoint=checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(KyaraError, match="not a readable kyara checkpoint"):
        train(data, data, config, checkpoint=checkpoint)
    checkpoint.write_bytes(b"")
    with pytest.raises(KyaraError, match=r"checkpoint \(\w+"):  # a reason, not "()"
        train(data, data, config, checkpoint=checkpoint)


def test_illustrations_are_reduced_to_faces_once_then_from_the_cache(tmp_path, monkeypatch):
    from kyara.detectors import get_detector
    from kyara.train.data import load_folders

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("yagami_kou", "suzukaze_aoba"):
        (tmp_path / "raw" / name).mkdir(parents=True)
        for path in sorted(data_path("newgame-illustrations", name).iterdir())[:3]:
            shutil.copy(path, tmp_path / "raw" / name / path.name)
    detector = get_detector()
    calls = []
    detect = detector.detect
    monkeypatch.setattr(detector, "detect", lambda image: calls.append(1) or detect(image))
    first = load_folders([tmp_path / "raw"], detector=detector)
    assert len(calls) == 6  # full illustrations, not taken for face crops
    assert len(first.labels) + len(first.skipped) == 6 and len(first.labels) >= 4
    assert first.pixels.shape[1:] == (144, 144, 3)

    def no_detection(image):
        raise AssertionError("detected again despite the cache")

    monkeypatch.setattr(detector, "detect", no_detection)
    second = load_folders([tmp_path / "raw"], detector=detector)
    np.testing.assert_array_equal(second.pixels, first.pixels)


def test_balanced_epochs_draw_small_characters_as_often_as_their_weight_says():
    import torch

    from kyara.train.trainer import TrainConfig, _epoch_order

    labels = np.array([0] * 900 + [1] * 100)
    generator = torch.Generator().manual_seed(0)
    plain = _epoch_order(labels, 1000, TrainConfig(balance=0.0), generator)
    assert sorted(plain.tolist()) == list(range(1000))  # one pass, each picture once
    even = labels[_epoch_order(labels, 4000, TrainConfig(balance=1.0), generator).numpy()]
    assert abs((even == 1).mean() - 0.5) < 0.05  # characters evenly
    root = labels[_epoch_order(labels, 4000, TrainConfig(balance=0.5), generator).numpy()]
    assert abs((root == 1).mean() - 0.25) < 0.05  # sqrt(100) / (sqrt(900) + sqrt(100))


def test_characters_of_one_picture_get_their_share_of_draws_whatever_their_number():
    import torch

    from kyara.errors import KyaraError
    from kyara.train.trainer import TrainConfig, _epoch_order

    labels = np.array([0] * 900 + [1] * 100 + list(range(2, 1002)))  # 1000 characters of one picture
    generator = torch.Generator().manual_seed(0)
    # Fewer draws than pictures, as in training, and more for the singles than there are of them.
    drawn = labels[_epoch_order(labels, 1900, TrainConfig(balance=0.5, singles_share=0.6), generator).numpy()]
    assert abs((drawn >= 2).mean() - 0.6) < 0.03
    assert abs((drawn == 1).mean() - 0.4 * 0.25) < 0.03  # the others as `balance` has it
    with pytest.raises(KyaraError, match="share"):
        TrainConfig(singles_share=1.0)


def test_manga_copies_are_black_and_white_with_inked_outlines():
    import torch

    from kyara.train.augment import manga_like, to_gray

    folder = data_path("holoen-faces", "gura")
    crop = np.asarray(Image.open(sorted(folder.iterdir())[0]).convert("RGB").resize((128, 128)))
    images = torch.from_numpy(crop[None].copy()).permute(0, 3, 1, 2).float() / 255
    inked = manga_like(images, torch.Generator().manual_seed(0))
    assert inked.shape == images.shape
    assert torch.equal(inked[:, 0], inked[:, 1]) and set(inked.unique().tolist()) <= {0.0, 1.0}
    gray = to_gray(images)[0, 0]
    edges = (gray[1:, :] - gray[:-1, :]).abs()[:, :-1] + (gray[:, 1:] - gray[:, :-1]).abs()[:-1, :]
    black = inked[0, 0, :-1, :-1] == 0
    # Ink follows the drawing's outlines: black pixels sit where the luma changes much more often.
    assert edges[black].mean() > 2 * edges[~black].mean()
    assert 0.05 < black.float().mean() < 0.7


def test_a_character_of_one_training_picture_gets_the_typical_characters_similarity():
    """One picture says nothing of how a character varies: its typical similarity is the median of
    the others', not 1 (which would make its own other pictures unknown)."""
    from kyara.train.data import LabelledImages
    from kyara.train.fit import class_means

    rng = np.random.default_rng(0)
    centres = np.eye(3, 16)
    spreads = {0: 0.3, 1: 0.6}
    vectors, labels = [], []
    for label, spread in spreads.items():
        rows = centres[label] + spread * rng.standard_normal((40, 16))
        vectors.append(rows / np.linalg.norm(rows, axis=1, keepdims=True))
        labels += [label] * 40
    vectors.append(centres[2][None])
    labels.append(2)
    data = LabelledImages(
        np.zeros((81, 1, 1, 3), np.uint8), np.array(labels), np.arange(81), ["tight", "loose", "once"], []
    )
    _, typical = class_means(np.vstack(vectors), data)
    assert typical[0] > typical[1] and typical[2] == pytest.approx(np.median(typical[:2]))
