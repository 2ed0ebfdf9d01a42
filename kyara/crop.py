"""Face extraction for building datasets: illustrations in, upright face crops out.

Detection results are cached per file content (SHA-1) under the user cache directory, so a second
pass over the same pictures does not detect again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from kyara.bundle import atomic_write_bytes
from kyara.detection import DetectedFace, Detector
from kyara.pipeline import CROP_MARGIN, face_crop

MAX_CROP_SIDE = 512
"""A near-square picture no larger than this is taken to be a face crop already."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kyara" / "faces"


def looks_like_face_crop(image: Image.Image) -> bool:
    width, height = image.size
    return max(width, height) <= MAX_CROP_SIDE and 0.75 <= width / height <= 4 / 3


def detect_cached(path: Path, image: Image.Image, detector: Detector) -> list[DetectedFace]:
    """`detector.detect(image)`, remembered by the content of the file at `path`."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    entry = cache_dir() / detector.name / f"{digest}.json"
    if entry.is_file():
        try:
            return [_face_from_dict(item) for item in json.loads(entry.read_text())]
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is simply recomputed
    faces = detector.detect(image)
    atomic_write_bytes(entry, json.dumps([asdict(face) for face in faces]).encode())
    return faces


def _face_from_dict(item: dict) -> DetectedFace:
    return DetectedFace(
        box=tuple(item["box"]),
        score=float(item["score"]),
        angle=float(item["angle"]),
        landmarks={k: tuple(v) for k, v in item["landmarks"].items()},
        colors=dict(item["colors"]),
    )


def faces_in(path: Path, image: Image.Image, detector: Detector, margin: float = CROP_MARGIN) -> list[Image.Image]:
    """Every face of an illustration as an upright crop, most confident first."""
    faces = sorted(detect_cached(path, image, detector), key=lambda f: f.score, reverse=True)
    return [face_crop(image, face, margin) for face in faces]


def training_face(path: Path, image: Image.Image, detector: Detector) -> Image.Image | None:
    """The picture itself if it is a face crop, else its most confident face (None: no face)."""
    if looks_like_face_crop(image):
        return image
    faces = faces_in(path, image, detector)
    return faces[0] if faces else None
