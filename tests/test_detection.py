from __future__ import annotations

import math

import pytest

from kyara.detection import AnimeFaceDetector, DetectedFace, non_max_suppression
from kyara.errors import KyaraError
from kyara.imageio import list_images, load_image
from tests.conftest import data_path


@pytest.fixture(scope="module")
def illustrations():
    paths = list_images(data_path("newgame-illustrations"))
    return [load_image(p) for p in paths[:: max(1, len(paths) // 12)][:12]]


def test_animeface_really_finds_faces(illustrations):
    """Guards the silent failure of animeface with a wrong Pillow: it must find faces here."""
    upright = AnimeFaceDetector(angles=(0.0,))
    found = [upright.detect(image) for image in illustrations]
    assert sum(bool(f) for f in found) >= 4
    for faces, image in zip(found, illustrations):
        for face in faces:
            x, y, w, h = face.box
            assert w > 8 and -w < x < image.width and -h < y < image.height
            assert set(face.landmarks) == {"left_eye", "right_eye", "mouth", "nose", "chin"}
            assert face.colors["hair"].startswith("#") and len(face.colors["hair"]) == 7


def test_tilted_face_is_found_and_mapped_back():
    face = load_image(data_path("holoen-faces", "ame", "01668e06f79ab755e2c96044cd99aab9.webp-1.jpg")).resize(
        (256, 256)
    )
    upright = AnimeFaceDetector(angles=(0.0,)).detect(face)
    assert upright, "the upright crop should be detected"
    tilted = face.rotate(40, expand=True, fillcolor=(255, 255, 255))
    found = AnimeFaceDetector().detect(tilted)
    assert found
    # Where the upright face's centre lands after rotating the picture by 40 degrees.
    (ux, uy), (cx, cy) = upright[0].center, (face.width / 2, face.height / 2)
    angle = math.radians(40)
    ex = tilted.width / 2 + (ux - cx) * math.cos(angle) + (uy - cy) * math.sin(angle)
    ey = tilted.height / 2 - (ux - cx) * math.sin(angle) + (uy - cy) * math.cos(angle)
    best = min(found, key=lambda f: math.dist(f.center, (ex, ey)))
    assert math.dist(best.center, (ex, ey)) < 0.25 * upright[0].box[2]
    assert best.angle in (-25.0, -50.0)  # the picture was turned back to find it


def test_non_max_suppression_merges_duplicates_only():
    faces = [
        DetectedFace((10, 10, 100, 100), 0.9),
        DetectedFace((15, 12, 100, 100), 0.8),  # the same face, found again at another angle
        DetectedFace((40, 40, 30, 30), 0.7),  # inside the first: a duplicate too
        DetectedFace((300, 10, 100, 100), 0.6),  # another face
    ]
    kept = non_max_suppression(faces)
    assert [f.score for f in kept] == [0.9, 0.6]


def test_new_pillow_is_refused_rather_than_silently_blind(monkeypatch):
    monkeypatch.setattr("kyara.detection.PIL.__version__", "12.0.0")
    with pytest.raises(KyaraError, match="pillow<12"):
        AnimeFaceDetector()
