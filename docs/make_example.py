"""Draw the README's example picture (our own drawing, free to publish) and kyara's output on it.

python docs/make_example.py     # writes docs/example.png and docs/example-output.png
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import kyara

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


def make_picture() -> Image.Image:
    picture = Image.new("RGB", (1300, 620), (235, 242, 255))
    cast = [
        ((90, 60, 160), (60, 120, 220), 0, (10, 110)),
        ((230, 160, 70), (200, 60, 90), 0, (390, 130)),
        ((70, 150, 110), (230, 170, 40), 30, (700, 0)),
    ]
    for hair, eyes, tilt, position in cast:
        head = draw_character(480, hair, eyes).rotate(tilt, Image.Resampling.BICUBIC, expand=True)
        picture.paste(head, position, head)
    return picture


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


if __name__ == "__main__":
    picture = make_picture()
    picture.save(HERE / "example.png")
    annotate(picture, kyara.recognize(picture)).save(HERE / "example-output.png")
