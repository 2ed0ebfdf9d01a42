"""Fine-tune a backbone into an anime-face embedder with a cosine-margin head (CosFace).

The head's rows are unit vectors in the embedding space of the trained layer. A `linear` model
ships that layer and head; a fine-tuned one ships whitened backbone features instead
(readout.py). Optional outlier
exposure (faces of other characters pushed towards a uniform prediction) teaches the model to give
low similarity to characters it does not know.
"""

from __future__ import annotations

import copy
import hashlib
import io
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from kyara.bundle import atomic_write_bytes
from kyara.errors import KyaraError
from kyara.train.augment import augment, preprocess, to_gray
from kyara.train.data import DEFAULT_GRAYSCALE_P, LabelledImages
from kyara.train.nets import BACKBONES

LINEAR_EPOCHS = 30
"""Passes of `linear` training over cached features: each takes well under a second."""


@dataclass
class TrainConfig:
    backbone: str = "mobilenetv2"
    mode: str = "finetune"  # or "linear": frozen backbone, only the embedding and head learn
    input_size: int = 128
    embedding_dim: int = 256
    epochs: int = 10
    patience: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    backbone_lr: float = 5e-4
    weight_decay: float = 0.02
    margin: float = 0.25
    scale: float = 30.0
    ood_batch_size: int = 16
    ood_weight: float = 0.5
    grayscale_p: float = DEFAULT_GRAYSCALE_P
    manga_p: float = 0.0
    steps_per_epoch: int = 0  # 0: one pass over the training pictures
    balance: float = 0.0  # pictures drawn with weight count**-balance: 0 as they come, 1 evenly per character
    singles_share: float = 0.0  # share of draws for characters of one picture each; 0: as `balance` has it
    seed: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.singles_share < 1:
            raise KyaraError(f"singles_share is a share of the draws, 0 or more and under 1, not {self.singles_share}")


class EmbeddingNet(nn.Module):
    """RGB in [0, 1], NCHW -> unit-length embedding."""

    def __init__(self, backbone: nn.Module, out_features: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.project = nn.Linear(out_features, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.register_buffer("mean", torch.tensor(backbone.input_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.input_std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone((images - self.mean) / self.std)
        return F.normalize(self.norm(self.project(features)), dim=1)


@dataclass
class TrainResult:
    net: EmbeddingNet
    head: np.ndarray
    history: list[dict]
    config: TrainConfig
    seconds: float


def build_net(config: TrainConfig, imagenet: bool = True) -> EmbeddingNet:
    backbone = BACKBONES[config.backbone]()
    if imagenet:
        backbone.load_imagenet()
    return EmbeddingNet(backbone, backbone.out_features, config.embedding_dim)


def train(
    data: LabelledImages,
    val: LabelledImages,
    config: TrainConfig,
    outliers: np.ndarray | None = None,
    start: dict[str, torch.Tensor] | None = None,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train on `data` and keep the epoch with the best accuracy on `val` (early stopping).

    `start` replaces the ImageNet weights (e.g. the anime network of an existing model). With
    `checkpoint`, the state is saved after every epoch and a matching checkpoint is resumed.
    """
    check_checkpoint_use(config, checkpoint)
    if config.mode == "linear":
        return train_linear(data, val, config, start)
    if config.mode != "finetune":
        raise KyaraError(f"unknown training mode {config.mode!r} (finetune or linear)")
    net, generator = _start(config, start)
    head = nn.Parameter(F.normalize(torch.randn(len(data.classes), config.embedding_dim, generator=generator), dim=1))
    optimizer = _optimizer(net, head, config)
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(len(data.labels) / config.batch_size))
    total_steps = max(4, config.epochs * steps_per_epoch)
    # OneCycleLR divides by zero when its warm-up phase is a single step.
    warm_up = min(0.5, max(0.1, 2 / total_steps))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, [g["lr"] for g in optimizer.param_groups], total_steps=total_steps, pct_start=warm_up
    )
    state = {"epoch": 0, "history": [], "best_accuracy": -1.0, "best": None, "stale": 0, "seconds": 0.0}
    if checkpoint is not None and checkpoint.exists():
        saved = _load_checkpoint(checkpoint, config, data)
        net.load_state_dict(saved["net"])
        head.data = saved["head"]
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        generator.set_state(saved["generator"])
        state = saved["state"]
    pixels, labels = torch.from_numpy(data.pixels), torch.from_numpy(data.labels)
    started = time.time() - state["seconds"]
    while state["epoch"] < config.epochs and state["stale"] < config.patience:
        epoch = state["epoch"] + 1
        net.train()
        order = _epoch_order(data.labels, steps_per_epoch * config.batch_size, config, generator)
        losses = []
        for step in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", leave=False):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            if len(batch) < 2:
                continue  # batch norm cannot train on a single picture
            images = augment(pixels[batch], config.input_size, config.grayscale_p, generator, config.manga_p)
            use_outliers = outliers is not None and config.ood_weight > 0
            if use_outliers:
                pick = torch.randint(len(outliers), (config.ood_batch_size,), generator=generator)
                # One forward pass for both, so batch-norm statistics describe the mix seen at
                # test time rather than whichever small batch came last.
                others = torch.from_numpy(outliers[pick.numpy()])
                others = augment(others, config.input_size, config.grayscale_p, generator, config.manga_p)
                images = torch.cat([images, others])
            embeddings = net(images)
            loss = _classification_loss(embeddings[: len(batch)], head, labels[batch], config)
            if use_outliers:
                loss = loss + config.ood_weight * _outlier_loss(embeddings[len(batch) :], head, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                head.data = F.normalize(head.data, dim=1)
            losses.append(float(loss.detach()))
        accuracy = accuracy_of(net, head.detach(), val, config.input_size) if len(val.labels) else None
        state["seconds"] = time.time() - started
        state["history"].append(
            {"epoch": epoch, "loss": float(np.mean(losses)), "val_top1": accuracy, "seconds": state["seconds"]}
        )
        print(
            f"epoch {epoch}: loss {np.mean(losses):.3f} "
            f"val top-1 {accuracy if accuracy is None else round(accuracy, 4)} ({state['seconds']:.0f} s)",
            flush=True,
        )
        # Without validation images, the last epoch is the one kept.
        if accuracy is None or accuracy > state["best_accuracy"]:
            state.update(best_accuracy=accuracy, best=(copy.deepcopy(net.state_dict()), head.detach().clone()), stale=0)
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        if checkpoint is not None:
            _save_checkpoint(checkpoint, config, data, net, head, optimizer, schedule, generator, state)
    net.load_state_dict(state["best"][0])
    net.eval()
    return TrainResult(net, state["best"][1].numpy(), state["history"], config, state["seconds"])


def _epoch_order(labels: np.ndarray, count: int, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """The pictures of one epoch, in order: a permutation when `config.balance` is 0 and `count` is
    the number of pictures; else `count` draws weighted by each character's count**-balance, so
    characters with hundreds of pictures do not crowd out those with forty. Characters of a single
    picture (identities that teach the embedding to tell characters apart, thousands of them) get
    `config.singles_share` of the draws, where it is set, rather than crowding out the others."""
    if config.balance == 0 and config.singles_share == 0 and count >= len(labels):
        return torch.randperm(len(labels), generator=generator)
    counts = np.bincount(labels)[labels]
    weights = counts.astype(np.float64) ** -config.balance
    single = counts == 1
    if config.singles_share > 0 and single.any() and not single.all():
        share = config.singles_share / (1 - config.singles_share)
        weights[single] *= share * weights[~single].sum() / weights[single].sum()
    # Without replacement each single picture could be drawn once, and the share would not be reached.
    replacement = count > len(labels) or config.singles_share > 0
    return torch.multinomial(torch.from_numpy(weights), count, replacement=replacement, generator=generator)


def _start(config: TrainConfig, start: dict[str, torch.Tensor] | None) -> tuple[EmbeddingNet, torch.Generator]:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    net = build_net(config, imagenet=start is None)
    if start is not None:
        net.load_state_dict(start)
    return net, torch.Generator().manual_seed(config.seed)


def train_linear(
    data: LabelledImages, val: LabelledImages, config: TrainConfig, start: dict[str, torch.Tensor] | None = None
) -> TrainResult:
    """MoeFlow's method (TensorFlow's retrain.py): the backbone is frozen and its features are
    computed once; only the embedding layer (linear, with batch norm) and the cosine softmax head
    learn, on the cached features. Augmentation is limited to grayscale copies: flips and crops
    would need the backbone run again each epoch."""
    net, generator = _start(config, start)
    started = time.time()
    grayscale = torch.rand(len(data.labels), generator=generator) < config.grayscale_p
    features = backbone_features(net, data.pixels, config.input_size, grayscale)
    val_features = backbone_features(net, val.pixels, config.input_size)
    tail = nn.Sequential(net.project, net.norm)
    head = nn.Parameter(F.normalize(torch.randn(len(data.classes), config.embedding_dim, generator=generator), dim=1))
    optimizer = torch.optim.AdamW([*tail.parameters(), head], lr=config.lr, weight_decay=config.weight_decay)
    labels = torch.from_numpy(data.labels)
    history, best, best_accuracy, stale = [], None, -1.0, 0
    for epoch in range(1, LINEAR_EPOCHS + 1):
        tail.train()
        order = torch.randperm(len(labels), generator=generator)
        losses = []
        for step in range(0, len(order), config.batch_size):
            batch = order[step : step + config.batch_size]
            if len(batch) < 2:
                continue
            loss = _classification_loss(F.normalize(tail(features[batch]), dim=1), head, labels[batch], config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                head.data = F.normalize(head.data, dim=1)
            losses.append(float(loss.detach()))
        tail.eval()
        accuracy = None
        if len(val.labels):
            with torch.no_grad():
                scores = F.normalize(tail(val_features), dim=1) @ head.detach().T
            accuracy = float((scores.argmax(1).numpy() == val.labels).mean())
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_top1": accuracy})
        if accuracy is None or accuracy > best_accuracy:
            best, best_accuracy, stale = (copy.deepcopy(tail.state_dict()), head.detach().clone()), accuracy, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    tail.load_state_dict(best[0])
    net.eval()
    return TrainResult(net, best[1].numpy(), history, config, time.time() - started)


@torch.no_grad()
def backbone_features(
    net: EmbeddingNet, pixels: np.ndarray, size: int, grayscale: torch.Tensor | None = None, batch_size: int = 64
) -> torch.Tensor:
    """Pooled backbone features of uint8 NHWC pixels; rows flagged in `grayscale` are turned gray first."""
    net.eval()
    chunks = []
    for i in tqdm(range(0, len(pixels), batch_size), desc="features", leave=False):
        images = preprocess(pixels[i : i + batch_size], size)
        if grayscale is not None:
            images = torch.where(grayscale[i : i + batch_size].view(-1, 1, 1, 1), to_gray(images), images)
        chunks.append(net.backbone((images - net.mean) / net.std))
    return torch.cat(chunks) if chunks else torch.zeros(0, net.project.in_features)


def check_checkpoint_use(config: TrainConfig, checkpoint: Path | None) -> None:
    if checkpoint is not None and config.mode == "linear":
        raise KyaraError("checkpoints apply to finetune mode; linear training takes about a minute")


def _load_checkpoint(path: Path, config: TrainConfig, data: LabelledImages) -> dict:
    """A checkpoint of this very run (settings, characters and training pictures), or a clear error."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        reason = str(exc) or type(exc).__name__  # an empty file raises an EOFError without words
        raise KyaraError(f"{path} is not a readable kyara checkpoint ({reason}); delete it to start afresh") from exc
    expected = {"config": asdict(config), "classes": data.classes, "pictures": _fingerprint(data)}
    if not isinstance(saved, dict) or any(saved.get(key) != value for key, value in expected.items()):
        if isinstance(saved, dict) and _only_epochs_differ(saved, expected):
            # The learning-rate schedule spans the epochs asked for, so a run cannot be lengthened.
            raise KyaraError(
                f"{path} resumes a run of {saved['config']['epochs']} epochs, not {config.epochs}: "
                f"resume it with --epochs {saved['config']['epochs']}, or delete it to start afresh; "
                "to train a finished model further, start from it (kyara train --from MODEL.kyara)"
            )
        raise KyaraError(f"{path} was made with other settings, characters or pictures; delete it to start afresh")
    return saved


def _only_epochs_differ(saved: dict, expected: dict) -> bool:
    """Whether the checkpoint `saved` is of the run `expected` describes but for its epochs."""
    config = saved.get("config")
    return (
        isinstance(config, dict)
        and {**config, "epochs": expected["config"]["epochs"]} == expected["config"]
        and all(saved.get(key) == expected[key] for key in ("classes", "pictures"))
    )


def _fingerprint(data: LabelledImages) -> str:
    """Which pictures, labelled how: a resumed run must see the same epochs."""
    digest = hashlib.sha256(data.labels.astype(np.int64).tobytes())
    digest.update(data.pixels[:, ::16, ::16].tobytes())
    return digest.hexdigest()


def _save_checkpoint(path: Path, config, data, net, head, optimizer, schedule, generator, state) -> None:
    checkpoint = {
        "config": asdict(config),
        "classes": data.classes,
        "pictures": _fingerprint(data),
        "net": net.state_dict(),
        "head": head.detach().clone(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "generator": generator.get_state(),
        "state": state,
    }
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _optimizer(net: EmbeddingNet, head: nn.Parameter, config: TrainConfig) -> torch.optim.Optimizer:
    own = [*net.project.parameters(), *net.norm.parameters(), head]
    groups = [{"params": own, "lr": config.lr}, {"params": list(net.backbone.parameters()), "lr": config.backbone_lr}]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _classification_loss(
    embeddings: torch.Tensor, head: torch.Tensor, labels: torch.Tensor, config: TrainConfig
) -> torch.Tensor:
    cosine = embeddings @ F.normalize(head, dim=1).T
    margin = F.one_hot(labels, cosine.shape[1]) * config.margin
    return F.cross_entropy(config.scale * (cosine - margin), labels)


def _outlier_loss(embeddings: torch.Tensor, head: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """Cross-entropy to the uniform distribution: other characters should match no class."""
    cosine = embeddings @ F.normalize(head, dim=1).T
    return -F.log_softmax(config.scale * cosine, dim=1).mean()


@torch.no_grad()
def embed_pixels(net: nn.Module, pixels: np.ndarray, size: int, batch_size: int = 128) -> np.ndarray:
    """Embeddings of uint8 NHWC pixels by an embedder (`EmbeddingNet` or an exported readout)."""
    net.eval()
    starts = range(0, max(1, len(pixels)), batch_size)  # an empty input still yields the dimension
    return np.concatenate([net(preprocess(pixels[i : i + batch_size], size)).numpy() for i in starts])


def accuracy_of(net: EmbeddingNet, head: torch.Tensor, data: LabelledImages, size: int) -> float:
    if len(data.labels) == 0:
        return float("nan")
    predictions = (embed_pixels(net, data.pixels, size) @ head.numpy().T).argmax(1)
    return float((predictions == data.labels).mean())


def export_onnx(net: nn.Module, size: int) -> bytes:
    """The embedder as ONNX: input `image` float32 N x 3 x size x size in [0, 1], RGB."""
    dynamic_axes = {"image": {0: "batch"}, "embedding": {0: "batch"}}
    return onnx_bytes(net, torch.zeros(1, 3, size, size), "embedding", dynamic_axes)


def onnx_bytes(net: nn.Module, example: torch.Tensor, output: str, dynamic_axes: dict) -> bytes:
    """`net` in eval mode as ONNX (opset 17), with one input named `image` shaped like `example`."""
    net.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but still the one that needs no onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            example,
            buffer,
            input_names=["image"],
            output_names=[output],
            dynamic_axes=dynamic_axes,
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def state_to_arrays(net: EmbeddingNet) -> dict[str, np.ndarray]:
    """The network's weights as float16 arrays, for a model bundle (no pickle involved)."""
    return {
        name: value.detach().numpy().astype(np.float16 if value.is_floating_point() else value.numpy().dtype)
        for name, value in net.state_dict().items()
    }


def arrays_to_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        name: torch.from_numpy(np.asarray(value, np.float32 if value.dtype == np.float16 else value.dtype))
        for name, value in arrays.items()
    }
