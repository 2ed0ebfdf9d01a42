"""A labelled image collection on disk: one folder per character, images inside (any depth)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kyara.errors import KyaraError
from kyara.imageio import list_images


@dataclass(frozen=True)
class LabelledFile:
    path: Path
    label: str


def character_folders(roots: Sequence[Path]) -> list[Path]:
    """Sub-folders of each root (one per character), sorted by name, hidden ones skipped."""
    missing = [str(root) for root in roots if not Path(root).is_dir()]
    if missing:
        raise KyaraError(f"not a folder: {', '.join(missing)}")
    folders = [
        folder
        for root in roots
        for folder in sorted(Path(root).iterdir())
        if folder.is_dir() and not folder.name.startswith(".")
    ]
    names = [f.name for f in folders]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise KyaraError(f"the same character folder appears in several roots: {', '.join(repeated)}")
    return folders


def labelled_files(roots: Sequence[Path]) -> list[LabelledFile]:
    """Every image under every character folder, labelled with the folder's name."""
    return [LabelledFile(path, folder.name) for folder in character_folders(roots) for path in list_images(folder)]
