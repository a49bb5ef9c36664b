"""The raw Multi30k task 1 files: languages, split files and names. No TensorFlow here.

`nmt.corpus` reads a local folder of these files directly, with or without
tensorflow_datasets; the tfds builder (`nmt.datasets.multi30k`) reads the same files.
"""

from __future__ import annotations

from pathlib import Path

from nmt.errors import DataError

LANGUAGES = ("en", "de", "fr", "cs")
# tfds split name -> file stem; a file is STEM.LANG.gz.
SPLIT_FILES = {"train": "train", "validation": "val", "test_2016": "test_2016_flickr"}


def config_name(lang1: str, lang2: str) -> str:
    """The builder config holding `lang1` and `lang2`, in either order.

    Args:
        lang1: One language code among en, de, fr, cs.
        lang2: Another one.

    Returns:
        The config name, e.g. "en-de" for ("de", "en").

    Raises:
        DataError: For an unsupported language or twice the same language.
    """
    for lang in (lang1, lang2):
        if lang not in LANGUAGES:
            raise DataError(
                f"Multi30k has no language {lang!r}; choose among " + ", ".join(LANGUAGES)
            )
    if lang1 == lang2:
        raise DataError(f"source and target language are both {lang1!r}")
    first, second = sorted((lang1, lang2), key=LANGUAGES.index)
    return f"{first}-{second}"


def file_names(languages: tuple[str, str]) -> list[str]:
    """The raw file names a local folder must hold for a language pair (all splits)."""
    return [f"{stem}.{lang}.gz" for stem in SPLIT_FILES.values() for lang in languages]


def missing_files(folder: str | Path, languages: tuple[str, str]) -> list[str]:
    """The file names of `file_names(languages)` that `folder` lacks."""
    return [name for name in file_names(languages) if not (Path(folder) / name).is_file()]


def split_stem(split: str) -> str:
    """The file stem of a split ("train", "validation", "test_2016"), e.g. "val".

    Raises:
        DataError: For another split name.
    """
    if split not in SPLIT_FILES:
        raise DataError(f"Multi30k has no split {split!r}; available: " + ", ".join(SPLIT_FILES))
    return SPLIT_FILES[split]


def split_paths(folder: str | Path, split: str, src_lang: str, tgt_lang: str) -> tuple[Path, Path]:
    """The source and target files of a split in `folder` (`split_stem` raises)."""
    stem = split_stem(split)
    return Path(folder) / f"{stem}.{src_lang}.gz", Path(folder) / f"{stem}.{tgt_lang}.gz"
