"""A labelled image collection on disk: one folder per character, images inside (any depth)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kyara.errors import KyaraError
from kyara.imageio import list_images, resolved


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
    unprintable = [repr(f.name) for f in folders if not printable(f.name)]
    if unprintable:
        raise KyaraError(
            f"a character folder's name becomes its label, and these hold control characters: {', '.join(unprintable)}"
        )
    names = [unicodedata.normalize("NFC", f.name) for f in folders]  # café and café are one name
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise KyaraError(
            f"the same character folder appears twice (in several roots, or spelled alike): {', '.join(repeated)}"
        )
    _check_links(folders, [resolved(root) for root in roots])
    return folders


def printable(name: str) -> bool:
    """A name can be shown as a label: no control or format character, no line or paragraph separator."""
    return not any(category[0] == "C" or category in ("Zl", "Zp") for category in map(unicodedata.category, name))


def _check_links(folders: list[Path], roots: list[Path]) -> None:
    """A character folder (or a link to one) may lead anywhere but to a root or above it (every
    picture again, under another name), or into or around another character's folder (pictures
    under two names): each folder's pictures are listed recursively."""
    places = [(folder, resolved(folder)) for folder in folders]
    for folder, target in places:
        if any(root.is_relative_to(target) for root in roots):
            raise KyaraError(f"{folder} leads to {target}, which holds the character folders themselves")
        for other, elsewhere in places:
            if other != folder and elsewhere.is_relative_to(target):
                raise KyaraError(f"{other} leads into {folder} ({target}): a character's pictures would count twice")


def labelled_files(roots: Sequence[Path]) -> list[LabelledFile]:
    """Every image under every character folder, labelled with the folder's name."""
    return [LabelledFile(path, folder.name) for folder in character_folders(roots) for path in list_images(folder)]
