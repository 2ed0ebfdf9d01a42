"""The embedding a fine-tuned model exports: whitened backbone features, not the trained layer.

Training shapes the backbone with a cosine-margin head (trainer.py). That head and the layer under
it are fitted to the training characters only, and squeeze every other character towards them:
with five characters held out of training (docs/heldout-characters.md), the backbone's pooled
features told the new characters apart far better than the trained 256-d layer (5-shot top-1
0.93 against 0.87; after enrolling five pictures, 0.90 against 0.75 with every known character
competing). So the exported embedder is:
- the unit-length pooled features of the face plus those of its mirror image (a drawing and its
  mirror show the same character);
- centred, and projected on the top principal axes of the training faces' features, each axis
  divided by its spread to the power `WHITENING_POWER`. Partial whitening lifts the fine
  directions that separate look-alikes; full whitening (power 0.5) also lifts noise and costs
  known characters accuracy;
- L2-normalised. A trained character is the normalised mean of its training faces' embeddings.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kyara.train.augment import preprocess
from kyara.train.trainer import EmbeddingNet

READOUT_DIM = 256
WHITENING_POWER = 0.3
SHRINKAGE = 0.01
"""Share of the covariance replaced by its mean variance, so a few hundred faces whiten safely."""


class FeatureEmbedder(nn.Module):
    """RGB in [0, 1], NCHW -> unit-length whitened features (see the module's docstring)."""

    def __init__(self, net: EmbeddingNet, centre: torch.Tensor, basis: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("centre", centre)
        self.register_buffer("basis", basis)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.whiten(mirrored_features(self.net, images))

    def whiten(self, features: torch.Tensor) -> torch.Tensor:
        """Mirrored pooled features -> the unit-length embedding."""
        return F.normalize((features - self.centre) @ self.basis, dim=1)


def mirrored_features(net: EmbeddingNet, images: torch.Tensor) -> torch.Tensor:
    """Unit pooled backbone features of each face plus those of its mirror image."""
    both = torch.cat([images, images.flip(3)])
    features = F.normalize(net.backbone((both - net.mean) / net.std), dim=1)
    # A reshape, not slicing by len(images): the ONNX export must keep the batch size dynamic.
    return features.reshape(2, -1, features.shape[1]).sum(0)


@torch.no_grad()
def fit_readout(
    net: EmbeddingNet, pixels: np.ndarray, size: int, batch_size: int = 128
) -> tuple[FeatureEmbedder, np.ndarray]:
    """The whitening of `net`'s features fitted on the training faces `pixels` (uint8 NHWC), and
    those faces' embeddings (computed here once, as the features are at hand)."""
    net.eval()
    starts = range(0, len(pixels), batch_size)
    features = torch.cat([mirrored_features(net, preprocess(pixels[i : i + batch_size], size)) for i in starts])
    features = features.double()
    centre = features.mean(0)
    covariance = torch.cov((features - centre).T, correction=0)
    spread = covariance.diagonal().mean().clamp_min(1e-12)
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * spread * torch.eye(len(covariance), dtype=covariance.dtype)
    variances, axes = torch.linalg.eigh(covariance)  # ascending
    keep = min(READOUT_DIM, len(variances))
    variances, axes = variances.flip(0)[:keep], axes.flip(1)[:, :keep]
    basis = axes / variances.clamp_min(1e-12) ** WHITENING_POWER
    # With fewer faces than dimensions, the last axes only span the shrinkage: they are arbitrary
    # and whitening would inflate them, so they get no weight (the embedding keeps its size).
    basis[:, variances <= 1.5 * SHRINKAGE * spread] = 0.0
    # An eigenvector's sign is arbitrary; fix it so the same data always gives the same model.
    basis = basis * torch.where(basis[basis.abs().argmax(0), torch.arange(keep)] < 0, -1.0, 1.0)
    embedder = FeatureEmbedder(net, centre.float(), basis.float()).eval()
    return embedder, embedder.whiten(features.float()).numpy()
