"""What the network is shown: training pictures augmented for drawings, and evaluation-time input."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def augment(batch: torch.Tensor, size: int, grayscale_p: float, generator: torch.Generator) -> torch.Tensor:
    """Drawing-friendly augmentation of a uint8 NHWC batch -> float NCHW at the input size.

    Random zoom (in and out), aspect, shift, rotation (+-15 deg) and flip in one affine warp;
    brightness, contrast and saturation jitter but no hue shift (hair colour identifies
    characters); grayscale for manga; occasional low resolution like small faces in a picture.
    """
    images = batch.permute(0, 3, 1, 2).float() / 255.0
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-15, 15) * math.pi / 180
    zoom = torch.exp(uniform(math.log(0.8), math.log(1.2)))
    aspect = torch.exp(uniform(-0.1, 0.1))
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    sx, sy = zoom * aspect * flip, zoom / aspect
    theta = torch.stack(
        [
            torch.stack([sx * torch.cos(angle), -sy * torch.sin(angle), uniform(-0.08, 0.08)], 1),
            torch.stack([sx * torch.sin(angle), sy * torch.cos(angle), uniform(-0.08, 0.08)], 1),
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
    if float(torch.rand(1, generator=generator)) < 0.2:
        low = int(torch.randint(size // 3, size * 2 // 3, (1,), generator=generator))
        images = F.interpolate(
            F.interpolate(images, size=low, mode="bilinear", antialias=True), size=size, mode="bilinear"
        )
    return images.clamp(0, 1).contiguous()


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601) of an NCHW batch, broadcastable against the colour images."""
    return images.mul(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


def preprocess(batch: np.ndarray, size: int) -> torch.Tensor:
    """Evaluation-time input: uint8 NHWC -> float NCHW resized to `size`."""
    images = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
