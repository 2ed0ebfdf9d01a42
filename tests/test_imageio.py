from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageFile

from kyara.errors import ImageError, ImageTooLargeError, KyaraError
from kyara.imageio import load_image
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def face(face_crop_path) -> Image.Image:
    return Image.open(face_crop_path).convert("RGB")


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_common_formats_load_as_rgb(face, format):
    image = load_image(encoded(face, format))
    assert image.mode == "RGB"
    assert image.size == face.size
    # The picture survives the trip (GIF's palette and JPEG's compression lose a little).
    assert np.abs(np.asarray(image, np.float32) - np.asarray(face, np.float32)).mean() < 20


def test_animated_gif_gives_first_frame(face):
    frames = [face, Image.new("RGB", face.size, (0, 0, 0))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(data)).mean() > 60  # the black second frame would be ~0


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(face, mode):
    converted = face.convert("L").convert(mode) if mode in ("I;16", "I", "F") else face.convert(mode)
    image = load_image(converted)
    assert image.mode == "RGB" and image.size == face.size
    assert np.asarray(image).std() > 10  # not flattened to one colour


def test_sixteen_bit_png_is_rescaled():
    ramp = (np.arange(256 * 64, dtype=np.uint16).reshape(64, 256) * 4).astype(np.uint16)
    data = encoded(Image.frombytes("I;16", (256, 64), ramp.tobytes()), "PNG")
    pixels = np.asarray(load_image(data))[:, :, 0]
    assert pixels.min() == 0 and pixels.max() == 255
    assert abs(int(pixels[32, 128]) - 128) <= 2  # rescaled linearly, not clipped


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert np.asarray(load_image(encoded(clear, "PNG"))).min() == 255


def test_exif_orientation_is_applied(face):
    wide = face.resize((200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image = load_image(encoded(wide, "JPEG", exif=exif.tobytes()))
    assert image.size == (100, 200)


def test_pixel_limit_stops_decompression_bombs():
    bomb = encoded(Image.new("1", (20_000, 20_000)), "PNG")  # a few KB on disk, 400 Mpx decoded
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        load_image(bomb)
    with pytest.raises(ImageTooLargeError):
        load_image(encoded(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5_000)


def test_truncated_file_is_an_error(face, tmp_path):
    data = encoded(face, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"hello, I am text", "not a readable image"),
        (bytes(range(256)) * 40, "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "corrupt or truncated|not a readable image"),
    ],
)
def test_bad_files_raise_image_error(tmp_path, content, message):
    path = tmp_path / "input.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_image(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_hostile_file_name_is_only_reported(face, tmp_path):
    path = tmp_path / "名前 (copy) ; rm -rf $HOME.png"
    path.write_bytes(encoded(face, "PNG"))
    assert load_image(path).size == face.size
    path.write_bytes(b"junk")
    with pytest.raises(ImageError, match="rm -rf"):
        load_image(path)


def test_arrays_and_streams(face):
    assert load_image(np.asarray(face)).size == face.size
    assert load_image(np.asarray(face.convert("L"))).mode == "RGB"
    assert load_image(io.BytesIO(encoded(face, "PNG"))).size == face.size
    with pytest.raises(ImageError):
        load_image(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(ImageError, match="unsupported"):
        load_image(12345)
    with pytest.raises(ImageError, match="numbers"):
        load_image(np.full((4, 4), "a"))


@pytest.mark.parametrize(
    ("values", "grey"),
    [
        (np.full((40, 40), 0.5), 128),  # floats in [0, 1]
        (np.full((40, 40), True), 255),
        (np.full((40, 40), 65535, np.uint16), 255),
        (np.full((40, 40), 200, np.int64), 200),
        (np.full((40, 40), 200.0, np.float32), 200),
        (np.full((40, 40), -1.0), 0),  # one value outside every range: was a ZeroDivisionError
        (np.full((40, 40), 70_000, np.int32), 0),
    ],
)
def test_array_values_keep_their_brightness(values, grey):
    """A flat picture was stretched to its own minimum and maximum: every one of these was black."""
    assert np.abs(np.asarray(load_image(values)).astype(int) - grey).max() <= 1


def test_odd_arrays_and_modes_are_read_or_refused_cleanly(face):
    gray = np.asarray(face.convert("L"))
    matrix = load_image(np.asmatrix(gray))  # numpy's repeat on a matrix corrupted the heap
    assert matrix.size == face.size and np.array_equal(np.asarray(matrix)[:, :, 0], gray)
    extreme = np.zeros((40, 40))
    extreme[:20], extreme[20:] = -1e308, 1e308
    assert set(np.unique(np.asarray(load_image(extreme)))) == {0, 255}
    floats = face.convert("F")
    floats.putpixel((3, 3), float("nan"))
    with pytest.raises(ImageError, match="NaN"):
        load_image(floats)  # was a black picture
    native = Image.frombytes("I;16N", (40, 40), np.full((40, 40), 65535, "=u2").tobytes())
    assert np.asarray(load_image(native)).min() == 255
    assert np.asarray(load_image(face.convert("RGBA").convert("La"))).std() > 10  # was 'corrupt'
    for limit in (0, -1, float("nan"), None, 1.5):
        with pytest.raises(KyaraError, match="max_pixels"):
            load_image(gray, max_pixels=limit)
    assert load_image(gray, max_pixels=np.int64(10**6)).size == face.size


def test_a_picture_opened_by_the_caller_is_turned_upright_too(face):
    exif = Image.Exif()
    exif[0x0112] = 6
    opened = Image.open(io.BytesIO(encoded(face.resize((200, 100)), "JPEG", exif=exif.tobytes())))
    assert load_image(opened).size == (100, 200)


def test_a_decoder_failing_in_an_unusual_way_is_an_image_error():
    """A TIFF whose rows-per-strip is a fraction: Pillow raises TypeError while decoding it."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((24, 20), np.float32)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    directory = struct.unpack_from("<I", data, 4)[0]
    for entry in range(directory + 2, directory + 2 + 12 * struct.unpack_from("<H", data, directory)[0], 12):
        if struct.unpack_from("<H", data, entry)[0] == 278:  # RowsPerStrip -> RATIONAL 1/24
            struct.pack_into("<HHII", data, entry, 278, 5, 1, len(data))
    with pytest.raises(ImageError, match="corrupt image"):
        load_image(bytes(data + struct.pack("<II", 1, 24)))


def test_running_out_of_memory_is_not_a_corrupt_image(face, monkeypatch):
    def exhausted(self):
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", exhausted)  # while decoding
    with pytest.raises(MemoryError):
        load_image(encoded(face, "PNG"))


def test_api_edge_cases_are_kyara_errors_with_clear_messages(tmp_path):
    """Issue 15, 11: an empty path, bad top_k, closed files and images, a symlink loop."""
    import kyara
    from kyara.errors import KyaraError

    example = ROOT / "docs" / "example.png"
    recognizer = kyara.Recognizer()
    with pytest.raises(KyaraError, match="empty path"):
        recognizer.recognize("")
    for top_k in (0, -1, None, "3", True):
        with pytest.raises(KyaraError, match="top_k"):
            recognizer.recognize(example, top_k=top_k)
    closed = example.open("rb")
    closed.close()
    with pytest.raises(KyaraError, match="cannot be read"):
        recognizer.recognize(closed)
    image = Image.open(example)
    image.close()
    with pytest.raises(KyaraError, match="open image"):
        recognizer.recognize(image)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(KyaraError, match="loop"):
        recognizer.recognize(tmp_path / "a")
    assert len(recognizer.recognize(example, top_k=2)[0].top_k) == 2
