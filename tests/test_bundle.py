from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest

from kyara.bundle import FORMAT_VERSION, ModelBundle, default_model_path, load_bundle, save_bundle
from kyara.errors import ModelError


def tiny_onnx() -> bytes:
    """A real ONNX model, smaller than the shipped one: loading refuses bytes that are not one."""
    from onnx import TensorProto, helper

    node = helper.make_node("Flatten", ["image"], ["embedding"])
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 12])],
    )
    return helper.make_model(graph).SerializeToString()


@pytest.fixture()
def bundle() -> ModelBundle:
    head = np.eye(3, 4, dtype=np.float32)
    return ModelBundle(
        onnx=tiny_onnx(),
        labels=["a", "b (2)", "ç"],
        head=head,
        unknown_threshold=0.4,
        temperature=0.05,
        input_size=128,
        metadata={"name": "tiny"},
    )


def test_round_trip_keeps_everything(bundle, tmp_path):
    bundle.gallery = np.ones((2, 4), np.float32)
    bundle.gallery_labels = ["new", "new"]
    bundle.typical = [0.8, 0.7, 0.6]
    path = tmp_path / "m.kyara"
    save_bundle(ModelBundle(**{**bundle.__dict__}), path)
    loaded = load_bundle(path)
    assert loaded.labels == bundle.labels and loaded.gallery_labels == ["new", "new"]
    assert np.array_equal(loaded.head, bundle.head) and loaded.gallery.shape == (2, 4)
    assert (loaded.onnx, loaded.unknown_threshold, loaded.temperature, loaded.input_size) == (
        bundle.onnx,
        0.4,
        0.05,
        128,
    )
    assert loaded.metadata["name"] == "tiny"
    assert loaded.all_labels() == ["a", "b (2)", "ç", "new"]
    np.testing.assert_allclose(loaded.typical, [0.8, 0.7, 0.6])
    assert loaded.gray_head is None


def test_enrolled_pictures_gray_copies_travel_with_the_model(bundle, tmp_path):
    path = tmp_path / "m.kyara"
    bundle.add_to_gallery(np.eye(2, 4, dtype=np.float32), ["new", "new"])  # as an older kyara enrolled: no gray copy
    save_bundle(bundle, path)
    assert "gallery_gray.npy" not in zipfile.ZipFile(path).namelist()
    assert load_bundle(path).gallery_gray.shape == (2, 4) and not load_bundle(path).gallery_gray.any()
    bundle.add_to_gallery(np.eye(1, 4, dtype=np.float32), ["newer"], gray=np.eye(1, 4, k=3, dtype=np.float32))
    save_bundle(bundle, path)
    assert np.array_equal(load_bundle(path).gallery_gray, np.vstack([np.zeros((2, 4)), np.eye(1, 4, k=3)]))
    with pytest.raises(ModelError, match="gray gallery has shape"):
        ModelBundle(**{**bundle.__dict__, "gallery_gray": np.ones((2, 4))})


def test_gray_prototypes_travel_with_the_model(bundle, tmp_path):
    bundle.gray_head = np.eye(3, 4, k=1, dtype=np.float32)
    save_bundle(bundle, tmp_path / "m.kyara")
    assert np.array_equal(load_bundle(tmp_path / "m.kyara").gray_head, bundle.gray_head)
    with pytest.raises(ModelError, match="gray head"):
        ModelBundle(**{**bundle.__dict__, "gray_head": np.zeros((2, 4))})


def test_save_is_atomic(bundle, tmp_path, monkeypatch):
    path = tmp_path / "m.kyara"
    save_bundle(bundle, path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("kyara.bundle.os.replace", crash)
    bundle.labels[0] = "changed"
    with pytest.raises(OSError):
        save_bundle(bundle, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.kyara"]  # no temporary file left behind


def rewrite(path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[member] = data
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def test_newer_format_is_refused_clearly(bundle, tmp_path):
    path = tmp_path / "m.kyara"
    save_bundle(bundle, path)
    header = json.loads(zipfile.ZipFile(path).read("kyara.json"))
    header["format_version"] = FORMAT_VERSION + 1
    rewrite(path, "kyara.json", json.dumps(header).encode())
    with pytest.raises(ModelError, match="newer kyara"):
        load_bundle(path)


def test_pickled_arrays_are_never_loaded(bundle, tmp_path):
    path = tmp_path / "m.kyara"
    save_bundle(bundle, path)
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    rewrite(path, "head.npy", buffer.getvalue())
    with pytest.raises(ModelError, match="not a valid kyara model"):
        load_bundle(path)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"plain text"])
def test_garbage_is_a_model_error(tmp_path, content):
    path = tmp_path / "m.kyara"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        load_bundle(path)
    with pytest.raises(ModelError, match="no such model"):
        load_bundle(tmp_path / "absent.kyara")


def test_inconsistent_head_is_refused():
    with pytest.raises(ModelError, match="one row per character"):
        ModelBundle(onnx=b"", labels=["a"], head=np.zeros((2, 4)), unknown_threshold=0, temperature=1, input_size=8)


def edited_header(path, **changes) -> None:
    header = json.loads(zipfile.ZipFile(path).read("kyara.json"))
    rewrite(path, "kyara.json", json.dumps({**header, **changes}).encode())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"labels": [["a"], "b", "c"]}, "must be strings"),
        ({"labels": ["a", "a", "c"]}, "listed twice"),
        ({"temperature": 1e-300}, "implausible"),
        ({"metadata": {"training": [1]}}, "training part"),
        ({"metadata": {"training": {"characters": {"a": "many"}}}}, "picture counts"),
        ({"metadata": {"training": {"config": "fast"}}}, "settings"),
        ({"typical": [0.5, 0.5]}, "one number in"),
        ({"typical": [0.5, 0.5, 7.0]}, "one number in"),
        ({"typical": "high"}, "not a valid kyara model"),
    ],
)
def test_a_hostile_header_is_a_model_error(bundle, tmp_path, changes, message):
    path = tmp_path / "m.kyara"
    save_bundle(bundle, path)
    edited_header(path, **changes)
    with pytest.raises(ModelError, match=message) as refused:
        load_bundle(path)
    assert str(path) in str(refused.value)


def test_numbers_that_are_not_finite_and_weight_bombs_are_refused(bundle, tmp_path, monkeypatch):
    path = tmp_path / "m.kyara"
    bundle.head[0, 0] = np.nan
    with pytest.raises(ModelError, match="not finite"):
        save_bundle(ModelBundle(**bundle.__dict__), path)
    bundle.head[0, 0] = 1.0
    save_bundle(bundle, path)
    bomb = io.BytesIO()
    np.savez_compressed(bomb, w=np.zeros((512, 512), np.float16))  # 512 KiB in a few hundred bytes
    rewrite(path, "weights.npz", bomb.getvalue())
    assert load_bundle(path).weights["w"].shape == (512, 512)
    monkeypatch.setattr("kyara.bundle.MAX_UNPACKED_BYTES", 64 << 10)  # the outer zip stays under it
    with pytest.raises(ModelError, match=r"weights\.npz unpacks"):
        load_bundle(path)


def test_default_model_is_shipped_and_small():
    path = default_model_path()
    assert path.is_file() and path.stat().st_size < 20 * 2**20
    model = load_bundle(path)
    assert len(model.labels) == 148 and model.embedding_dim == model.head.shape[1]
    assert np.allclose(np.linalg.norm(model.head, axis=1), 1, atol=1e-3)


def test_writes_respect_read_only_files_keep_permissions_and_clear_stale_temporaries(tmp_path):
    """Issue 15, 8 and 9: a chmod 444 model is refused (not silently replaced with mode 644), a
    replaced file keeps its mode, and a killed write's temporary file goes at the next write."""
    import os
    import stat
    import time

    from kyara.bundle import STALE_TEMPORARY_SECONDS, atomic_write_bytes
    from kyara.errors import KyaraError

    target = tmp_path / "model.kyara"
    atomic_write_bytes(target, b"one")
    target.chmod(0o640)
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o640
    target.chmod(0o444)
    with pytest.raises(KyaraError, match="read-only"):
        atomic_write_bytes(target, b"three")
    assert target.read_bytes() == b"two"
    target.chmod(0o644)
    stale, fresh = tmp_path / ".model.kyara.dead.tmp", tmp_path / ".model.kyara.busy.tmp"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    old = time.time() - STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (old, old))
    atomic_write_bytes(target, b"four")
    assert not stale.exists() and fresh.exists()  # another writer's file, still at work, stays


def test_a_damaged_user_copy_says_how_to_recover(tmp_path, monkeypatch):
    """Issue 15, 12: every command reads the user's copy of the default model; when it is damaged
    the error names it and says what to do."""
    from kyara.bundle import user_model_path
    from kyara.pipeline import Recognizer

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    user_model_path().parent.mkdir(parents=True)
    user_model_path().write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ModelError, match="your copy of the default model") as raised:
        Recognizer()
    assert str(user_model_path()) in str(raised.value) and "move it away" in str(raised.value)


@pytest.fixture()
def shipped_copy(tmp_path):
    """A copy of the shipped model, for tests that rewrite its members."""
    path = tmp_path / "copy.kyara"
    shutil.copyfile(default_model_path(), path)
    return path


def member(path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "not a model"])
def test_a_garbage_embedder_is_refused_at_load(shipped_copy, damage):
    """Issue 15, 10: a bundle whose ONNX is garbage used to load and fail only when a Recognizer
    was made; loading says which file is wrong and how."""
    onnx = member(shipped_copy, "embedder.onnx")
    replacement = {
        "garbage": b"not an onnx model at all",
        "truncated": onnx[: len(onnx) // 2],
        "empty": b"",
        "not a model": npy(np.zeros((2, 2), np.float32)),
    }[damage]
    rewrite(shipped_copy, "embedder.onnx", replacement)
    with pytest.raises(ModelError, match=r"embedder\.onnx inside it is not a usable ONNX model: \w") as refused:
        load_bundle(shipped_copy)
    assert str(shipped_copy) in str(refused.value)


def test_a_wrongly_shaped_head_says_what_is_wrong(shipped_copy):
    """Issue 15, 10: a head cut to 128 columns was reported as "gallery has shape (296, 256) for
    296 labels", blaming the gallery; one row short, as "head has shape (33, 256) but there are 34
    labels"."""
    head = load_bundle(shipped_copy).head
    rewrite(shipped_copy, "head.npy", npy(head[:, :128]))
    with pytest.raises(ModelError, match="the gallery's embeddings have 256 numbers but the head's have 128"):
        load_bundle(shipped_copy)
    rewrite(shipped_copy, "head.npy", npy(head[:-1]))
    characters = len(head)
    with pytest.raises(
        ModelError, match=f"the head has {characters - 1} rows but the model names {characters} trained characters"
    ):
        load_bundle(shipped_copy)


def test_a_head_the_embedder_does_not_fit_says_so(shipped_copy):
    """Without a gallery to compare with, a head of the wrong width shows when the embedder runs."""
    from kyara.pipeline import Recognizer

    model = load_bundle(shipped_copy)
    edited_header(shipped_copy, gallery_labels=[])
    rewrite(shipped_copy, "gallery.npy", npy(np.zeros((0, 128), np.float32)))
    rewrite(shipped_copy, "head.npy", npy(model.head[:, :128]))
    rewrite(shipped_copy, "gray_head.npy", npy(model.gray_head[:, :128]))
    rewrite(shipped_copy, "gallery_gray.npy", npy(np.zeros((0, 128), np.float32)))
    with pytest.raises(ModelError, match="embedder makes embeddings of 256 numbers but its head's rows have 128"):
        Recognizer(shipped_copy)


def test_a_wrongly_shaped_gallery_says_what_is_wrong(shipped_copy):
    gallery = load_bundle(shipped_copy).gallery
    rewrite(shipped_copy, "gallery.npy", npy(gallery[:-1]))
    rows = len(gallery)
    message = f"the gallery has {rows - 1} rows but the model names {rows} enrolled pictures"
    with pytest.raises(ModelError, match=message):
        load_bundle(shipped_copy)
    rewrite(shipped_copy, "gallery.npy", npy(gallery[:, :128]))
    with pytest.raises(ModelError, match="the gallery's embeddings have 128 numbers but the head's have 256"):
        load_bundle(shipped_copy)


def test_a_model_of_the_first_format_still_loads(bundle, tmp_path):
    """Format 1 had no typical similarities: its threshold is a similarity, and it still reads."""
    path = tmp_path / "m.kyara"
    save_bundle(bundle, path)
    edited_header(path, format_version=1, typical=None)
    loaded = load_bundle(path)
    assert loaded.typical is None and loaded.unknown_threshold == pytest.approx(0.4)


def test_writes_follow_a_link_and_take_long_names(tmp_path):
    """A model reached through a link was replaced by a file (the link's target kept the old
    model); a valid 240-byte name made a temporary name over 255 bytes (OSError)."""
    from kyara.bundle import atomic_write_bytes

    real, link = tmp_path / "real.kyara", tmp_path / "link.kyara"
    atomic_write_bytes(real, b"one")
    link.symlink_to(real)
    atomic_write_bytes(link, b"two")
    assert link.is_symlink() and real.read_bytes() == b"two"
    long_name = tmp_path / ("m" * 234 + ".kyara")
    atomic_write_bytes(long_name, b"three")
    atomic_write_bytes(long_name, b"four")
    assert long_name.read_bytes() == b"four"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([real.name, link.name, long_name.name])
