"""Image loading in one place: every input kyara accepts becomes an RGB `PIL.Image` here.

Handles common formats (PNG, JPEG, WebP, GIF first frame, BMP, TIFF), every Pillow mode, EXIF
orientation and a pixel limit, and turns every failure into an `ImageError` with a clear message.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from os import PathLike
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from kyara.errors import ImageError, ImageTooLargeError, KyaraError, count

ImageSource = str | PathLike | bytes | BinaryIO | Image.Image | np.ndarray

DEFAULT_MAX_PIXELS = 50_000_000
"""About 7000 x 7000: larger than any illustration we expect, far below a decompression bomb."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jfif", ".webp", ".gif", ".bmp", ".tif", ".tiff"})

# Only formats decoded by Pillow itself: EPS, for one, would hand the bytes to Ghostscript.
DECODED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read `source` (path, bytes, file object, PIL image or HxWx3 uint8 array) as an RGB image."""
    return _read(source, max_pixels, decode=True)


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Raise what `load_image` would for a missing format or too many pixels, reading only the
    header: a cheap check of many pictures before any is decoded."""
    _read(data, max_pixels, decode=False)


def _read(source: ImageSource, max_pixels: int, decode: bool) -> Image.Image:
    max_pixels = count(max_pixels, "max_pixels")
    if isinstance(source, np.ndarray):
        return _from_array(np.asarray(source), max_pixels)  # a subclass (np.matrix) as the plain array
    if isinstance(source, Image.Image):
        name, stream = "image", None
    else:
        name, stream = _open_stream(source)
    try:
        with warnings.catch_warnings():
            # kyara checks the size itself (below) with its own, configurable limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = source if stream is None else Image.open(stream, formats=DECODED_FORMATS)
            _check_size(image.size, max_pixels, name)
            if not decode:
                return image
            if stream is None:
                _load_given(image)
            else:
                image.seek(0)
                image.load()
            # Upright as a viewer shows it, whether kyara opened the file or the caller did.
            return to_rgb(ImageOps.exif_transpose(image) or image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name}: image exceeds the limit of pixels Pillow will decode ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name}: not a readable image ({exc.__class__.__name__})") from exc
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from exc
    except MemoryError:
        raise  # not the file's fault: it must not be remembered as corrupt
    except Exception as exc:  # Pillow's decoders fail in yet other ways on hostile files (TypeError, ...)
        raise ImageError(f"{name}: corrupt image ({exc.__class__.__name__}: {exc})") from exc
    finally:
        if stream is not None:
            stream.close()


def _load_given(image: Image.Image) -> None:
    try:
        image.load()
    except ValueError as exc:  # Pillow's word for a closed image
        raise ImageError(f"image: cannot be read ({exc}); give an open image") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha over white, 16-bit and float rescaled to 8-bit."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(to_uint8(np.asarray(image))).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "La":  # premultiplied: Pillow converts it to LA only
        image, mode = image.convert("LA"), "LA"
    if mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Pixel values of any number type as 8-bit, by the range they are in: booleans as black and
    white, floats in [0, 1] times 255, values in [0, 255] as they are, in [0, 65535] (16-bit)
    divided by 257; values outside all of these stretched from their minimum to their maximum."""
    if values.dtype == bool:
        return values.astype(np.uint8) * 255
    if not np.isfinite(values).all():
        raise ImageError("image contains NaN or infinite values")
    fractions = np.issubdtype(values.dtype, np.floating)
    low, high = float(values.min()), float(values.max())
    values = values.astype(np.float64)
    if fractions and low >= 0 and 0 < high <= 1:
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257
    elif high > low:  # halves: the span of +-1e308 would overflow
        scaled = (values / 2 - low / 2) * (255 / (high / 2 - low / 2))
    else:  # one value outside every range: a flat picture, black
        scaled = np.zeros_like(values)
    return np.clip(scaled.round(), 0, 255).astype(np.uint8)


def _open_stream(source: ImageSource) -> tuple[str, BinaryIO]:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("<bytes>: empty input")
        return "<bytes>", io.BytesIO(bytes(source))
    if isinstance(source, str | PathLike):
        if not str(source):
            raise ImageError("an empty path: give a file name")
        return str(source), _open_file(Path(source))
    if hasattr(source, "read"):
        try:
            data = source.read()
        except (OSError, ValueError) as exc:  # ValueError: a closed file
            raise ImageError(f"<stream>: cannot be read ({exc})") from exc
        if not isinstance(data, bytes | bytearray):
            raise ImageError("<stream>: open the file in binary mode ('rb')")
        if not data:
            raise ImageError("<stream>: empty input")
        return "<stream>", io.BytesIO(data)
    raise ImageError(f"unsupported image source of type {type(source).__name__}")


def _open_file(path: Path) -> BinaryIO:
    try:
        if not path.exists() and path.is_symlink():
            raise ImageError(f"{path}: a broken symbolic link or a loop of them")
        if not path.exists():
            raise ImageError(f"{path}: no such file")
        if not path.is_file():
            raise ImageError(f"{path}: not a file")
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: empty file")
        return path.open("rb")
    except OSError as exc:  # unreadable, name too long, ...
        raise ImageError(f"{path}: cannot open ({exc.strerror or exc})") from exc


def resolved(path: str | PathLike) -> Path:
    """`path` made absolute with symlinks resolved, or a `KyaraError` (a symlink loop, ...)."""
    path = Path(path).expanduser()
    try:
        # Strict for an existing name, so that a symlink loop is an error on every Python (3.13
        # returns a loop unresolved otherwise); a path still to be made need not exist.
        return path.resolve(strict=os.path.lexists(path))
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, before Python 3.13
        raise KyaraError(f"{path}: cannot resolve the path ({exc})") from exc


def lies_in(path: str | PathLike, folder: Path) -> bool:
    """Whether `path` leads inside `folder` (resolved); a path that cannot be resolved (a broken
    link, a loop) does not, and is left to be reported where it is read."""
    try:
        return resolved(path).is_relative_to(folder)
    except KyaraError:
        return False


def check_utf8(path: Path) -> None:
    """A name kyara stores as text (in JSON or SQLite) must be valid UTF-8."""
    try:
        str(path).encode("utf-8")
    except UnicodeError as exc:
        raise KyaraError(f"{str(path)!r}: the name is not valid UTF-8 ({exc.reason}); rename it") from exc


def shortened(name: str, limit: int = 150) -> str:
    """`name` cut to at most `limit` bytes of UTF-8 (file systems cap names at 255 bytes, not
    characters); a cut name ends with a hash of the whole, so two long names stay apart."""
    encoded = name.encode("utf-8", errors="surrogateescape")
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:8]
    return encoded[: limit - 9].decode("utf-8", errors="ignore") + "~" + digest


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"array image must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise ImageError(f"array image must hold numbers (bool, integer or float), got {array.dtype}")
    _check_size((array.shape[1], array.shape[0]), max_pixels, "array")
    if array.dtype != np.uint8:
        array = to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{name}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,}"
        )


def list_images(folder: Path) -> list[Path]:
    """Image files directly or recursively under `folder` (links to folders not followed), sorted,
    hidden files and folders skipped. A folder that cannot be read is an error, not an empty one:
    an index would take its pictures for deleted."""

    def unreadable(exc: OSError) -> None:
        raise KyaraError(f"{exc.filename}: cannot read this folder ({exc.strerror or exc})") from exc

    found = []
    for here, folders, files in os.walk(folder, onerror=unreadable):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(here, name) for name in files if not name.startswith(".")]
    # Not only files: a broken link or a FIFO named like a picture is listed, to be reported
    # unreadable where it is read, never skipped without a word.
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES)
