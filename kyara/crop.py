"""Face extraction for building datasets: illustrations in, upright face crops out.

Detection results are cached per file content (SHA-1) under the user cache directory, so a second
pass over the same pictures does not detect again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kyara import __version__ as kyara_version
from kyara.bundle import atomic_write_bytes
from kyara.cut import CROP_MARGIN, FaceCut, cuts_to_learn, cuts_to_train
from kyara.dedupe import NEAR_DUPLICATE_BITS, phash
from kyara.detection import DetectedFace, Detector
from kyara.detectors import get_detector
from kyara.errors import ImageError, KyaraError
from kyara.imageio import lies_in, list_images, load_image, resolved, shortened


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kyara" / "faces"


def detect_cached(path: Path, image: Image.Image, detector: Detector) -> list[DetectedFace]:
    """`detector.detect(image)`, remembered by the content of the file at `path`."""
    settings = json.dumps([kyara_version, detector.name, getattr(detector, "settings", {})], sort_keys=True)
    digest = hashlib.sha1(settings.encode() + path.read_bytes()).hexdigest()
    entry = cache_dir() / detector.name / f"{digest}.json"
    if entry.is_file():
        try:
            return [_face_from_dict(item) for item in json.loads(entry.read_text())]
        except (ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is simply recomputed
    faces = detector.detect(image)
    # The cache only saves time: a read-only or full disk must not stop the work.
    with contextlib.suppress(OSError):
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


def training_cuts(path: Path, picture: Image.Image, detector: Detector) -> list[FaceCut]:
    """`cut.cuts_to_train` of the picture at `path`, its detections cached."""
    return cuts_to_train(picture, lambda image: detect_cached(path, image, detector))


@dataclass
class CropSummary:
    images: int = 0
    faces: int = 0
    written: int = 0
    without_face: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def crop_folder(
    source: Path,
    target: Path,
    detector: Detector | None = None,
    margin: float = CROP_MARGIN,
    size: int = 192,
    drop_duplicates: bool = True,
) -> CropSummary:
    """`kyara crop`: cut every face out of the pictures under `source` into `target`, keeping
    sub-folders (one per character), as `size` px PNGs; near-duplicate faces within a folder are
    dropped. `detector`: the default detector unless given."""
    if not source.is_dir():
        raise KyaraError(f"{source}: not a folder")
    detector = get_detector() if detector is None else detector
    summary = CropSummary()
    seen: dict[Path, list[np.ndarray]] = {}
    written = resolved(target)  # a target inside the source: earlier crops are not input
    if resolved(source).is_relative_to(written):
        raise KyaraError(f"{target} holds the source pictures; write the crops to another folder")
    pictures = [path for path in list_images(source) if not lies_in(path, written)]
    for path in tqdm(pictures, desc="cropping"):
        summary.images += 1
        try:
            image = load_image(path)
        except ImageError as exc:
            summary.unreadable.append(str(exc))
            continue
        crops = [cut.pixels for cut in cuts_to_learn(image, detect_cached(path, image, detector), margin)]
        summary.faces += len(crops)
        if not crops:
            summary.without_face.append(str(path))
        relative = path.relative_to(source)
        for number, crop in enumerate(crops, 1):
            # Keep the source's suffix: a.jpg and a.png must not write over each other's faces.
            destination = target / relative.parent / f"{shortened(relative.name)}-{number}.png"
            crop = crop.resize((size, size), Image.Resampling.LANCZOS)
            bits = phash(crop)
            folder_hashes = seen.setdefault(destination.parent, [])
            if drop_duplicates and any((bits != other).sum() <= NEAR_DUPLICATE_BITS for other in folder_hashes):
                summary.duplicates.append(str(destination))
                continue
            folder_hashes.append(bits)
            buffer = io.BytesIO()
            crop.save(buffer, "PNG")
            try:
                atomic_write_bytes(destination, buffer.getvalue())
            except OSError as exc:
                raise KyaraError(f"cannot write {destination}: {exc}") from exc
            summary.written += 1
    return summary
