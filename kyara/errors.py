"""The exceptions kyara raises: catch `KyaraError` to handle every expected failure; and `count`,
the one check of an argument that counts something (top_k, max_pixels, max_faces, threads)."""

import numbers


class KyaraError(Exception):
    """Base class for every error kyara reports on purpose."""


class ImageError(KyaraError):
    """An input is not a readable image (missing, corrupt, truncated, empty, not an image)."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the configured limit (decompression-bomb guard)."""


class ModelError(KyaraError):
    """A model bundle is missing, malformed, or made by an incompatible kyara."""


class PrecisionError(ModelError):
    """A model bundle has no network at the precision asked for (a trained model has no 8-bit one)."""


class NoFaceError(KyaraError):
    """None of the pictures given to learn a character from shows a usable face."""


class StorageError(KyaraError, OSError):
    """A file could not be written for want of room (disk full, quota reached); nothing was
    changed. Also an `OSError`, so code that handles those keeps handling it."""

    def __str__(self) -> str:
        return str(self.strerror)


def count(value: object, what: str) -> int:
    """`value` as a whole number of at least 1 (numpy's integers too), or a `KyaraError` naming `what`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise KyaraError(f"{what} must be a whole number of at least 1, not {value!r}")
    return int(value)
