"""Train kyara's anime face detector offline, reproducibly (fixed seed), and export it to ONNX.

    python -m kyara.train.detector --data ../shared/data --out kyara/models/detector.onnx

There is no labelled detection set offline, so training pictures are made on the fly (256 px):
- real illustrations of newgame-illustrations, labelled by animeface-2009 with rotated retries
  (pseudo-labels): confident boxes are faces, unsure ones are left out of the loss. The pictures
  of the hand-checked benchmark (benchmarks/detection_boxes.json) are never used;
- the face crops of holoen-faces, danbooru6-faces, newgame-faces (those cut from benchmark
  pictures excepted) and face-patches pasted, with soft oval edges, onto those illustrations and
  onto mosaics of the non-face patches, at many sizes and tilts, mirrored, and in gray;
- non-face patches pasted the same way, so that a pasted oval is not itself a sign of a face.
The network (`FaceCenterNet`) starts from the anime backbone of the default model.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from kyara.bundle import atomic_write_bytes, default_model_path, load_bundle
from kyara.crop import detect_cached
from kyara.detection import AnimeFaceDetector, CnnDetector, Detector, containment, iou
from kyara.imageio import list_images, load_image
from kyara.train.nets import FaceCenterNet
from kyara.train.trainer import arrays_to_state, onnx_bytes

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "detection_boxes.json"
FACE_FOLDERS = ("holoen-faces", "danbooru6-faces", "newgame-faces")
ILLUSTRATIONS = "newgame-illustrations"
SURE_SCORE = 0.9
"""animeface likelihood from which a pseudo-label counts as a face (precision >= 0.90 on the
benchmark); weaker detections are left out of the loss, neither face nor background."""
TEACHER_SURE_SCORE = 0.5
"""The same for the detector's own faces in self-training; the faces it reports from
TEACHER_MIN_SCORE up to this score are left out of the loss."""
TEACHER_MIN_SCORE, TEACHER_INPUT_SIDE = 0.3, 512
"""How the detector of the round before looks for faces in self-training: the shipped detector was
built with these (CnnDetector's defaults were chosen afterwards, on the benchmark)."""
FACE_IN_CROP = 0.75
"""Side of the face box (hairline to chin) as a share of a face crop's side, judged by eye."""


@dataclass
class DetectorConfig:
    steps: int = 2000  # per round
    rounds: int = 2
    batch_size: int = 16
    canvas: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    min_face: float = 14.0
    max_face: float = 230.0
    tilted_p: float = 0.4
    gray_p: float = 0.15
    seed: int = 0
    threads: int = 2


@dataclass
class Face:
    """A training face: centre and side in canvas pixels, and the angle that stands it upright."""

    cx: float
    cy: float
    side: float
    angle: float | None = None  # unknown for pseudo-labels: animeface only tries a few angles


@dataclass
class Sample:
    image: Image.Image
    faces: list[Face] = field(default_factory=list)
    ignore: list[tuple[float, float, float, float]] = field(default_factory=list)  # x0, y0, x1, y1


def benchmark_files() -> set[str]:
    return set(json.loads(BENCHMARK.read_text())["excluded_from_training"])


def face_crops(data: Path, excluded: set[str]) -> list[Path]:
    """Every face crop of ../shared/data, less those cut out of benchmark pictures."""
    benchmark_names = {Path(name).relative_to(ILLUSTRATIONS).as_posix() for name in excluded}
    crops = [
        path
        for folder in FACE_FOLDERS
        for character in sorted((data / folder).iterdir())
        if character.is_dir()
        for path in list_images(character)
        if not (folder == "newgame-faces" and f"{character.name}/{path.name}" in benchmark_names)
    ]
    return crops + list_images(data / "face-patches" / "face")


@dataclass(frozen=True)
class Label:
    """A pseudo-label: a face box in the picture's pixels; unsure ones are left out of the loss."""

    box: tuple[int, int, int, int]
    sure: bool


def pseudo_labels(data: Path, excluded: set[str], teacher: Detector | None = None) -> list[tuple[Path, list[Label]]]:
    """animeface-2009 (rotated retries, no threshold, cached) on every training illustration; with
    a `teacher` (the detector of the round before: self-training), its faces are added."""
    animeface = AnimeFaceDetector(min_score=0.0)
    files = [
        path
        for character in sorted((data / ILLUSTRATIONS).iterdir())
        if character.is_dir()
        for path in list_images(character)
        if path.relative_to(data).as_posix() not in excluded
    ]
    labelled = []
    for path in tqdm(files, desc="pseudo-labels"):
        image = load_image(path)
        labels = [Label(f.box, f.score >= SURE_SCORE) for f in detect_cached(path, image, animeface)]
        if teacher is not None:
            labels += [Label(f.box, f.score >= TEACHER_SURE_SCORE) for f in teacher.detect(image)]
        labelled.append((path, merged(labels)))
    return labelled


def merged(labels: list[Label]) -> list[Label]:
    """One label per face: sure ones first, then unsure ones that overlap no kept label."""
    kept: list[Label] = []
    for label in sorted(labels, key=lambda item: not item.sure):
        if all(iou(label.box, other.box) < 0.4 and containment(label.box, other.box) < 0.7 for other in kept):
            kept.append(label)
    return kept


def training_patches(data: Path) -> list[Path]:
    """The non-face patches used in training: every tenth is kept back for tests."""
    return [p for i, p in enumerate(list_images(data / "face-patches" / "not-face")) if i % 10]


class SampleMaker:
    """Makes the training pictures described in the module docstring, from one seeded generator."""

    def __init__(
        self, data: Path, config: DetectorConfig, rng: np.random.Generator, teacher: Detector | None = None
    ) -> None:
        excluded = benchmark_files()
        self.config = config
        self.rng = rng
        self.crops = face_crops(data, excluded)
        self.illustrations = pseudo_labels(data, excluded, teacher)
        self.patches = [np.asarray(load_image(p)) for p in training_patches(data)]

    def sample(self) -> Sample:
        kind = self.rng.random()
        if kind < 0.35:
            return self._illustration()
        base = self._illustration() if kind < 0.65 else self._mosaic()
        for _ in range(self.rng.integers(1, 5)):
            self._paste_face(base)
        for _ in range(self.rng.integers(0, 3)):
            self._paste_patch(base)
        return base

    def _illustration(self) -> Sample:
        size = self.config.canvas
        path, labels = self.illustrations[self.rng.integers(len(self.illustrations))]
        original = load_image(path)
        # Pictures are seen with their longer side at 0.6 to 1.5 times 512 px, which covers the
        # 384 px kyara.detection runs at and faces larger and smaller than it meets there.
        scale = max(512 * math.exp(self.rng.uniform(math.log(0.6), math.log(1.5))), size) / max(original.size)
        scale = max(scale, size / min(original.size))
        image = original.resize(
            (round(original.width * scale), round(original.height * scale)), Image.Resampling.BILINEAR
        )
        faces = [(Face(*_centre(label.box, scale), label.box[2] * scale), label.sure) for label in labels]
        sure = [face for face, is_sure in faces if is_sure]
        if sure and self.rng.random() < 0.7:
            face = sure[self.rng.integers(len(sure))]
            left = face.cx - self.rng.uniform(0.15, 0.85) * size
            top = face.cy - self.rng.uniform(0.15, 0.85) * size
        else:
            left, top = self.rng.uniform(0, image.width - size), self.rng.uniform(0, image.height - size)
        left = int(np.clip(left, 0, image.width - size))
        top = int(np.clip(top, 0, image.height - size))
        sample = Sample(image.crop((left, top, left + size, top + size)))
        for face, is_sure in faces:
            moved = Face(face.cx - left, face.cy - top, face.side, face.angle)
            if is_sure:
                sample.faces.append(moved)
            else:
                sample.ignore.append(_box_of(moved))
        return sample

    def _mosaic(self) -> Sample:
        size = self.config.canvas
        cells = int(self.rng.integers(1, 5))
        cell = math.ceil(size / cells)
        canvas = Image.new("RGB", (size, size))
        for row in range(cells):
            for col in range(cells):
                patch = Image.fromarray(self.patches[self.rng.integers(len(self.patches))])
                canvas.paste(patch.resize((cell, cell), Image.Resampling.BILINEAR), (col * cell, row * cell))
        return Sample(canvas)

    def _paste_face(self, sample: Sample) -> None:
        config = self.config
        side = math.exp(self.rng.uniform(math.log(config.min_face), math.log(config.max_face)))
        tilt = float(self.rng.uniform(-75, 75)) if self.rng.random() < config.tilted_p else float(self.rng.normal(0, 5))
        cx, cy = self.rng.uniform(0, config.canvas, size=2)
        crop = load_image(self.crops[self.rng.integers(len(self.crops))])
        # Never blown up more than twice: a blurred face would teach that blur is a face.
        crop_side = max(4, min(round(side / FACE_IN_CROP), 2 * crop.width))
        side = crop_side * FACE_IN_CROP
        box = _box_of(Face(cx, cy, side))
        if any(_overlap(box, other) > 0.15 for other in [_box_of(f) for f in sample.faces] + sample.ignore):
            return
        if self.rng.random() < 0.5:
            crop = ImageOps.mirror(crop)
        # A face sits a little below the middle of its crop (hair above, neck below); the crop's
        # centre is placed so that the face's centre lands on (cx, cy) after turning.
        offset, turn = 0.03 * crop_side, math.radians(tilt)
        resized = crop.resize((crop_side, crop_side), Image.Resampling.BILINEAR)
        _paste_oval(sample.image, resized, cx - offset * math.sin(turn), cy - offset * math.cos(turn), tilt)
        sample.faces.append(Face(cx, cy, side, -tilt))

    def _paste_patch(self, sample: Sample) -> None:
        side = math.exp(self.rng.uniform(math.log(24), math.log(200)))
        cx, cy = self.rng.uniform(0, self.config.canvas, size=2)
        box = _box_of(Face(cx, cy, side))
        if any(_overlap(box, _box_of(face)) > 0.05 for face in sample.faces):
            return
        patch = Image.fromarray(self.patches[self.rng.integers(len(self.patches))]).resize(
            (round(side), round(side)), Image.Resampling.BILINEAR
        )
        _paste_oval(sample.image, patch, cx, cy, float(self.rng.uniform(-45, 45)))

    def augmented(self) -> tuple[np.ndarray, Sample]:
        """`sample()` mirrored half the time, in gray sometimes, with light colour jitter; the
        picture as float32 H x W x 3 in [0, 1]."""
        sample = self.sample()
        if self.rng.random() < 0.5:
            size = self.config.canvas
            sample.image = ImageOps.mirror(sample.image)
            sample.faces = [
                Face(size - f.cx, f.cy, f.side, None if f.angle is None else -f.angle) for f in sample.faces
            ]
            sample.ignore = [(size - x1, y0, size - x0, y1) for x0, y0, x1, y1 in sample.ignore]
        if self.rng.random() < self.config.gray_p:
            sample.image = ImageOps.autocontrast(sample.image.convert("L")).convert("RGB")
        pixels = np.asarray(sample.image, np.float32) / 255
        contrast, brightness = self.rng.uniform(0.8, 1.2), self.rng.uniform(-0.1, 0.1)
        return np.clip((pixels - 0.5) * contrast + 0.5 + brightness, 0, 1), sample


def _centre(box: list[int], scale: float) -> tuple[float, float]:
    x, y, w, h = box
    return (x + w / 2) * scale, (y + h / 2) * scale


def _box_of(face: Face) -> tuple[float, float, float, float]:
    half = face.side / 2
    return face.cx - half, face.cy - half, face.cx + half, face.cy + half


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def _paste_oval(canvas: Image.Image, picture: Image.Image, cx: float, cy: float, tilt: float) -> None:
    """Paste `picture` centred at (cx, cy), turned `tilt` degrees counter-clockwise, through an
    oval mask with soft edges (a square edge would tell the network where a paste is)."""
    side = picture.width
    radius = np.hypot(*np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side)))
    mask = Image.fromarray((np.clip((1 - radius) / 0.25, 0, 1) * 255).astype(np.uint8))
    if abs(tilt) > 0.5:
        picture = picture.rotate(tilt, Image.Resampling.BILINEAR, expand=True)
        mask = mask.rotate(tilt, Image.Resampling.BILINEAR, expand=True)
    canvas.paste(picture, (round(cx - picture.width / 2), round(cy - picture.height / 2)), mask)


def targets(sample: Sample, canvas: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Training targets of one sample, on the output grid (canvas / stride cells a side).

    Returns the target maps (heat, x/y offset, log side, cos, sin) and the loss weights (heat:
    0 in left-out regions; box: 1 at face centres; angle: 1 at centres of faces of known angle)."""
    cells = canvas // stride
    maps = np.zeros((6, cells, cells), np.float32)
    weights = np.zeros((3, cells, cells), np.float32)
    weights[0] = 1
    inside = [f for f in sample.faces if 0 <= f.cx < canvas and 0 <= f.cy < canvas]
    # A face whose centre is cut off teaches nothing, and its visible part is not background.
    cut_off = [_box_of(f) for f in sample.faces if f not in inside]
    for x0, y0, x1, y1 in sample.ignore + cut_off:
        rows = slice(max(0, int(y0 // stride)), max(0, math.ceil(y1 / stride)))
        weights[0, rows, max(0, int(x0 // stride)) : max(0, math.ceil(x1 / stride))] = 0
    grid_y, grid_x = np.mgrid[0:cells, 0:cells]
    for face in inside:
        gx, gy = face.cx / stride, face.cy / stride
        ix, iy = int(gx), int(gy)
        sigma = max(0.6, 0.12 * face.side / stride)
        heat = np.exp(-((grid_x - ix) ** 2 + (grid_y - iy) ** 2) / (2 * sigma**2))
        maps[0] = np.maximum(maps[0], heat)
        weights[0][heat > 0.01] = 1
        maps[1:4, iy, ix] = gx - ix, gy - iy, math.log(face.side / stride)
        weights[1, iy, ix] = 1
        if face.angle is not None:
            maps[4:, iy, ix] = math.cos(math.radians(face.angle)), math.sin(math.radians(face.angle))
            weights[2, iy, ix] = 1
    return maps, weights


def detection_loss(output: torch.Tensor, maps: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """CenterNet's focal loss on the heat map plus L1 on offsets, sizes and angles at centres."""
    logits, target, heat_weight, centre = output[:, 0], maps[:, 0], weights[:, 0], weights[:, 1]
    positive = (target == 1).float()
    probability = torch.sigmoid(logits)
    focal = -(
        positive * (1 - probability) ** 2 * F.logsigmoid(logits)
        + (1 - positive) * heat_weight * (1 - target) ** 4 * probability**2 * F.logsigmoid(-logits)
    ).sum() / positive.sum().clamp(min=1)
    error = (output[:, 1:] - maps[:, 1:]).abs()
    box = (error[:, :3] * centre.unsqueeze(1)).sum() / centre.sum().clamp(min=1)
    angle = (error[:, 3:] * weights[:, 2:]).sum() / weights[:, 2].sum().clamp(min=1)
    return {"heat": focal, "box": box, "angle": angle, "total": focal + box + 0.5 * angle}


def build_detector_net() -> FaceCenterNet:
    """A FaceCenterNet whose backbone starts from the default model's anime backbone."""
    net = FaceCenterNet()
    weights = load_bundle(default_model_path()).weights
    anime = {k.removeprefix("backbone."): v for k, v in arrays_to_state(weights).items() if k.startswith("backbone.")}
    net.backbone.load_state_dict(anime)
    return net


FROZEN_STAGES = 4
"""The first backbone stages (down to stride 4) keep the default model's weights: they see edges and
strokes, which need no new learning, and their backward pass is the costliest on a CPU."""


def _freeze_stem(net: FaceCenterNet) -> None:
    for module in net.backbone.features[:FROZEN_STAGES]:
        module.requires_grad_(False)
        module.eval()


def _learning_rate(step: int, config: DetectorConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_detector(data: Path, config: DetectorConfig, checkpoints: Path, log: Path | None = None) -> FaceCenterNet:
    """All rounds of training: the first from animeface's pseudo-labels, each later one also from
    the faces the detector of the round before finds (self-training), starting from its weights.
    A round goes on from its checkpoint (`checkpoints`/round-N.pt) when there is one."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    net = build_detector_net()
    teacher = None
    for round_ in range(1, config.rounds + 1):
        maker = SampleMaker(data, config, np.random.default_rng([config.seed, round_]), teacher)
        labels = [label for _, found in maker.illustrations for label in found]
        sure = sum(label.sure for label in labels)
        tqdm.write(
            f"round {round_}: {len(maker.illustrations)} illustrations with {sure} sure and "
            f"{len(labels) - sure} unsure faces, {len(maker.crops)} face crops, {len(maker.patches)} non-face patches"
        )
        net = _train_round(net, maker, checkpoints / f"round-{round_}.pt", log, round_)
        teacher = CnnDetector(TEACHER_INPUT_SIDE, TEACHER_MIN_SCORE, model=export_detector(net))
    return net


def _train_round(
    net: FaceCenterNet, maker: SampleMaker, checkpoint: Path, log: Path | None, round_: int
) -> FaceCenterNet:
    config, rng = maker.config, maker.rng
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["config"] != asdict(config):
            raise SystemExit(f"{checkpoint} was made with other settings; remove it to start again")
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
    net.train()
    _freeze_stem(net)
    progress = tqdm(range(step, config.steps), initial=step, total=config.steps, desc=f"detector round {round_}")
    started = time.monotonic()
    for step in progress:
        pictures, samples = zip(*(maker.augmented() for _ in range(config.batch_size)), strict=True)
        images = torch.from_numpy(np.stack(pictures).transpose(0, 3, 1, 2).copy())
        maps, weights = zip(*(targets(s, config.canvas, FaceCenterNet.stride) for s in samples), strict=True)
        losses = detection_loss(net(images), torch.from_numpy(np.stack(maps)), torch.from_numpy(np.stack(weights)))
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, config)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        progress.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
        if log is not None:
            record = {"round": round_, "step": step + 1, "seconds": round(time.monotonic() - started, 1)}
            with log.open("a") as out:
                out.write(json.dumps(record | {k: round(v.item(), 4) for k, v in losses.items()}) + "\n")
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            _save_checkpoint(checkpoint, net, optimizer, rng, step + 1, config)
    return net


def _save_checkpoint(path: Path, net, optimizer, rng: np.random.Generator, step: int, config: DetectorConfig) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "net": net.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "step": step,
            "config": asdict(config),
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def export_detector(net: FaceCenterNet) -> bytes:
    """The detector as ONNX: input `image` float32 1 x 3 x H x W in [0, 1] (sides multiples of 32)."""
    dynamic_axes = {"image": {2: "height", 3: "width"}, "maps": {2: "rows", 3: "columns"}}
    return onnx_bytes(net, torch.zeros(1, 3, 512, 512), "maps", dynamic_axes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("kyara/models/detector.onnx"))
    parser.add_argument("--checkpoints", type=Path, default=Path("build/detector-checkpoints"))
    parser.add_argument("--log", type=Path, default=Path("build/detector-train.jsonl"))
    parser.add_argument("--steps", type=int, default=DetectorConfig.steps)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = DetectorConfig(steps=args.steps, seed=args.seed)
    net = train_detector(args.data, config, args.checkpoints, args.log)
    atomic_write_bytes(args.out, export_detector(net))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
