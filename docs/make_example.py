"""Draw the README's example picture (our own drawing, free to publish) and kyara's output on it.

python docs/make_example.py     # writes docs/example.png, docs/example-output.png, docs/example-enrolled.png

The three characters are kyara's own, so the default model has never seen them: its output should
call them unknown. Then each is enrolled from three other drawings of it (other sizes, turns and
backgrounds) into a copy of the model, and the same picture is recognized again.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import kyara
from kyara.bundle import default_model_path

HERE = Path(__file__).parent
SKIN, INK, WHITE = (255, 228, 214), (40, 30, 30), (255, 255, 255)


def draw_character(size: int, hair: tuple[int, int, int], eyes: tuple[int, int, int]) -> Image.Image:
    """A flat anime-style head on a transparent square, face centred, `size` pixels across."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    s, cx, cy = size * 0.3, size / 2, size * 0.48
    d.ellipse([cx - 1.15 * s, cy - 1.25 * s, cx + 1.15 * s, cy + 0.9 * s], fill=hair)
    d.rectangle([cx - 1.15 * s, cy - 0.2 * s, cx + 1.15 * s, cy + 1.6 * s], fill=hair)
    d.ellipse([cx - 0.85 * s, cy - 0.9 * s, cx + 0.85 * s, cy + 0.75 * s], fill=SKIN)
    d.polygon([(cx - 0.8 * s, cy + 0.1 * s), (cx + 0.8 * s, cy + 0.1 * s), (cx, cy + 1.05 * s)], fill=SKIN)
    for i in range(-4, 5):
        x = cx + i * 0.22 * s
        d.polygon(
            [(x - 0.25 * s, cy - s), (x + 0.25 * s, cy - s), (x + 0.05 * s, cy - 0.25 * s + abs(i) * 0.03 * s)],
            fill=hair,
        )
    d.ellipse([cx - 0.95 * s, cy - 1.25 * s, cx + 0.95 * s, cy - 0.6 * s], fill=hair)
    for side in (-1, 1):
        ex, ey = cx + side * 0.38 * s, cy + 0.12 * s
        d.ellipse(
            [ex - 0.2 * s, ey - 0.28 * s, ex + 0.2 * s, ey + 0.22 * s],
            fill=WHITE,
            outline=INK,
            width=max(1, int(s * 0.03)),
        )
        d.ellipse([ex - 0.16 * s, ey - 0.22 * s, ex + 0.16 * s, ey + 0.2 * s], fill=eyes)
        d.ellipse([ex - 0.08 * s, ey - 0.1 * s, ex + 0.08 * s, ey + 0.1 * s], fill=(20, 20, 40))
        d.ellipse([ex - 0.1 * s, ey - 0.18 * s, ex - 0.01 * s, ey - 0.08 * s], fill=WHITE)
        d.line([ex - 0.24 * s, ey - 0.3 * s, ex + 0.24 * s, ey - 0.3 * s], fill=INK, width=max(2, int(s * 0.05)))
    d.arc(
        [cx - 0.12 * s, cy + 0.55 * s, cx + 0.12 * s, cy + 0.7 * s],
        20,
        160,
        fill=(150, 60, 60),
        width=max(2, int(s * 0.03)),
    )
    return layer


CAST = {
    "violet": ((90, 60, 160), (60, 120, 220)),
    "amber": ((230, 160, 70), (200, 60, 90)),
    "moss": ((70, 150, 110), (230, 170, 40)),
}
"""Our characters: hair and eye colours."""


def make_picture() -> Image.Image:
    picture = Image.new("RGB", (1300, 620), (235, 242, 255))
    for (hair, eyes), tilt, position in zip(CAST.values(), (0, 0, 30), ((10, 110), (390, 130), (700, 0))):
        head = draw_character(480, hair, eyes).rotate(tilt, Image.Resampling.BICUBIC, expand=True)
        picture.paste(head, position, head)
    return picture


def enrollment_pictures(name: str) -> list[Image.Image]:
    """Three other drawings of a character: other sizes, turns and backgrounds."""
    hair, eyes = CAST[name]
    pictures = []
    for size, tilt, background in ((300, -10, (255, 250, 235)), (420, 12, (225, 235, 225)), (360, 0, (250, 225, 230))):
        picture = Image.new("RGB", (size + 120, size + 80), background)
        head = draw_character(size, hair, eyes).rotate(tilt, Image.Resampling.BICUBIC, expand=True)
        picture.paste(head, (40, 20), head)
        pictures.append(picture)
    return pictures


def annotate(picture: Image.Image, faces: list[kyara.FaceResult]) -> Image.Image:
    out = picture.copy()
    d = ImageDraw.Draw(out)
    font = ImageFont.load_default(size=22)
    for face in faces:
        x, y, w, h = face.box
        colour = (30, 170, 80) if face.label else (230, 120, 0)
        d.rectangle([x, y, x + w, y + h], outline=colour, width=4)
        best = face.top_k[0]
        text = (
            f"{face.label} {face.confidence:.0%}"
            if face.label
            else f"unknown (closest: {best.label} {best.confidence:.0%})"
        )
        width = d.textlength(text, font=font) + 10
        left = max(0, min(x, out.width - width))  # keep the label inside the picture
        d.rectangle([left, y - 28, left + width, y], fill=colour)
        d.text((left + 5, y - 26), text, fill=WHITE, font=font)
    return out


def after_enrolling(picture: Image.Image) -> list[kyara.FaceResult]:
    """The picture recognized by a copy of the default model that enrolled the three characters."""
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "model.kyara"
        shutil.copy(default_model_path(), model)
        for name in CAST:
            kyara.enroll(name, enrollment_pictures(name), model=model)
        return kyara.recognize(picture, model=str(model))


if __name__ == "__main__":
    picture = make_picture()
    picture.save(HERE / "example.png")
    annotate(picture, kyara.recognize(picture)).save(HERE / "example-output.png")
    annotate(picture, after_enrolling(picture)).save(HERE / "example-enrolled.png")
