"""What the network is shown: training pictures augmented for drawings, and evaluation-time input."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

FRAMING_ZOOM = (0.65, 1.3)
"""Share of the picture's side the network is shown: from the central 65 % (a tight crop) to a
looser frame than the stored one. A face must be named the same however the user framed it."""
FRAMING_SHIFT = 0.12


def augment(
    batch: torch.Tensor, size: int, grayscale_p: float, generator: torch.Generator, manga_p: float = 0.0
) -> torch.Tensor:
    """Drawing-friendly augmentation of a uint8 NHWC batch -> float NCHW at the input size.

    Random framing (zoom in and out, aspect, shift), rotation (+-15 deg) and flip in one affine
    warp; brightness, contrast and saturation jitter but no hue shift (hair colour identifies
    characters); grayscale, and manga-like ink and screentone (`manga_like`); occasional low
    resolution like small faces in a picture.
    """
    images = batch.permute(0, 3, 1, 2).float() / 255.0
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-15, 15) * math.pi / 180
    zoom = torch.exp(uniform(math.log(FRAMING_ZOOM[0]), math.log(FRAMING_ZOOM[1])))
    aspect = torch.exp(uniform(-0.1, 0.1))
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    sx, sy = zoom * aspect * flip, zoom / aspect
    theta = torch.stack(
        [
            torch.stack([sx * torch.cos(angle), -sy * torch.sin(angle), uniform(-FRAMING_SHIFT, FRAMING_SHIFT)], 1),
            torch.stack([sx * torch.sin(angle), sy * torch.cos(angle), uniform(-FRAMING_SHIFT, FRAMING_SHIFT)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    gray = to_gray(images)
    saturation = uniform(0.7, 1.3).view(n, 1, 1, 1)
    images = gray + (images - gray) * saturation
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * uniform(0.75, 1.25).view(n, 1, 1, 1) + mean
    images = images * uniform(0.8, 1.2).view(n, 1, 1, 1)
    turned_gray = (torch.rand(n, generator=generator) < grayscale_p).view(n, 1, 1, 1)
    images = torch.where(turned_gray, to_gray(images), images)
    inked = (torch.rand(n, generator=generator) < manga_p).view(n, 1, 1, 1)
    if bool(inked.any()):
        images = torch.where(inked, manga_like(images, generator), images)
    if float(torch.rand(1, generator=generator)) < 0.2:
        low = int(torch.randint(size // 3, size * 2 // 3, (1,), generator=generator))
        images = F.interpolate(
            F.interpolate(images, size=low, mode="bilinear", antialias=True), size=size, mode="bilinear"
        )
    return images.clamp(0, 1).contiguous()


def manga_like(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A black-and-white print of an NCHW batch: outlines inked black where the luma changes
    sharply, mid tones turned into a dot screen (screentone), light areas paper white, dark ones black."""
    gray = to_gray(images)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    edges = torch.hypot(F.conv2d(padded, sobel.view(1, 1, 3, 3)), F.conv2d(padded, sobel.T.reshape(1, 1, 3, 3)))
    ink = edges > 0.15 + 0.15 * float(torch.rand(1, generator=generator))
    period = 3 + int(torch.randint(0, 4, (1,), generator=generator))
    height, width = gray.shape[-2:]
    rows, columns = (torch.cos(torch.arange(n, dtype=torch.float32) * 2 * math.pi / period) for n in (height, width))
    screen = 0.5 + 0.25 * (rows.view(1, 1, -1, 1) + columns.view(1, 1, 1, -1))
    toned = torch.where(gray > 0.8, 1.0, torch.where(gray < 0.25, 0.0, (gray > screen).float()))
    return torch.where(ink, torch.zeros_like(gray), toned).expand_as(images)


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) of an NCHW batch, broadcastable against the colour images."""
    return images.mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def preprocess(batch: np.ndarray, size: int) -> torch.Tensor:
    """Evaluation-time input: uint8 NHWC -> float NCHW resized to `size`."""
    images = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
