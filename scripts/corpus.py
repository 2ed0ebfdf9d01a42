"""The recognition corpus: every labelled character kyara trains on, its series, and its splits.

    python scripts/corpus.py --data ../shared/data --faces build/data/faces   # counts per source

Sources: the 34 characters of ../shared/data (holoen-faces, newgame-faces, danbooru6-faces) and
what `tools/build_data.py` writes under build/data/faces (105 moeimouto characters, 10 Naruto
characters). A character is named the same whatever its source (moeimouto's `030_aisaka_taiga` and
danbooru6's `aisaka_taiga` are one). The ten moeimouto characters reserved for independent
evaluation are refused here too, should a folder of them ever appear.

A study (scripts/more_identities.py) also trains on MyAnimeList portraits (the builder's
`illustrations/train/mal-portraits`, one picture each of ~4,900 characters), each an identity of
its own and never a prototype (`portrait_identities`), unless it names a corpus character or any
character of a held-out series. The recipe does not: it did not help (docs/more-identities.md).

Near-duplicates are grouped over the whole corpus (pHash and source picture), so a split never puts
two copies of one drawing on both sides. The series-held-out protocol (scripts/heldout.py) leaves
out every character of `HELD_OUT_SERIES`, plus five Hololive EN characters (`HELD_OUT_HOLOEN`),
whose series stays in training.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from kyara.bundle import atomic_write_bytes
from kyara.cut import FaceCut, cut_face
from kyara.detection import Detector
from kyara.detectors import get_detector
from kyara.errors import ImageError
from kyara.imageio import list_images, load_image
from kyara.train.data import STORE_SIDE, LabelledImages, load_folders

ROOT = Path(__file__).resolve().parents[1]
SHARED_SOURCES = ("holoen-faces", "newgame-faces", "danbooru6-faces")
BUILT_SOURCES = ("moeimouto", "naruto")
sys.path.insert(0, str(ROOT / "tools"))
from build_data import RESERVED_MOEIMOUTO, character_key, is_reserved  # noqa: E402  (the one list of reserved characters)

RESERVED = frozenset(re.sub(r"^\d{3}_", "", name) for name in RESERVED_MOEIMOUTO)
"""The ten moeimouto characters kept for independent evaluation, as `label_of` names them."""

NARUTO_NAMES = {
    "gaara": "gaara",
    "jiraya": "jiraiya",
    "kakashi": "hatake_kakashi",
    "naruto": "uzumaki_naruto",
    "orochimaru": "orochimaru",
    "pain": "pain",
    "rock_lee": "rock_lee",
    "sakura": "haruno_sakura",
    "sasuke": "uchiha_sasuke",
    "tsunade": "tsunade",
}
"""The Naruto folders' names are first names (one misspelt); full names keep them apart from others'."""

SERIES = {
    "hololive_en": "ame bae biboo calli ceci erb fauna fuwawa gigi gura ina irys kiara kronii mococo mumei nerissa "
    "raora sana shiori",
    "new_game": "ahagon_umiko hazuki_shizuku lijima_yun sakura_nene suzukaze_aoba takimoto_hifumi toyama_rin "
    "yagami_kou",
    "fate": "abigail_williams_(fate) saber tohsaka_rin matou_sakura illyasviel_von_einzbern",
    "persona": "aegis_(persona)",
    "toradora": "aisaka_taiga kawashima_ami",
    "overlord": "albedo",
    "idolmaster": "anastasia_(idolmaster) amami_haruka takatsuki_yayoi miura_azusa kisaragi_chihaya "
    "akizuki_ritsuko kikuchi_makoto",
    "konosuba": "aqua_(konosuba)",
    "naruto": " ".join(NARUTO_NAMES.values()),
    "haruhi": "nagato_yuki asahina_mikuru kyon koizumi_itsuki",
    "touhou": "kirisame_marisa remilia_scarlet izayoi_sakuya yakumo_yukari reisen_udongein_inaba "
    "flandre_scarlet saigyouji_yuyuko konpaku_youmu patchouli_knowledge alice_margatroid kochiya_sanae "
    "shameimaru_aya",
    "lucky_star": "hiiragi_kagami hiiragi_tsukasa takara_miyuki",
    "code_geass": "c.c kururugi_suzaku kallen_stadtfeld nunnally_lamperouge",
    "clannad": "furukawa_nagisa fujibayashi_kyou sakagami_tomoyo ibuki_fuuko ichinose_kotomi",
    "zero_no_tsukaima": "louise siesta",
    "vocaloid": "kagamine_rin kagamine_len megurine_luka",
    "evangelion": "ayanami_rei souryuu_asuka_langley ikari_shinji",
    "k-on": "hirasawa_yui tainaka_ritsu kotobuki_tsumugi nakano_azusa",
    "gurren_lagann": "yoko",
    "to_love-ru": "lala_satalin_deviluke sairenji_haruna golden_darkness",
    "nanoha": "yagami_hayate subaru_nakajima erio_mondial",
    "macross_frontier": "sheryl_nome ranka_lee saotome_alto",
    "to_heart_2": "kousaka_tamaki kusugawa_sasara",
    "spice_and_wolf": "horo",
    "kannagi": "nagi",
    "cardcaptor_sakura": "li_syaoran daidouji_tomoyo",
    "higurashi": "furude_rika ryuuguu_rena",
    "hayate_no_gotoku": "sanzenin_nagi katsura_hinagiku",
    "yoake_mae_yori_ruriiro_na": "feena_fam_earthlight asagiri_mai",
    "hidamari_sketch": "miyamura_miyako",
    "kimi_ga_nozomu_eien": "hayase_mitsuki",
    "moetan": "nijihara_ink",
    "melonbooks": "melon-chan",
    "chobits": "chii",
    "tsukihime": "arcueid_brunestud",
    "gundam_00": "setsuna_f_seiei",
    "shuffle": "primula",
    "queens_blade": "reina nanael",
    "galaxy_angel": "milfeulle_sakuraba",
    "d_gray-man": "allen_walker",
    "akaneiro_ni_somaru_saka": "suzumiya_akane",
    "nanatsuiro_drops": "akihime_sumomo",
    "aria": "aika_granzchesta",
    "magic_knight_rayearth": "shidou_hikaru",
    "da_capo": "shirakawa_kotori",
    "negima": "kagurazaka_asuna",
    "nogizaka_haruka_no_himitsu": "nogizaka_haruka",
    "ichigo_mashimaro": "ana_coppola ito_nobue ito_chika matsuoka_miu",
}
"""Series of each character, where known for certain; a character not listed is its own series."""

HELD_OUT_SERIES = ("idolmaster", "clannad", "ichigo_mashimaro", "higurashi", "hayate_no_gotoku")
"""Whole series the held-out protocol never trains on: 20 characters, none of their series in training."""
HELD_OUT_HOLOEN = ("bae", "ceci", "erb", "gigi", "irys")
"""Five Hololive EN characters held out while the other fifteen train (new faces of a known series)."""


def label_of(folder: Path) -> str:
    """The character's name for a source folder: moeimouto's number dropped, Naruto's full name."""
    if folder.parent.name == "naruto":
        return NARUTO_NAMES[folder.name]
    return re.sub(r"^\d{3}_", "", folder.name) if folder.parent.name == "moeimouto" else folder.name


def series_of(label: str) -> str:
    for series, members in SERIES.items():
        if label in members.split():
            return series
    return label


def source_of(path: Path) -> str:
    """The source folder a picture comes from: holoen-faces, moeimouto, ..."""
    return path.parent.parent.name


@dataclass
class Corpus:
    """Every picture at `STORE_SIDE`, labelled by character name, grouped by near-duplicates."""

    images: LabelledImages

    def held_out_classes(self) -> list[str]:
        return [c for c in self.images.classes if series_of(c) in HELD_OUT_SERIES or c in HELD_OUT_HOLOEN]


def corpus_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every corpus script takes: where the two kinds of sources are, the cache, the seed."""
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--faces", type=Path, default=ROOT / "build" / "data" / "faces")
    parser.add_argument("--cache", type=Path, default=ROOT / "build" / "corpus.npz")
    parser.add_argument(
        "--portraits", type=Path, default=ROOT / "build" / "data" / "illustrations" / "train" / "mal-portraits"
    )
    parser.add_argument("--seed", type=int, default=0)


def roots(data: Path, faces: Path) -> list[Path]:
    return [data / name for name in SHARED_SOURCES] + [faces / name for name in BUILT_SOURCES]


def load_corpus(data: Path, faces: Path, cache: Path) -> Corpus:
    """The corpus, from `cache` when it was made from the same folders (loading takes minutes)."""
    folders = roots(data, faces)
    key = json.dumps([str(f.resolve()) for f in folders])
    saved = cached_arrays(cache, key)
    if saved is not None:
        return Corpus(
            LabelledImages(
                saved["pixels"],
                saved["labels"],
                saved["groups"],
                [str(c) for c in saved["classes"]],
                [Path(p) for p in saved["paths"]],
            )
        )
    # Naruto's pictures are illustrations: the detector cuts their most confident face; the other
    # sources are face crops, which `load_folders` takes whole.
    images = merge_names(load_folders(folders, detector=get_detector("cnn")))
    refused = sorted(set(images.classes) & set(RESERVED))
    if refused:
        raise SystemExit(f"reserved characters found in the corpus: {', '.join(refused)}")
    cache_arrays(
        cache,
        key,
        pixels=images.pixels,
        labels=images.labels,
        groups=images.groups,
        classes=np.array(images.classes),
        paths=np.array([str(p) for p in images.paths]),
    )
    return Corpus(images)


def cached_arrays(cache: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays `cache_arrays` kept in `cache` under `key`; None when there are none, or they were
    made from other inputs (another `key`)."""
    if not cache.exists():
        return None
    with np.load(cache, allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files} if str(saved["key"]) == key else None


def cache_arrays(cache: Path, key: str, **arrays: np.ndarray) -> None:
    """Keeps `arrays` in `cache` with the `key` of the inputs they were made from, written whole or
    not at all (a killed build leaves no cache that loads)."""
    buffer = io.BytesIO()
    np.savez(buffer, key=np.array(key), **arrays)
    atomic_write_bytes(cache, buffer.getvalue())


def merge_names(images: LabelledImages) -> LabelledImages:
    """Folders relabelled with `label_of`; folders naming the same character become one class."""
    names = sorted({label_of(p.parent) for p in images.paths})
    labels = np.array([names.index(label_of(p.parent)) for p in images.paths], np.int64)
    return LabelledImages(images.pixels, labels, images.groups, names, images.paths, images.skipped)


def detector_views(paths: Sequence[Path], side: int = STORE_SIDE) -> dict[str, np.ndarray | None]:
    """Each face crop cut again as recognition cuts a face found in a larger picture (the detector's
    box with its margin, white beyond the crop), by path: training sees both framings of every face.
    None where there is no second view (no face found, or an illustration the detector cut already)."""
    detector = get_detector("cnn")
    views: dict[str, np.ndarray | None] = {}
    for path in tqdm(paths, desc="detector views", leave=False):
        views[str(path)] = None
        if source_of(path) == "naruto":
            continue  # cut by the detector already
        cut = best_face(path, detector)
        if cut is not None and not cut.whole:
            views[str(path)] = stored_pixels(cut, side)
    return views


def best_face(path: Path, detector: Detector) -> FaceCut | None:
    """The most confident face of the picture at `path`, cut as recognition cuts it; None where
    the picture is unreadable or has no face."""
    try:
        picture = load_image(path)
    except ImageError:
        return None
    faces = detector.detect(picture)
    return cut_face(picture, max(faces, key=lambda face: face.score)) if faces else None


def stored_pixels(cut: FaceCut, side: int = STORE_SIDE) -> np.ndarray:
    return np.asarray(cut.pixels.resize((side, side), Image.Resampling.BILINEAR))


PORTRAIT_MIN_SCORE = 0.6
"""A portrait whose best face the detector is less sure of is left out (a back view, a mascot)."""
HELD_OUT_CASTS = {
    "idolmaster": "haruka_amami chihaya_kisaragi yukiho_hagiwara yayoi_takatsuki ritsuko_akizuki azusa_miura "
    "iori_minase makoto_kikuchi ami_futami mami_futami miki_hoshii hibiki_ganaha takane_shijou kotori_otonashi "
    "anastasia uzuki_shimamura rin_shibuya mio_honda ranko_kanzaki mika_jougasaki rika_jougasaki kirari_moroboshi "
    "anzu_futaba miku_maekawa riina_tada minami_nitta kanako_mimura chieri_ogata mirai_kasuga shizuka_mogami "
    "tsubasa_ibuki kaede_takagaki",
    "clannad": "nagisa_furukawa tomoya_okazaki kyou_fujibayashi ryou_fujibayashi kotomi_ichinose tomoyo_sakagami "
    "fuuko_ibuki youhei_sunohara mei_sunohara akio_furukawa sanae_furukawa ushio_okazaki kouko_ibuki "
    "yukine_miyazawa misae_sagara naoyuki_okazaki toshio_koumura",
    "ichigo_mashimaro": "nobue_itou chika_itou matsuri_sakuragi ana_coppola miu_matsuoka",
    "higurashi": "keiichi_maebara rena_ryuuguu mion_sonozaki shion_sonozaki satoko_houjou rika_furude hanyuu "
    "satoshi_houjou miyo_takano kyousuke_irie jirou_tomitake kuraudo_ooishi frederica_bernkastel",
    "hayate_no_gotoku": "hayate_ayasaki nagi_sanzenin maria hinagiku_katsura ayumu_nishizawa isumi_saginomiya "
    "sakuya_aizawa wataru_tachibana saki_kijima klaus izumi_segawa miki_hanabishi risa_asakaze athena_tennousu "
    "kotetsu_segawa ruka_suirenji chiharu_harukaze yukiji_katsura",
}
"""The casts of the held-out series as MyAnimeList names them (written from knowledge of the series,
not from a database: the snapshot's portraits carry a name and an id, no series). A portrait of any
of them is left out, so the held-out series stay unseen as a whole."""


def name_key(name: str) -> frozenset[str]:
    """A character's name as the builder matches names (`build_data.character_key`), brackets
    dropped and long vowels folded (Itou/Ito, Ryuuguu/Ryuguu): `ito_nobue` is MyAnimeList's `Nobue_Itou`.
    A name of single letters (C.C.) is its letters."""
    words = character_key(re.sub(r"\(.*?\)", "", name)).split() or [re.sub(r"[^a-z0-9]", "", name.lower())]
    return frozenset(w.replace("ou", "o").replace("uu", "u").replace("oo", "o") for w in words)


def portrait_name(path: Path) -> str:
    """`Taiga_Aisaka_12064_0.jpg` -> `Taiga_Aisaka` (the MyAnimeList id and picture number dropped)."""
    return re.sub(r"_\d+_\d+$", "", path.stem)


def names_one_of(name: str, keys: Sequence[frozenset[str]]) -> bool:
    """Whether `name` holds every word of one of `keys`: `Gura_Gawr` names `gura`, `Yoko_Littner`
    `yoko`. Looser than equal names on purpose: a portrait wrongly left out costs one identity of
    thousands; one wrongly kept trains a held-out or corpus character under a second name."""
    words = name_key(name)
    return any(key <= words for key in keys if key)


def portrait_identities(folder: Path, classes: Sequence[str], cache: Path) -> LabelledImages:
    """The MyAnimeList portraits in `folder` as identities of one picture each, for the embedding to
    learn more characters than the corpus names (scripts/more_identities.py); never prototypes of a
    model. Left out: portraits naming a corpus character (`classes`) or any character of the held-out
    series (`HELD_OUT_CASTS`) by `names_one_of`, reserved characters (the builder skips them already),
    and portraits whose best face the detector is not sure of."""
    unwanted = [name_key(c) for c in classes] + [name_key(n) for cast in HELD_OUT_CASTS.values() for n in cast.split()]
    named = {p: portrait_name(p) for p in list_images(folder)}
    paths = [p for p, name in named.items() if not names_one_of(name, unwanted) and not is_reserved(name)]
    key = json.dumps({"min_score": PORTRAIT_MIN_SCORE, "paths": [str(p) for p in paths]})
    saved = cached_arrays(cache, key)
    if saved is not None:
        return portraits_as_images(saved["pixels"], [Path(p) for p in saved["paths"]])
    detector = get_detector("cnn")
    kept: list[tuple[Path, np.ndarray]] = []
    for path in tqdm(paths, desc="portraits", leave=False):
        cut = best_face(path, detector)
        if cut is not None and cut.score >= PORTRAIT_MIN_SCORE:
            kept.append((path, stored_pixels(cut)))
    pixels = np.stack([p for _, p in kept]) if kept else np.zeros((0, STORE_SIDE, STORE_SIDE, 3), np.uint8)
    cache_arrays(cache, key, pixels=pixels, paths=np.array([str(p) for p, _ in kept]))
    return portraits_as_images(pixels, [p for p, _ in kept])


def load_portraits(args: argparse.Namespace, classes: Sequence[str]) -> LabelledImages:
    """`portrait_identities` of the `--portraits` folder (`corpus_arguments`), kept in build/."""
    return portrait_identities(args.portraits, classes, ROOT / "build" / "portraits.npz")


def portraits_as_images(pixels: np.ndarray, paths: list[Path]) -> LabelledImages:
    count = len(paths)
    names = [portrait_name(p) for p in paths]
    # Groups of their own, apart from the corpus's (0 and up), should a split ever be made over both.
    return LabelledImages(pixels, np.arange(count), -1 - np.arange(count), names, paths)


def with_identities(images: LabelledImages, others: LabelledImages) -> LabelledImages:
    """`images` and then `others` as more classes after `images`' own (whose labels stay as they are)."""
    return LabelledImages(
        np.concatenate([images.pixels, others.pixels]),
        np.concatenate([images.labels, others.labels + len(images.classes)]),
        np.concatenate([images.groups, others.groups]),
        images.classes + others.classes,
        images.paths + others.paths,
    )


def joined(a: LabelledImages, b: LabelledImages) -> LabelledImages:
    """`a` then `b` (same classes), as one training set."""
    return LabelledImages(
        np.concatenate([a.pixels, b.pixels]),
        np.concatenate([a.labels, b.labels]),
        np.concatenate([a.groups, b.groups]),
        a.classes,
        a.paths + b.paths,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    corpus_arguments(parser)
    args = parser.parse_args()
    corpus = load_corpus(args.data, args.faces, args.cache)
    images = corpus.images
    sources: dict[str, dict[str, int]] = {}
    for path, label in zip(images.paths, images.labels):
        counts = sources.setdefault(source_of(path), {})
        counts[images.classes[label]] = counts.get(images.classes[label], 0) + 1
    summary = {
        "characters": len(images.classes),
        "pictures": len(images.labels),
        "near_duplicate_groups": len(np.unique(images.groups)),
        "series": len({series_of(c) for c in images.classes}),
        "held_out": corpus.held_out_classes(),
        "per_source": {s: {"characters": len(c), "pictures": sum(c.values())} for s, c in sources.items()},
        "portrait_identities": len(load_portraits(args, images.classes).classes),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
