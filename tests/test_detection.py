from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from kyara.detection import AnimeFaceDetector, CnnDetector, DetectedFace, iou, non_max_suppression
from kyara.errors import KyaraError
from kyara.imageio import list_images, load_image
from tests.conftest import ROOT, data_path


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


@pytest.fixture(scope="module")
def benchmark_pictures():
    """Hand-checked benchmark pictures (never trained on) with their boxes."""
    boxes = json.loads((ROOT / "benchmarks" / "detection_boxes.json").read_text())
    entries = [e for e in boxes["images"] if e["faces"]][::4]
    return [(load_image(data_path(e["path"])), e["faces"]) for e in entries]


def test_cnn_detector_finds_hand_checked_faces(benchmark_pictures):
    detector = CnnDetector()
    faces = hits = detections = 0
    for image, truth in benchmark_pictures:
        found = detector.detect(image)
        detections += len(found)
        faces += len(truth)
        hits += sum(any(iou(f.box, t["box"]) >= 0.4 for f in found) for t in truth)
    assert hits / faces >= 0.75, f"recall {hits}/{faces}"
    assert hits / detections >= 0.75, f"precision {hits}/{detections}"


def test_cnn_detector_reports_tilt_and_original_pixels(face_crop_path):
    face = load_image(face_crop_path).resize((160, 160))
    canvas = Image.new("RGB", (640, 480), "white")
    canvas.paste(face.rotate(40, expand=True, fillcolor=(255, 255, 255)), (300, 150))
    found = CnnDetector().detect(canvas)
    assert len(found) == 1
    (cx, cy), side = found[0].center, found[0].box[2]
    assert abs(cx - (300 + 0.5 * 224)) < 30 and abs(cy - (150 + 0.5 * 224)) < 30
    assert 80 < side < 200
    assert -65 <= found[0].angle <= -20  # turning it 40 degrees clockwise stands it upright
    twice = CnnDetector().detect(canvas.resize((1280, 960)))
    assert len(twice) == 1 and math.dist(twice[0].center, (2 * cx, 2 * cy)) < 20


@pytest.mark.parametrize("turn", [35, -35])
def test_cnn_detector_reads_the_tilt_of_real_faces_in_a_turned_illustration(benchmark_pictures, turn):
    """Held-out illustrations turned whole: a face found both ways should read about `turn` degrees
    more tilt turned than upright. The shipped detector reads it within half of `turn` for 47 to 51 %
    of the faces here (a median of 17 to 23 of 35 degrees), session 19's for 52 to 58 % (19 to 20);
    session 20's before its step 5 for 28 to 41 % (12 to 16: this test failed it); session 10's, which
    learned angles from pasted crops only, for 17 to 22 % (a median of 8 to 9)."""
    detector = CnnDetector()
    changes, upright_faces, found_turned = [], 0, 0
    for image, _ in benchmark_pictures:
        turned = image.rotate(turn, Image.Resampling.BILINEAR, expand=True, fillcolor=(255, 255, 255))
        cos, sin = math.cos(math.radians(turn)), math.sin(math.radians(turn))
        after = detector.detect(turned)
        for face in detector.detect(image):
            upright_faces += 1
            dx, dy = face.center[0] - image.width / 2, face.center[1] - image.height / 2
            where = (turned.width / 2 + dx * cos + dy * sin, turned.height / 2 - dx * sin + dy * cos)
            same = [f for f in after if math.dist(f.center, where) < 0.4 * face.box[2]]
            if same:
                found_turned += 1
                changes.append((same[0].angle - face.angle + 180) % 360 - 180)
    assert found_turned >= 0.7 * upright_faces, f"{found_turned} of {upright_faces} faces found turned"
    read = [abs(change + turn) <= 0.5 * abs(turn) for change in changes]
    assert sum(read) >= 0.4 * len(read), f"{sum(read)} of {len(read)} faces read the turn of {turn} degrees"


def test_cnn_detector_finds_nothing_without_faces():
    """The 500 non-face patches kept out of training, 64 to a mosaic: at most one false face per 125
    patches (the shipped detector finds 3, session 19's and session 8's 2; the one before those none, at a
    fifth less recall on anime at large)."""
    patches = list_images(data_path("face-patches", "not-face"))[::10]
    detector = CnnDetector()
    false_faces = 0
    for start in range(0, len(patches), 64):
        mosaic = Image.new("RGB", (512, 512))
        for i, path in enumerate(patches[start : start + 64]):
            mosaic.paste(load_image(path), ((i % 8) * 64, (i // 8) * 64))
        false_faces += len(detector.detect(mosaic))
    assert len(patches) >= 450 and false_faces <= 4, f"{false_faces} false faces"
    assert detector.detect(Image.new("RGB", (300, 200), "white")) == []


def _face_crops(count: int) -> list[Image.Image]:
    """Held-out holoen face crops of different characters (the detector never trained on them)."""
    from tests.conftest import held_out

    files = held_out("test_files")
    by_character = {}
    for path in files:
        by_character.setdefault(path.parent.name, path)
    return [load_image(p) for p in list(by_character.values())[:count]]


def test_cnn_detector_finds_close_ups_larger_than_its_input():
    detector = CnnDetector()
    found_whole = found_cut = 0
    crops = _face_crops(32)
    for crop in crops:
        whole = crop.resize((1024, 1024), Image.Resampling.BICUBIC)  # the face spans ~750 px, twice the input
        faces = detector.detect(whole)
        found_whole += bool(faces) and faces[0].box[2] > 0.5 * 1024 and len(faces) <= 2
        side = crop.width
        cut = crop.crop((side // 6, side // 6, side - side // 6, side - side // 6)).resize((900, 900))
        faces = detector.detect(cut)  # hairline and chin cut off by the frame
        found_cut += bool(faces) and faces[0].box[2] > 0.5 * 900
    assert found_whole >= 0.9 * len(crops), f"{found_whole} of {len(crops)} whole close-ups"
    assert found_cut >= 0.75 * len(crops), f"{found_cut} of {len(crops)} close-ups cut by the frame"


def test_cnn_detector_finds_a_face_cut_off_by_the_edge():
    detector = CnnDetector()
    found = 0
    crops = _face_crops(8)
    for i, crop in enumerate(crops):
        canvas = Image.new("RGB", (640, 480), (235, 235, 240))
        face = crop.resize((240, 240))
        # A third of the crop hangs over the left or the bottom edge.
        position = (-80, 120) if i % 2 else (200, 320)
        canvas.paste(face, position)
        faces = detector.detect(canvas)
        centre = (position[0] + 120, position[1] + 125)
        found += any(math.dist(f.center, centre) < 60 for f in faces)
    assert found >= 6, f"{found} of {len(crops)}"


def test_the_default_install_never_imports_animeface(face_crop_path):
    """animeface is an extra (it holds Pillow below 12): recognition and detection must not need it."""
    code = (
        "import sys, kyara; kyara.recognize(sys.argv[1]); kyara.detect(sys.argv[1]);"
        "assert 'animeface' not in sys.modules, 'animeface was imported'"
    )
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code, str(face_crop_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_missing_animeface_extra_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_animeface(name, *args, **kwargs):
        if name == "animeface":
            raise ImportError("No module named 'animeface'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_animeface)
    with pytest.raises(KyaraError, match=r"kyara\[animeface\]"):
        AnimeFaceDetector()
