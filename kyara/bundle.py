"""The model bundle: one self-describing `.kyara` file (a zip) holding everything recognition needs.

Members: `kyara.json` (labels, thresholds, metadata), `embedder.onnx` (image -> L2-normalised
embedding), `head.npy` (one unit vector per trained character), `gallery.npy` (embeddings of
enrolled images, labelled in `kyara.json`) and, optionally, `gray_head.npy` (each trained
character as its faces look in gray), `gallery_gray.npy` (the enrolled images' gray copies),
`weights.npz` (the network's weights in float16, so `kyara train` can fine-tune from this model)
and `embedder-int8.onnx` (the same embedder in 8-bit integers, `kyara.runtime.PRECISIONS`).
Loading reads JSON and `.npy` without pickle, so a bundle from a stranger cannot run code.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import io
import json
import os
import secrets
import stat
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from kyara.errors import KyaraError, ModelError, PrecisionError, StorageError
from kyara.imageio import shortened
from kyara.onnxfile import onnx_problem
from kyara.runtime import DEFAULT_PRECISION, FLOAT32, check_precision

FORMAT = "kyara-model"
FORMAT_VERSION = 2
"""2: `unknown_threshold` is a margin below each character's typical similarity when `typical` is
present; a kyara that reads only 1 would take it for a similarity and never answer unknown."""
_MEMBERS = ("kyara.json", "embedder.onnx", "head.npy", "gallery.npy")
GRAY_HEAD = "gray_head.npy"
GRAY_GALLERY = "gallery_gray.npy"
INT8_EMBEDDER = "embedder-int8.onnx"
MAX_UNPACKED_BYTES = 1 << 30
"""A zip bomb guard: real bundles are tens of megabytes, galleries included."""


MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 10.0
"""Softmax temperatures a calibrated model can have (the default model's is about 0.05)."""


@dataclass
class ModelBundle:
    """Everything a recognizer needs, as plain data."""

    onnx: bytes
    labels: list[str]
    head: np.ndarray
    unknown_threshold: float
    temperature: float
    input_size: int
    concentration: float = 1.0
    """Typical length of the mean of a trained character's unit embeddings (1.0: unknown).
    Scores characters enrolled from a single picture (`kyara.classify.gallery_prototype`)."""
    typical: list[float] | None = None
    """Per trained character, the estimated length of its true mean: how close its own faces come
    to its prototype. With it, `unknown_threshold` is a margin below that (kyara.classify);
    without it (older models), a similarity."""
    gallery: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    gallery_labels: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    gray_head: np.ndarray | None = None
    """Per trained character, the normalised mean of its training faces' embeddings in grayscale: a
    second prototype, for gray and manga faces (kyara.classify). None in models without it (made
    before kyara-default 0.4.0, or `linear` models); a kyara that predates it ignores the member
    and scores with the colour head alone, against a margin fitted for both (slightly stricter)."""
    gallery_gray: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    """Per enrolled picture, the embedding of its gray copy: the enrolled character's second
    prototype, as `gray_head` is a trained one's. A row of zeros where none was made (pictures
    enrolled by a kyara that predates it); empty: no row has one."""
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    onnx_int8: bytes | None = None
    """`onnx` in 8-bit integers (tools/quantize.py), for `precision="int8"`; None in models
    without one (those `kyara train` makes, and copies of the default model made before it had one,
    which borrow the built-in model's: `embedder_onnx`)."""

    def __post_init__(self) -> None:
        _check_labels(self.labels, self.gallery_labels)
        _check_metadata(self.metadata)
        self.head = np.asarray(self.head, np.float32)
        _check_head(self.head, self.labels)
        if self.gallery.size == 0:
            self.gallery = np.zeros((0, self.embedding_dim), np.float32)
        self.gallery = np.asarray(self.gallery, np.float32)
        _check_gallery(self.gallery, self.gallery_labels, self.embedding_dim)
        if not self.gallery_gray.any():  # none made: whatever its shape, it says nothing
            self.gallery_gray = np.zeros_like(self.gallery)
        self.gallery_gray = np.asarray(self.gallery_gray, np.float32)
        if self.gallery_gray.shape != self.gallery.shape:
            raise ModelError(f"the gray gallery has shape {self.gallery_gray.shape}, the gallery {self.gallery.shape}")
        if self.gray_head is not None:
            self.gray_head = np.asarray(self.gray_head, np.float32)
            if self.gray_head.shape != self.head.shape:
                raise ModelError(f"the gray head has shape {self.gray_head.shape}, the head {self.head.shape}")
        finite_gray = self.gray_head is None or bool(np.isfinite(self.gray_head).all())
        finite_gallery = np.isfinite(self.gallery).all() and np.isfinite(self.gallery_gray).all()
        if not (np.isfinite(self.head).all() and finite_gallery and finite_gray):
            raise ModelError("the head, the gray head or the gallery holds numbers that are not finite")
        if self.typical is not None:
            self.typical = [float(value) for value in self.typical]
            if len(self.typical) != len(self.labels) or not all(0 < value <= 1 for value in self.typical):
                raise ModelError("the typical similarities must be one number in (0, 1] per trained character")
        if not (
            MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE
            and 8 <= self.input_size <= 1024
            and -1 <= self.unknown_threshold <= 1
            and 0 < self.concentration <= 1
        ):
            raise ModelError(
                f"implausible settings: temperature {self.temperature}, input size {self.input_size}, "
                f"unknown threshold {self.unknown_threshold}, concentration {self.concentration}"
            )

    @property
    def embedding_dim(self) -> int:
        return int(self.head.shape[1])

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", "kyara-model"))

    def describe(self) -> dict[str, Any]:
        """A short JSON-ready summary, as printed in `kyara recognize --json`."""
        return {
            "name": self.name,
            "version": self.metadata.get("version"),
            "kyara_version": self.metadata.get("kyara_version"),
            "characters": len(self.all_labels()),
            "input_size": self.input_size,
            "unknown_threshold": self.unknown_threshold,
        }

    def embedder_onnx(self, precision: str = DEFAULT_PRECISION) -> bytes:
        """The embedder network at `precision` (`kyara.runtime.PRECISIONS`)."""
        if check_precision(precision) == FLOAT32:
            return self.onnx
        if self.onnx_int8 is not None:
            return self.onnx_int8
        shipped = shipped_embedder()
        if shipped.onnx == self.onnx and shipped.onnx_int8 is not None:  # a copy of it, made before it had one
            return shipped.onnx_int8
        raise PrecisionError(
            f"the model {self.name!r} has no 8-bit embedder (models made by `kyara train` are float only; a "
            "kyara checkout's `python tools/quantize.py --what embedder --model FILE --pictures FOLDER` adds "
            "one): run it with precision float32"
        )

    def add_to_gallery(self, vectors: np.ndarray, labels: list[str], gray: np.ndarray | None = None) -> None:
        """Enrolled pictures' embeddings, and of their gray copies if made (row by row)."""
        vectors = np.asarray(vectors, np.float32)
        gray = np.zeros_like(vectors) if gray is None else np.asarray(gray, np.float32)
        if len(vectors) != len(labels) or gray.shape != vectors.shape:
            raise ModelError(f"{len(vectors)} gallery vectors, {len(gray)} gray ones, for {len(labels)} labels")
        vectors, gray = vectors.reshape(len(labels), -1), gray.reshape(len(labels), -1)
        self.gallery = np.vstack([self.gallery, vectors])
        self.gallery_gray = np.vstack([self.gallery_gray, gray])
        self.gallery_labels = [*self.gallery_labels, *labels]

    def keep_in_gallery(self, rows: list[int]) -> None:
        """Only these enrolled pictures stay."""
        self.gallery, self.gallery_gray = self.gallery[rows], self.gallery_gray[rows]
        self.gallery_labels = [self.gallery_labels[i] for i in rows]

    def all_labels(self) -> list[str]:
        return list(dict.fromkeys([*self.labels, *self.gallery_labels]))


def save_bundle(bundle: ModelBundle, path: str | os.PathLike) -> None:
    """Write `bundle` to `path` atomically: readers see the old file or the new one, never half."""
    path = Path(path)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "labels": bundle.labels,
        "gallery_labels": bundle.gallery_labels,
        "unknown_threshold": bundle.unknown_threshold,
        "temperature": bundle.temperature,
        "input_size": bundle.input_size,
        "concentration": bundle.concentration,
        "typical": bundle.typical,
        "metadata": bundle.metadata,
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("kyara.json", json.dumps(header, indent=2, ensure_ascii=False))
        archive.writestr("embedder.onnx", bundle.onnx)
        if bundle.onnx_int8 is not None:
            archive.writestr(INT8_EMBEDDER, bundle.onnx_int8)
        archive.writestr("head.npy", _npy_bytes(bundle.head))
        archive.writestr("gallery.npy", _npy_bytes(bundle.gallery))
        if bundle.gray_head is not None:
            archive.writestr(GRAY_HEAD, _npy_bytes(bundle.gray_head))
        if bundle.gallery_gray.any():
            archive.writestr(GRAY_GALLERY, _npy_bytes(bundle.gallery_gray))
        if bundle.weights:
            weights = io.BytesIO()
            np.savez(weights, **{name: np.asarray(value) for name, value in bundle.weights.items()})
            archive.writestr("weights.npz", weights.getvalue())
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """`write` makes the file at a temporary path beside `path`; it is flushed to disk, then
    renamed over `path`. A full disk raises `StorageError` and leaves `path` as it was. A file
    without write permission is refused, never replaced; a replaced file keeps its permissions.
    A link is followed: the file it points to is replaced, the link stays."""
    path = path.resolve() if path.is_symlink() else path
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _writable_mode(path)
    _remove_stale_temporaries(path)
    temporary = path.parent / f"{_temporary_prefix(path)}{secrets.token_hex(8)}.tmp"
    try:
        write(temporary)
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as exc:
        temporary.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_ROOM:
            raise StorageError(exc.errno, f"no room left to write {path} ({exc.strerror}); it was not changed") from exc
        raise


def check_writable(path: Path, what: str) -> None:
    """Refuse, before long work, what `atomic_write` would refuse after it: a folder at `path`, a
    folder for it that cannot be made or written, a read-only file."""
    if path.is_dir():
        raise KyaraError(f"{path} is a folder; give the path of {what} to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KyaraError(f"cannot create the folder for {path}: {exc.strerror or exc}") from exc
    if not os.access(path.parent, os.W_OK):
        raise KyaraError(f"{path.parent} is not writable")
    _writable_mode(path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`data` written to `path` by `atomic_write`."""

    def write(temporary: Path) -> None:
        # Created as open() creates files (0o666 less the umask), where mkstemp would make them owner-only.
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(data)

    atomic_write(path, write)


def _writable_mode(path: Path) -> int | None:
    """The permissions of the file at `path` (None when there is none), refusing a read-only file:
    root may write anything, but a file made read-only was made so on purpose."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    if not mode & 0o222:
        raise KyaraError(f"{path} is read-only (mode {mode:o}): make it writable to change it")
    return mode


STALE_TEMPORARY_SECONDS = 600
"""A temporary file this old beside a target was left by a killed write (writes take seconds)."""


def _temporary_prefix(path: Path) -> str:
    """How the temporary files of writes to `path` begin: with its name, `shortened` so that a
    long (valid) name does not make a temporary name over the file system's 255 bytes."""
    return f".{shortened(path.name)}."


def _remove_stale_temporaries(path: Path) -> None:
    now = time.time()
    for stale in path.parent.glob(f"{glob.escape(_temporary_prefix(path))}*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if now - stale.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                stale.unlink()


NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
"""Errors of a full disk or quota: `atomic_write` reports them as `StorageError`."""


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _check_labels(labels: list[str], gallery_labels: list[str]) -> None:
    if not all(isinstance(label, str) for label in [*labels, *gallery_labels]):
        raise ModelError("character names must be strings")
    if len(set(labels)) != len(labels):
        raise ModelError("a trained character is listed twice")


def _check_head(head: np.ndarray, labels: list[str]) -> None:
    """The head is a table: one row per trained character, one column per number of an embedding."""
    if head.ndim != 2:
        raise ModelError(f"the head must be a table of one row per trained character, but it has shape {head.shape}")
    if len(head) != len(labels):
        raise ModelError(
            f"the head has {len(head)} rows but the model names {len(labels)} trained characters:"
            " it needs one row per character"
        )


def _check_gallery(gallery: np.ndarray, gallery_labels: list[str], embedding_dim: int) -> None:
    """The gallery is a table too: one row per enrolled picture, as many columns as the head."""
    if gallery.ndim != 2:
        raise ModelError(
            f"the gallery must be a table of one row per enrolled picture, but it has shape {gallery.shape}"
        )
    if len(gallery) != len(gallery_labels):
        raise ModelError(
            f"the gallery has {len(gallery)} rows but the model names {len(gallery_labels)} enrolled pictures:"
            " it needs one row per picture"
        )
    if gallery.shape[1] != embedding_dim:
        # Either may be the wrong one: only running the embedder would tell which.
        raise ModelError(
            f"the gallery's embeddings have {gallery.shape[1]} numbers but the head's have {embedding_dim}:"
            " both hold the embedder's vectors, so they must be the same size"
        )


def _check_metadata(metadata: dict[str, Any]) -> None:
    """The parts of the metadata kyara reads must have the types it reads them as."""
    training = metadata.get("training", {}) if isinstance(metadata, dict) else None
    if not isinstance(training, dict):
        raise ModelError("the model's metadata must be an object, and its training part too")
    counts, config = training.get("characters", {}), training.get("config", {})
    if not (isinstance(counts, dict) and all(isinstance(n, int) for n in counts.values())):
        raise ModelError("the model's training characters must map names to picture counts")
    if not isinstance(config, dict):
        raise ModelError("the model's training settings must be an object")


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read a `.kyara` file, checking its format; raises `ModelError` with the reason otherwise."""
    path = model_path(path)
    try:
        return _read_bundle(path)
    except ModelError as exc:
        if Path(path).is_file() and Path(path).resolve() == user_model_path().resolve():
            # Every command reads this copy when there is one: say how to recover.
            raise ModelError(
                f"{exc}. It is your copy of the default model (kyara enroll and forget change it):"
                " move it away to go back to the shipped model"
            ) from exc
        raise


def check_model_file(path: Path, named: str | os.PathLike | None = None) -> Path:
    """`path` if it is a file; else a ModelError that names it as the user did (`named`)."""
    if path.is_dir():
        raise ModelError(f"{named or path}: a folder, not a model file (a .kyara bundle)")
    if not path.is_file():
        raise ModelError(f"{named or path}: no such model file")
    return path


def _read_bundle(path: Path) -> ModelBundle:
    check_model_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            missing = [name for name in _MEMBERS if name not in members]
            if missing:
                raise ModelError(f"{path}: not a kyara model (missing {', '.join(missing)})")
            if sum(info.file_size for info in archive.infolist()) > MAX_UNPACKED_BYTES:
                raise ModelError(f"{path}: unpacks to more than {MAX_UNPACKED_BYTES >> 20} MiB; refusing it")
            header = json.loads(archive.read("kyara.json"))
            if not isinstance(header, dict):
                raise ModelError(f"{path}: not a kyara model (kyara.json is not an object)")
            _check_format(header, path)
            onnx = _checked_onnx(archive.read("embedder.onnx"), path)
            int8 = INT8_EMBEDDER in members
            onnx_int8 = _checked_onnx(archive.read(INT8_EMBEDDER), path, INT8_EMBEDDER) if int8 else None
            return _bundle_or_error(
                path,
                lambda: ModelBundle(
                    onnx=onnx,
                    onnx_int8=onnx_int8,
                    labels=list(header["labels"]),
                    head=_load_npy(archive.read("head.npy")),
                    gallery=_load_npy(archive.read("gallery.npy")),
                    gallery_labels=list(header.get("gallery_labels", [])),
                    unknown_threshold=float(header["unknown_threshold"]),
                    temperature=float(header["temperature"]),
                    input_size=int(header["input_size"]),
                    concentration=float(header.get("concentration", 1.0)),
                    typical=header.get("typical"),
                    metadata=dict(header.get("metadata", {})),
                    weights=_load_weights(archive),
                    gray_head=_load_npy(archive.read(GRAY_HEAD)) if GRAY_HEAD in members else None,
                    gallery_gray=_load_npy(archive.read(GRAY_GALLERY)) if GRAY_GALLERY in members else np.zeros((0, 0)),
                ),
            )
    except ModelError:
        raise
    except Exception as exc:  # numpy, zipfile and json raise a zoo of types for damaged files
        raise ModelError(f"{path}: not a valid kyara model ({exc.__class__.__name__}: {exc})") from exc


def _checked_onnx(onnx: bytes, path: Path, member: str = "embedder.onnx") -> bytes:
    # Its outline only: opening a session here would make every load half as slow again.
    problem = onnx_problem(onnx)
    if problem:
        raise ModelError(f"{path}: {member} inside it is not a usable ONNX model: {problem}")
    return onnx


def _bundle_or_error(path: Path, make) -> ModelBundle:
    try:
        return make()
    except ModelError as exc:
        raise ModelError(f"{path}: not a valid kyara model ({exc})") from exc


def _check_format(header: dict[str, Any], path: Path) -> None:
    if header.get("format") != FORMAT:
        raise ModelError(f"{path}: not a kyara model (format {header.get('format')!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ModelError(f"{path}: unknown model format version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{path}: made by a newer kyara (model format {version}, this kyara reads up to "
            f"{FORMAT_VERSION}); upgrade kyara to use it"
        )


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, np.float32), allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if array.dtype != np.float32 or array.ndim != 2:
        raise ValueError(f"expected a 2-d float32 array, got {array.dtype} {array.shape}")
    return array


def _load_weights(archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    if "weights.npz" not in archive.namelist():
        return {}
    with np.load(io.BytesIO(archive.read("weights.npz")), allow_pickle=False) as weights:
        # The npz is a zip of its own: its members count against the zip bomb guard too.
        if sum(info.file_size for info in weights.zip.infolist()) > MAX_UNPACKED_BYTES:
            raise ModelError(f"weights.npz unpacks to more than {MAX_UNPACKED_BYTES >> 20} MiB; refusing it")
        return {name: weights[name] for name in weights.files}


class ShippedEmbedder(NamedTuple):
    onnx: bytes
    onnx_int8: bytes | None
    input_size: int


@functools.lru_cache(maxsize=1)
def shipped_embedder() -> ShippedEmbedder:
    """The built-in model's embedder in float and in 8 bits, and its input side (read once: the
    model is 17 MB)."""
    shipped = load_bundle(default_model_path())
    return ShippedEmbedder(shipped.onnx, shipped.onnx_int8, shipped.input_size)


def default_model_path() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("kyara") / "models" / "default.kyara"))


def user_model_path() -> Path:
    """The user's own copy of the default model, where enrolled characters go (XDG data dir)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "kyara" / "model.kyara"


def model_path(model: object) -> Path:
    """A model named by a path (text or `os.PathLike`); anything else, or an empty name, is a `ModelError`."""
    if not isinstance(model, str | os.PathLike) or not str(model):
        raise ModelError(f"a model is a .kyara file's path, not {model!r}")
    return Path(model)


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """`model` if given, else the user's copy once it exists, else the built-in model."""
    if model is not None:
        return model_path(model)
    user = user_model_path()
    return user if user.is_file() else default_model_path()
