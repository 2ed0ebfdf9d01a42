"""Teach a model new characters without retraining: enroll pictures, forget characters.

Enrolled faces are embedded with the model's own embedder, in colour and in gray (a gray copy of
the face: how it looks on a manga page), and stored in its gallery. Changes are
written atomically, under a lock so two enrollments at once cannot lose each other's work.
Without an explicit model, the user's copy of the default model is changed (created on first use).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import unicodedata
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from kyara.bundle import (
    ModelBundle,
    atomic_write_bytes,
    check_model_file,
    default_model_path,
    load_bundle,
    model_path,
    resolve_model_path,
    save_bundle,
    user_model_path,
)
from kyara.cut import gray_cuts
from kyara.dataset import printable
from kyara.errors import ImageError, KyaraError, ModelError, NoFaceError
from kyara.imageio import DEFAULT_MAX_PIXELS, ImageSource, resolved
from kyara.pipeline import Model, Recognizer, forget_loaded_models
from kyara.runtime import FLOAT32

MAX_NAME_LENGTH = 100


@dataclass
class EnrollResult:
    name: str
    added: int
    skipped: list[str] = field(default_factory=list)
    model: str = ""


def editable_model_path(model: str | os.PathLike | None) -> Path:
    """The bundle that enroll/forget change: `model`, or the user's copy (made on first use)."""
    if model is not None:
        path = check_model_file(model_path(model), model)
        if not zipfile.is_zipfile(path):  # said before a lock file is left beside, say, a picture
            raise ModelError(f"{model}: not a kyara model (a .kyara bundle)")
        return path
    user = user_model_path()
    if not user.is_file():
        with locked(user):  # two first enrollments at once: one copies, the other uses the copy
            if not user.is_file():
                atomic_write_bytes(user, default_model_path().read_bytes())
    return user


@contextlib.contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Serialize read-modify-write of a bundle (or an index) between processes. Yields whether
    the lock is held: always with `wait`, else only if no other process held it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(f".{path.name}.lock"), "a")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise KyaraError(f"cannot lock {path}: {exc.strerror or exc}") from exc
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def clean_name(name: str) -> str:
    if not isinstance(name, str):
        raise KyaraError(f"a character name is text, not {type(name).__name__}")
    name = unicodedata.normalize("NFC", name).strip()
    if not name or len(name) > MAX_NAME_LENGTH or not printable(name):
        raise KyaraError(f"a character name must be 1 to {MAX_NAME_LENGTH} printable characters, got {name!r}")
    if name in (".", ".."):  # a web address cannot carry them as a path segment
        raise KyaraError(f"{name!r} cannot be a character name")
    return name


def embed_enrollment(
    recognizer: Recognizer, images: Sequence[ImageSource]
) -> tuple[np.ndarray, np.ndarray, list[KyaraError]]:
    """One embedding per picture, and one of its gray copy: the first of its `cuts_to_learn` (its
    most face-like face, or the picture itself if it is a face crop); and why the others were
    skipped (an `ImageError` if unreadable, a `NoFaceError` if no face was found)."""
    cuts, gray, skipped = [], [], []
    for number, image in enumerate(images, 1):
        try:
            picture = recognizer.load(image)
        except ImageError as exc:
            skipped.append(exc)
            continue
        learned = recognizer.cuts_to_learn(picture)
        if learned:
            cuts.append(learned[0])
            gray += gray_cuts(picture, learned[:1])
        else:
            # A path names itself; bytes, arrays and images are named by their place.
            named = str(image) if isinstance(image, str | os.PathLike) else f"picture {number}"
            skipped.append(NoFaceError(f"{named}: no face found"))
    return recognizer.embed(cuts), recognizer.embed(gray), skipped


def enroll(
    name: str,
    images: Sequence[ImageSource],
    model: Model = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> EnrollResult:
    """Add pictures of `name` to the model's gallery; the character is recognized from then on.
    Pictures are decoded one at a time (at most `max_pixels` each), and only their faces kept.
    `model` given as a `Recognizer`: its model file is changed, and its detector finds the faces
    (the recognizer itself keeps the model it loaded; make a new one to see the character)."""
    name = clean_name(name)
    if isinstance(images, str | os.PathLike | bytes | bytearray | np.ndarray | Image.Image):
        images = [images]  # one picture, not a sequence of characters or rows
    images = list(images)
    if not images:
        raise KyaraError(f"no pictures of {name} given")
    if isinstance(model, Recognizer) and model.precision != FLOAT32:
        # Enrolled embeddings serve every precision, so they come from the float network.
        raise KyaraError(f"enroll with a float32 recognizer, not {model.precision}")
    path = editable_model_path(_model_file(model))
    with locked(path):
        bundle = load_bundle(path)
        if isinstance(model, Recognizer) and model.bundle.onnx != bundle.onnx:
            raise ModelError(f"{path} holds another model than the recognizer's: load it again")
        recognizer = model if isinstance(model, Recognizer) else Recognizer(bundle, max_pixels=max_pixels)
        vectors, gray, skipped = embed_enrollment(recognizer, images)
        if len(vectors) == 0:
            # Every picture unreadable in one way (corrupt, too large) is that error, not "no face".
            kinds = {type(problem) for problem in skipped}
            kind = kinds.pop() if len(kinds) == 1 else NoFaceError
            raise kind(f"no usable picture of {name}: " + "; ".join(map(str, skipped)))
        bundle.add_to_gallery(vectors, [name] * len(vectors), gray)
        save_bundle(bundle, path)
    forget_loaded_models()
    return EnrollResult(name, len(vectors), [str(problem) for problem in skipped], str(path))


def _model_file(model: Model) -> str | os.PathLike | None:
    """The file enroll and forget change: `model`'s, or None for the user's copy."""
    if isinstance(model, Recognizer):
        if model.from_memory:
            raise ModelError("this recognizer's model was given in memory: there is no file to enroll into")
        model = model.model_file
    if model is not None and resolved(model) == default_model_path().resolve():
        return None  # the shipped model is never changed (named by its path too): the user's copy is
    return model


def forget(name: str, model: Model = None) -> int:
    """Remove a character (enrolled pictures, and its trained head row if any). Returns what went."""
    model = _model_file(model)
    known = load_bundle(resolve_model_path(model)).all_labels()
    # A trained name is a folder's name as it was (maybe decomposed Unicode or spaced); an
    # enrolled one was cleaned. Said before anything is written: no user copy to forget nobody.
    name = name if name in known else clean_name(name)
    if name not in known:
        raise KyaraError(f"{name!r} is not a character of {resolve_model_path(model)}")
    path = editable_model_path(model)
    with locked(path):
        bundle = load_bundle(path)
        if name not in bundle.all_labels():
            raise KyaraError(f"{name!r} is not a character of {path}")
        keep = [i for i, label in enumerate(bundle.gallery_labels) if label != name]
        removed = len(bundle.gallery_labels) - len(keep) + (name in bundle.labels)
        bundle.keep_in_gallery(keep)
        if name in bundle.labels:
            row = bundle.labels.index(name)
            bundle.head = np.delete(bundle.head, row, axis=0)
            if bundle.gray_head is not None:
                bundle.gray_head = np.delete(bundle.gray_head, row, axis=0)
            if bundle.typical is not None:
                bundle.typical = [value for i, value in enumerate(bundle.typical) if i != row]
            bundle.labels = [label for label in bundle.labels if label != name]
        save_bundle(bundle, path)
    forget_loaded_models()
    return removed


def characters(model: Model = None) -> list[dict]:
    """Every character the model knows: trained or not, and how many enrolled pictures."""
    bundle = model.bundle if isinstance(model, Recognizer) else load_bundle(resolve_model_path(model))
    return characters_of(bundle)


def characters_of(bundle: ModelBundle) -> list[dict]:
    """`characters` of a loaded model."""
    trained_counts = bundle.metadata.get("training", {}).get("characters", {})
    return [
        {
            "name": name,
            "trained": name in bundle.labels,
            "training_images": trained_counts.get(name, 0) if name in bundle.labels else 0,
            "enrolled_images": bundle.gallery_labels.count(name),
        }
        for name in bundle.all_labels()
    ]
