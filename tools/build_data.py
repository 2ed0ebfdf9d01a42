"""Rebuild kyara's training and benchmark pictures from public repository snapshots, in one command.

    python tools/build_data.py --mirrors /work/.mirror --out build/data

Each source is a git snapshot (`<mirrors>/<owner>+<name>/repo`) read at the commit pinned below, so
the same command gives the same files anywhere. Nothing here is committed: the pictures belong to
their artists (docs/data.md lists sources, licences and counts). Writes, under `--out`:

    illustrations/train/<source>/...       pictures the face detector trains on
    illustrations/benchmark/<source>/...   pictures it is measured on (sources and characters disjoint)
    faces/<source>/<character>/...         labelled face pictures for the recognition embedding
    manifest.json                          every file: source, licence, split, character, series

The ten moeimouto characters reserved for independent evaluation are never written, from any source
(a MyAnimeList portrait of one of them, a benchmark picture that shows one): `is_reserved`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import subprocess
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

RESERVED_MOEIMOUTO = frozenset(
    {
        "000_hatsune_miku", "001_kinomoto_sakura", "002_suzumiya_haruhi", "003_fate_testarossa",
        "004_takamachi_nanoha", "005_lelouch_lamperouge", "006_akiyama_mio", "008_shana",
        "009_hakurei_reimu", "010_izumi_konata",
    }
)  # fmt: skip
"""Reserved for independent evaluation: never in training, validation or any gallery."""

NEVER_USE = frozenset(
    {"Sytwu/Anime-Face-Recognition", "AO7108/anime-face-classifier", "jonathonyan/Anime-Face-Detection-and-Recognition"}
)

COMMITS = {
    "Gyliardson/mangasensei": "80242f591a59655ab399cdde9486764252815084",
    "KevinMorrison-629/HakaribotImages": "4cee86910c98ecadf01827f964a6a2147b499a54",
    "Nis5l/WaifuCollector": "2dd0004b41d199261d76f74b289d53f197489b62",
    "Osunadev/naruto-character-classification": "83346400d59d94aeff62d499794c7b5e5202bfda",
    "alexisVallet/cc-anime-images": "2c0fb017facb338da8dd79372c969fd3f3336738",
    "arkel23/moeimouto_animefacecharacterdataset": "c476ef19628a19f4b1c095dae98d3bf0877f4e00",
    "freedomofkeima/transfer-learning-anime": "84d35f181b6149349ec320a5b975fde4f3270ba3",
    "mantra-inc/open-mantra-dataset": "59341ad922284a8be219b7784feb5a79779a1447",
    "rajkarthik2003/Anime-YOLO-AI": "b4bde53fb50a62e50b8826af1a119429cc45479a",
    "skhyr/Anime-Girls-Holding-Programming-Books": "684aedce9e198de52b8a75abbe3d6deb17136e04",
}
LICENCES = {
    "Gyliardson/mangasensei": "Shuho Sato, Give My Regards to Black Jack: free reuse with credit (densho810.com/free)",
    "KevinMorrison-629/HakaribotImages": "no licence; MyAnimeList character pictures, research use only",
    "Nis5l/WaifuCollector": "repository without a licence; character art from official sources, research use only",
    "Osunadev/naruto-character-classification": "repository without a licence; screenshots and fan art, research use",
    "alexisVallet/cc-anime-images": "per picture Creative Commons (BY-NC-ND/BY-NC-SA 3.0), IMAGES-LICENSES.md",
    "arkel23/moeimouto_animefacecharacterdataset": "labels only (MIT-style scripts); pictures from moeimouto",
    "freedomofkeima/transfer-learning-anime": "repository MIT; pictures are fan art, research use",
    "mantra-inc/open-mantra-dataset": "CC BY-NC 4.0",
    "rajkarthik2003/Anime-YOLO-AI": "repository without a licence; the moeimouto face crops (nagadomi), research use",
    "skhyr/Anime-Girls-Holding-Programming-Books": "no licence; fan art and screenshots, research use",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
MANTRA_BENCHMARK_TITLES = ("tencho_isoro", "boureisougi")
SERIES_IN_TRAINING = re.compile(
    r"aoba|yagami_kou|sakura_nene|nishikino|kurosawa|hanamaru|takimoto|hifumi|(^|[/_-])maki[_.]", re.IGNORECASE
)
"""Characters of New Game! and Love Live! (in ../shared/data and the seed project's pictures): their
programming-book pictures are trained on, so that the benchmark's series stay new to the detector."""
"""Two of the five manga titles are measured on, the other three trained on."""


@dataclass(frozen=True)
class Entry:
    path: str  # relative to --out
    source: str
    licence: str
    split: str  # detector-train, detector-benchmark, faces
    character: str | None = None
    series: str | None = None


class Snapshot:
    """One repository snapshot, read at its pinned commit with plain git."""

    def __init__(self, mirrors: Path, repo: str) -> None:
        if repo in NEVER_USE:
            raise SystemExit(f"{repo} is reserved for independent evaluation and is never used")
        folder = mirrors / repo.replace("/", "+") / "repo"
        self.git_dir = folder / ".git" if (folder / ".git").is_dir() else folder
        self.repo, self.commit = repo, COMMITS[repo]
        if not self.git_dir.exists():
            raise SystemExit(f"{repo}: no snapshot at {folder}; bring it with the search tool's fetch")

    def files(self, folder: str) -> dict[str, bytes]:
        """Every file under `folder` at the pinned commit, by path; files the snapshot lacks (those of
        4 MiB and more are not stored) are left out."""
        git = ["git", "--git-dir", str(self.git_dir)]
        listing = subprocess.run([*git, "ls-tree", "-r", "-z", self.commit, "--", folder], check=True,
                                 capture_output=True).stdout  # fmt: skip
        blobs = [line.split(b"\t", 1) for line in listing.split(b"\0") if line]
        wanted = [(meta.split()[2].decode(), path.decode()) for meta, path in blobs if meta.split()[1] == b"blob"]
        batch = subprocess.run([*git, "cat-file", "--batch"], input="".join(f"{sha}\n" for sha, _ in wanted).encode(),
                               check=True, capture_output=True).stdout  # fmt: skip
        found, stream = {}, io.BytesIO(batch)
        for _, path in wanted:
            header = stream.readline().split()
            if header[-1] == b"missing":
                continue
            found[path] = stream.read(int(header[2]))
            stream.read(1)
        return found

    def text(self, path: str) -> str:
        return subprocess.run(
            ["git", "--git-dir", str(self.git_dir), "show", f"{self.commit}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout


def is_picture(name: str, data: bytes) -> bool:
    """A picture's name and a picture's bytes: a Git LFS pointer is a small text file in a picture's
    name, and some snapshots hold saved web pages named .jpg."""
    if not name.lower().endswith(IMAGE_SUFFIXES):
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception:  # Pillow raises many types for what is not a picture
        return False
    return True


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "picture"


def character_key(name: str) -> str:
    """A character's name reduced to sorted lower-case words, to match 'Ai_Hayasaka' with 'AiHayasaka'."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    return " ".join(sorted(w for w in re.split(r"[^a-z]+", spaced.lower()) if len(w) > 1))


RESERVED_NAMES = (
    *(frozenset(character_key(folder.split("_", 1)[1]).split()) for folder in sorted(RESERVED_MOEIMOUTO)),
    frozenset({"fate", "harlaown"}),
    frozenset({"lelouch", "britannia"}),
)
"""Each reserved character's name words, and the other names two of them go by."""


def is_reserved(name: str) -> bool:
    """Whether a file name or a character name names a reserved character, in either order and
    any spelling of word breaks ('Konata_Izumi_2169_0.jpg', 'izumi konata', 'AkiyamaMio')."""
    words = set(character_key(name).split())
    return any(reserved <= words for reserved in RESERVED_NAMES)


class Builder:
    def __init__(self, mirrors: Path, out: Path) -> None:
        self.mirrors, self.out = mirrors, out
        self.entries: list[Entry] = []
        self.reserved_left_out: list[str] = []
        self.benchmark_left_out: list[str] = []
        """Portraits of characters the detector's benchmark shows (reserved ones among them go to
        `reserved_left_out`)."""

    def write(self, relative: str, data: bytes, **fields) -> None:
        """Writes one picture, unless its name or its character is reserved for independent evaluation."""
        if is_reserved(relative) or is_reserved(fields.get("character") or ""):
            self.reserved_left_out.append(relative)
            return
        target = self.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.entries.append(Entry(relative, **fields))

    def illustration(self, repo: str, split: str, name: str, data: bytes, licence: str | None = None, **fields) -> None:
        """A picture the face detector trains on (`split` "train") or is measured on ("benchmark"),
        written as illustrations/<split>/<name>; its licence is the repository's unless given."""
        licence = licence or LICENCES[repo]
        self.write(
            f"illustrations/{split}/{name}", data, source=repo, licence=licence, split=f"detector-{split}", **fields
        )

    def snapshot(self, repo: str) -> Snapshot:
        return Snapshot(self.mirrors, repo)

    def programming_books(self) -> set[str]:
        """skhyr's fan art of characters holding programming books: a benchmark source."""
        repo = "skhyr/Anime-Girls-Holding-Programming-Books"
        names: set[str] = set()
        for path, data in sorted(self.snapshot(repo).files(".").items()):
            top = path.split("/")[0]
            if "/" not in path or top in {"web", "Memes"} or not is_picture(path, data):
                continue
            stem = Path(path).stem
            character = re.split(r"_(?:Holding|Reading|Sitting|flips|Backflip|with|With|and|Learning)", stem)[0]
            split = "train" if SERIES_IN_TRAINING.search(path) else "benchmark"
            if split == "benchmark":
                names.add(character_key(character))
            self.illustration(repo, split, f"programming-books/{safe_name(path)}", data, character=character)
        return names

    def cc_anime(self) -> set[str]:
        repo = "alexisVallet/cc-anime-images"
        snapshot = self.snapshot(repo)
        infos = {Path(p).stem: json.loads(d) for p, d in snapshot.files("info").items()}
        names: set[str] = set()
        for path, data in sorted(snapshot.files("images").items()):
            if not is_picture(path, data):
                continue
            info = infos.get(Path(path).stem, {})
            characters = info.get("characters", [])
            names.update(character_key(c) for c in characters)
            self.illustration(
                repo,
                "benchmark",
                f"cc-anime-images/{safe_name(Path(path).name)}",
                data,
                licence=f"{info.get('license_type', 'see IMAGES-LICENSES.md')} by {info.get('author', '?')}",
                character=", ".join(characters) or None,
            )
        return names

    def manga(self) -> None:
        repo = "mantra-inc/open-mantra-dataset"
        for path, data in sorted(self.snapshot(repo).files("images").items()):
            parts = path.split("/")
            if len(parts) != 4 or parts[2] != "ja" or not is_picture(path, data):
                continue
            title = parts[1]
            split = "benchmark" if title in MANTRA_BENCHMARK_TITLES else "train"
            self.illustration(repo, split, f"manga/{title}-{parts[3]}", data, series=title)
        repo = "Gyliardson/mangasensei"
        for path, data in sorted(self.snapshot(repo).files("tests/fixtures/ocr/real_manga/black_jack").items()):
            if is_picture(path, data):
                self.illustration(repo, "train", f"manga/black_jack-{Path(path).name}", data, series="black_jack")

    def portraits(self, benchmark_characters: set[str]) -> None:
        """Character portraits, one per character, from hundreds of series: WaifuCollector's cards
        (nearly all women) and Hakaribot's MyAnimeList pictures (about half men, every decade and
        drawing style). Portraits of characters that also appear in the benchmark are left out, so
        that the benchmark's characters stay new."""
        sources = (
            ("Nis5l/WaifuCollector", "server/static/card", "portraits", lambda stem: stem.removeprefix("Card_")),
            ("KevinMorrison-629/HakaribotImages", "images", "mal-portraits", lambda stem: stem.rsplit("_", 2)[0]),
        )
        for repo, folder, subfolder, name_of in sources:
            for path, data in sorted(self.snapshot(repo).files(folder).items()):
                name = name_of(Path(path).stem)
                if "/" in path.removeprefix(f"{folder}/") or not is_picture(path, data):
                    continue
                relative = f"{subfolder}/{safe_name(Path(path).name)}"
                if character_key(name) in benchmark_characters:
                    left_out = self.reserved_left_out if is_reserved(name) else self.benchmark_left_out
                    left_out.append(f"illustrations/train/{relative}")
                    continue
                self.illustration(repo, "train", relative, data, character=name)

    def naruto(self) -> None:
        """Naruto characters (8 of 10 male): detector pictures and recognition identities."""
        repo = "Osunadev/naruto-character-classification"
        for path, data in sorted(self.snapshot(repo).files("Naruto_images").items()):
            parts = path.split("/")
            if len(parts) != 3 or not is_picture(path, data) or re.search(r"figuarts|statue|pvc", path, re.I):
                continue
            character = safe_name(parts[1]).lower()
            fields = {"character": character, "series": "naruto"}
            self.illustration(repo, "train", f"naruto/{character}-{safe_name(parts[2])}", data, **fields)
            self.write(f"faces/naruto/{character}/{safe_name(parts[2])}", data, source=repo, licence=LICENCES[repo],
                       split="faces", **fields)  # fmt: skip

    def transfer_learning(self) -> None:
        """The seed project's raw illustrations, with those animeface-2009 could not find a face in."""
        repo = "freedomofkeima/transfer-learning-anime"
        snapshot = self.snapshot(repo)
        for folder in ("raw", "raw (unrecognized)"):
            for path, data in sorted(snapshot.files(folder).items()):
                parts = path.split("/")
                if len(parts) != 3 or not is_picture(path, data):
                    continue
                name = f"transfer-learning/{safe_name(folder)}-{parts[1]}-{safe_name(parts[2])}"
                self.illustration(repo, "train", name, data, character=parts[1])

    def moeimouto(self) -> None:
        """moeimouto face crops (pictures from one snapshot, labels from another), less the reserved ten."""
        labels_repo, pictures_repo = "arkel23/moeimouto_animefacecharacterdataset", "rajkarthik2003/Anime-YOLO-AI"
        rows = list(csv.reader(io.StringIO(self.snapshot(labels_repo).text("moeimouto_animefacecharacterdataset.csv"))))
        by_name: dict[str, list[str]] = {}
        for row in rows:
            if len(row) == 2 and "/" in row[1]:
                folder, name = row[1].split("/", 1)
                by_name.setdefault(name, []).append(folder)
        for path, data in sorted(self.snapshot(pictures_repo).files("data").items()):
            name = Path(path).name
            folders = by_name.get(name, [])
            # A file name that occurs in several classes cannot be labelled from the CSV.
            if len(folders) != 1 or not is_picture(path, data):
                continue
            self.write(
                f"faces/moeimouto/{folders[0]}/{name}",
                data,
                source=f"{pictures_repo} + {labels_repo}",
                licence=LICENCES[pictures_repo],
                split="faces",
                character=folders[0],
            )

    def build(self) -> dict:
        benchmark_characters = self.programming_books() | self.cc_anime()
        self.manga()
        self.portraits(benchmark_characters)
        self.naruto()
        self.transfer_learning()
        self.moeimouto()
        counts = Counter((e.split, e.source) for e in self.entries)
        manifest = {
            "commits": COMMITS,
            "reserved_characters": sorted(RESERVED_MOEIMOUTO),
            "reserved_left_out": self.reserved_left_out,
            "benchmark_characters_left_out": self.benchmark_left_out,
            "counts": {f"{split} | {source}": n for (split, source), n in sorted(counts.items())},
            "files": [asdict(e) for e in self.entries],
        }
        (self.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--out", type=Path, default=Path("build/data"))
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty: remove it first, so that no old file stays behind")
    manifest = Builder(args.mirrors, args.out).build()
    for key, count in manifest["counts"].items():
        print(f"{count:6d}  {key}")


if __name__ == "__main__":
    main()
