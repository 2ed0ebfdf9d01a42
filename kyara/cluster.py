"""Group the faces of unlabelled pictures by character, ready to be named into a training set.

Pictures give their faces as training takes them (`cut.cuts_to_train`: a small, nearly square
picture is one face, taken whole without detecting). Faces are embedded with the model and grouped
by average-linkage agglomerative clustering on cosine distance, cut at a distance threshold: no
number of characters to guess, and a face joins a group only when it is close to the group as a
whole, not to a single look-alike. Groups smaller than `min_size` are noise. `write_clusters`
writes one folder per group (largest first) plus `noise/`, and `clusters.json` with where every
face came from and the model's guess for each group. How pure the groups are is measured by
benchmarks/cluster_quality.py, with tests/clustering_scores.py.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from kyara.bundle import ModelBundle
from kyara.crop import training_cuts
from kyara.cut import FaceCut, drawn_gray
from kyara.detection import Detector
from kyara.errors import KyaraError, count
from kyara.imageio import check_utf8, lies_in, load_image, resolved, shortened
from kyara.pipeline import Model, Recognizer

DEFAULT_THRESHOLD = 0.75
"""Cosine distance at which groups stop merging, measured in docs/collection.md for fine-tuned
models (whitened features)."""
TRAINED_LAYER_THRESHOLD = 0.5
"""The same for a `linear` model, whose trained layer packs faces tighter (docs/collection.md)."""
DEFAULT_MIN_SIZE = 3
MAX_FACES = 20_000
"""Agglomerative clustering keeps every pairwise distance: 20,000 faces take 1.6 GB."""
SUMMARY = "clusters.json"
NOISE = "noise"
CLUSTER_FOLDER = re.compile(r"cluster-\d{3,}")
EMBED_BATCH = 64


@dataclass(frozen=True)
class FaceRef:
    """One face: the picture itself (`number` 0, a face crop) or its `number`-th face, most
    confident first. `guess` is the model's label for it (None: unknown)."""

    source: Path
    number: int
    guess: str | None


@dataclass
class FaceSet:
    faces: list[FaceRef]
    embeddings: np.ndarray
    unreadable: list[str] = field(default_factory=list)
    without_face: list[str] = field(default_factory=list)


@dataclass
class ClusterSummary:
    target: str
    faces: int
    clusters: list[dict]
    """One entry per folder: name, size, the model's most frequent guess, and the members."""
    noise: int
    unreadable: list[str]
    without_face: list[str]

    def to_dict(self) -> dict:
        """The summary without the member lists (those are in clusters.json)."""
        return {**asdict(self), "clusters": [{k: v for k, v in c.items() if k != "members"} for c in self.clusters]}


def embed_faces(recognizer: Recognizer, paths: Sequence[Path], progress: bool = True) -> FaceSet:
    """Every face of every picture, embedded (detections are cached per file content)."""
    face_set = FaceSet([], np.zeros((0, recognizer.embedder.dim), np.float32))
    chunks = [face_set.embeddings]
    pending: list[tuple[Path, int, FaceCut]] = []

    def flush() -> None:
        vectors = recognizer.embed([cut for _, _, cut in pending])
        predictions = recognizer.classify(vectors, top_k=1, gray=drawn_gray([cut for _, _, cut in pending]))
        face_set.faces += [FaceRef(path, number, p.label) for (path, number, _), p in zip(pending, predictions)]
        chunks.append(vectors)
        pending.clear()
        if len(face_set.faces) > MAX_FACES:  # said now, not after hours of detection
            raise KyaraError(f"more than {MAX_FACES} faces: more than clustering handles here; split the pictures")

    for path in tqdm(paths, desc="embedding faces", unit="picture", disable=not progress):
        try:
            check_utf8(Path(path))  # clusters.json names every source
            picture = recognizer.load(path)
        except KyaraError as exc:  # an unreadable picture (ImageError) or name
            face_set.unreadable.append(str(exc))
            continue
        cuts = training_cuts(Path(path), picture, recognizer.detector)
        if not cuts:
            face_set.without_face.append(str(path))
        pending += [(Path(path), 0 if cut.whole else number, cut) for number, cut in enumerate(cuts, 1)]
        if len(pending) >= EMBED_BATCH:
            flush()
    flush()
    face_set.embeddings = np.concatenate(chunks)
    return face_set


def cluster_folder(
    pictures: Sequence[str | os.PathLike],
    target: Path,
    model: Model = None,
    threshold: float | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    force: bool = False,
    progress: bool = True,
) -> ClusterSummary:
    """`kyara cluster`: group the faces of `pictures` (files; an earlier run's output among them
    is left out) and write the groups under `target`. `threshold`: the model's default cut
    (`threshold_for`). Nothing is written when no face is found (the summary counts 0 faces)."""
    if isinstance(pictures, str | os.PathLike):
        raise KyaraError(f"give the pictures as a list of files, not one {type(pictures).__name__}")
    min_size = count(min_size, "min_size")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 2
    ):
        raise KyaraError(f"threshold is a cosine distance, above 0 and at most 2, not {threshold!r}")
    check_target(target, force)
    hierarchy()  # said now, not after hours of embedding
    written = resolved(target)
    outside = [Path(p) for p in pictures if not lies_in(p, written)]
    if pictures and not outside:
        raise KyaraError(f"every picture given is inside {target}, where the clusters go: write them elsewhere")
    recognizer = model if isinstance(model, Recognizer) else Recognizer(model)
    face_set = embed_faces(recognizer, outside, progress)
    if not face_set.faces:
        return ClusterSummary(str(target), 0, [], 0, face_set.unreadable, face_set.without_face)
    cut = threshold_for(recognizer.bundle) if threshold is None else threshold
    groups = cluster_faces(face_set.embeddings, cut, min_size)
    return write_clusters(face_set, groups, target, recognizer.detector, force)


def threshold_for(bundle: ModelBundle) -> float:
    """The default cut for the embedding `bundle` exports: a `linear` model ships its trained layer."""
    mode = bundle.metadata.get("training", {}).get("config", {}).get("mode")
    return TRAINED_LAYER_THRESHOLD if mode == "linear" else DEFAULT_THRESHOLD


def hierarchy():
    """scipy's `linkage` and `fcluster`, or a clear error (check it before hours of embedding)."""
    try:
        from scipy.cluster.hierarchy import fcluster, linkage
    except ImportError as exc:
        raise KyaraError(f"clustering needs the index extra: pip install 'kyara[index]' ({exc})") from exc
    return linkage, fcluster


def cluster_faces(
    embeddings: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_size: int = DEFAULT_MIN_SIZE
) -> np.ndarray:
    """A group number per face (0 = the largest group, ...), -1 for noise (groups under `min_size`)."""
    linkage, fcluster = hierarchy()
    total = len(embeddings)
    if total > MAX_FACES:
        raise KyaraError(f"{total} faces is more than agglomerative clustering handles here ({MAX_FACES}); split them")
    if total < 2:
        return np.full(total, 0 if total >= min_size else -1)
    tree = linkage(np.asarray(embeddings, np.float64), method="average", metric="cosine")
    groups = fcluster(tree, t=threshold, criterion="distance")
    sizes = Counter(groups.tolist())
    kept = [group for group, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])) if size >= min_size]
    number = {group: n for n, group in enumerate(kept)}
    return np.array([number.get(group, -1) for group in groups.tolist()])


def write_clusters(
    face_set: FaceSet, assignment: np.ndarray, target: Path, detector: Detector, force: bool = False
) -> ClusterSummary:
    """Write `cluster-001/`, ... and `noise/` under `target`, plus `clusters.json`. Face crops are
    copied as they are; faces of illustrations are cut again (cached detections) and saved as PNG.
    Everything is written beside `target` first and moved in at the end."""
    check_target(target, force)
    staging = _staging(target)
    try:
        clusters, noise = _write_faces(face_set, assignment, staging, detector)
        summary = ClusterSummary(
            str(target), len(face_set.faces), clusters, len(noise), face_set.unreadable, face_set.without_face
        )
        document = {**summary.to_dict(), "clusters": clusters, "noise": noise}
        (staging / SUMMARY).write_text(json.dumps(document, ensure_ascii=False, indent=2), encoding="utf-8")
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def check_target(target: Path, force: bool) -> None:
    """Refuse a target that is a file or a link, a non-empty folder without `force`, or a place
    where nothing can be written (before any face is embedded)."""
    check_utf8(target)  # clusters.json names it
    if target.is_symlink():
        raise KyaraError(f"{target}: is a link; give the folder it points to")
    if target.exists() and not target.is_dir():
        raise KyaraError(f"{target}: exists and is not a folder")
    _staging(target).rmdir()
    if target.is_dir() and any(target.iterdir()) and not force:
        raise KyaraError(f"{target}: not empty; pass --force to replace its clusters")


def _write_faces(
    face_set: FaceSet, assignment: np.ndarray, staging: Path, detector: Detector
) -> tuple[list[dict], list[dict]]:
    folders = [f"cluster-{n + 1:03d}" for n in range(int(assignment.max(initial=-1)) + 1)]
    members: dict[str, list[dict]] = {folder: [] for folder in [*folders, NOISE]}
    source, cuts = None, []
    for index, (face, group) in enumerate(zip(face_set.faces, assignment.tolist())):
        folder = folders[group] if group >= 0 else NOISE
        (staging / folder).mkdir(exist_ok=True)
        # The index keeps names unique when two folders hold pictures of the same name.
        name = f"{index:05d}-{shortened(face.source.stem)}"
        if face.number == 0:
            name += face.source.suffix.lower()
            try:
                shutil.copyfile(face.source, staging / folder / name)
            except FileNotFoundError as exc:
                raise KyaraError(f"{face.source}: removed while its faces were being grouped; run again") from exc
        else:
            name += f"-{face.number}.png"
            if face.source != source:  # a picture's faces come one after another
                source, cuts = face.source, training_cuts(face.source, load_image(face.source), detector)
            if face.number > len(cuts):
                raise KyaraError(f"{face.source}: changed while its faces were being grouped; run again")
            buffer = io.BytesIO()
            cuts[face.number - 1].pixels.save(buffer, "PNG")
            (staging / folder / name).write_bytes(buffer.getvalue())
        members[folder].append(
            {"file": f"{folder}/{name}", "source": str(face.source), "face": face.number, "guess": face.guess}
        )
    return [_describe(folder, members[folder]) for folder in folders], members[NOISE]


def _describe(folder: str, members: list[dict]) -> dict:
    """A group with the model's most frequent guess, a hint for naming the folder."""
    guesses = Counter(m["guess"] for m in members)
    guess, votes = guesses.most_common(1)[0]
    return {
        "folder": folder,
        "size": len(members),
        "model_guess": guess,
        "guess_share": round(votes / len(members), 3),
        "members": members,
    }


def _staging(target: Path) -> Path:
    """A new empty folder beside `target`, where the output is written before it moves in."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{shortened(target.name)}.", dir=target.parent))
    except OSError as exc:
        raise KyaraError(f"{target}: cannot write there ({exc.strerror or exc})") from exc


def written_by_cluster(entry: Path) -> bool:
    """A name kyara cluster writes (clusters.json, noise, cluster-NNN): what --force replaces. A
    user's own `cluster-notes` beside them is left alone."""
    return entry.name in (SUMMARY, NOISE) or CLUSTER_FOLDER.fullmatch(entry.name) is not None


def _publish(staging: Path, target: Path) -> None:
    """Move the finished output into `target`, replacing what an earlier run wrote there."""
    if not target.exists() or not any(target.iterdir()):
        if target.exists():
            target.rmdir()
        staging.rename(target)
        return
    # The old summary goes first and the new one comes last: a run stopped in between leaves a
    # folder without clusters.json, never a summary that describes other folders.
    earlier = sorted((old for old in target.iterdir() if written_by_cluster(old)), key=lambda old: old.name != SUMMARY)
    for old in earlier:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    for new in sorted(staging.iterdir(), key=lambda p: p.name == SUMMARY):
        new.rename(target / new.name)
