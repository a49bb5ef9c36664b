"""Multi30k task 1 (raw captions) as a tfds dataset, from a local folder or downloaded.

Usage::

    builder = Multi30k(config=config_name("de", "en"), data_dir=...)
    builder.download_and_prepare(download_config=download_config("/path/to/multi30k"))
    ds = builder.as_dataset(split="train", shuffle_files=False)  # {"de": ..., "en": ...}

One config per unordered language pair ("en-de", "en-fr", ...); the caller picks which
side is the source by choosing feature keys, so every ordered pair among en/de/fr/cs works.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from nmt.config import MULTI30K_ENV
from nmt.datasets.multi30k_layout import (  # re-exported: the builder's public names
    LANGUAGES,
    SPLIT_FILES,
    config_name,
    file_names,
    missing_files,
)
from nmt.errors import DataError
from nmt.textio import iter_aligned

__all__ = [
    "LANGUAGES",
    "SPLIT_FILES",
    "Multi30k",
    "Multi30kConfig",
    "config_name",
    "download_config",
    "file_names",
    "missing_files",
]

BASE_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/"

_CITATION = """\
@inproceedings{elliott-etal-2016-multi30k,
  title = {Multi30K: Multilingual English-German Image Descriptions},
  author = {Elliott, Desmond and Frank, Stella and Sima'an, Khalil and Specia, Lucia},
  booktitle = {Proceedings of the 5th Workshop on Vision and Language},
  year = {2016},
  pages = {70--74},
}
"""


@dataclasses.dataclass(eq=False, kw_only=True)
class Multi30kConfig(tfds.core.BuilderConfig):
    """A Multi30k language pair, in the canonical order of `LANGUAGES`."""

    languages: tuple[str, str] = ("en", "de")


def _holds_any(folder: Path, languages: tuple[str, str]) -> bool:
    return len(missing_files(folder, languages)) < len(file_names(languages))


def download_config(local_dir: str | Path | None = None) -> tfds.download.DownloadConfig:
    """A DownloadConfig that reads `local_dir` when given and never asks GCS for data."""
    return tfds.download.DownloadConfig(
        manual_dir=os.fspath(local_dir) if local_dir else None, try_download_gcs=False
    )


class Multi30k(tfds.core.GeneratorBasedBuilder):
    """Multi30k task 1: 31k image captions in English, German, French and Czech."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Task 1 raw: train, validation (val), test_2016 (flickr)."}
    BUILDER_CONFIGS = [
        Multi30kConfig(
            name=f"{a}-{b}",
            languages=(a, b),
            description=f"Multi30k task 1, {a} and {b} captions.",
        )
        for a, b in itertools.combinations(LANGUAGES, 2)
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Optional: without internet access, put the raw task 1 files of
    https://github.com/multi30k/dataset/tree/master/data/task1/raw
    (train.LANG.gz, val.LANG.gz, test_2016_flickr.LANG.gz for the two languages)
    in one folder and pass it as `DownloadConfig(manual_dir=...)` or set
    ${MULTI30K_ENV}. A local folder is always preferred to downloading.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        languages = self.builder_config.languages
        return self.dataset_info_from_configs(
            description="Multi30k task 1: image captions and their translations.",
            features=tfds.features.Translation(languages=languages),
            supervised_keys=languages,
            homepage="https://github.com/multi30k/dataset",
            citation=_CITATION,
            # Line N of each file translates line N of the other: keep the file order.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        languages = self.builder_config.languages
        local = self._local_dir(dl_manager)
        if local is not None:
            missing = missing_files(local, languages)
            if missing:
                raise DataError(f"Multi30k folder {local} lacks " + ", ".join(missing))
            paths = {name: local / name for name in file_names(languages)}
        else:
            paths = self._download(dl_manager, file_names(languages))
        return {
            split: self._generate_examples(
                paths[f"{stem}.{languages[0]}.gz"], paths[f"{stem}.{languages[1]}.gz"]
            )
            for split, stem in SPLIT_FILES.items()
        }

    def _local_dir(self, dl_manager: tfds.download.DownloadManager) -> Path | None:
        """The manual_dir if it holds Multi30k files, else $NMT_MULTI30K_DIR, else None."""
        try:
            manual = Path(dl_manager.manual_dir)
        except AssertionError:  # tfds signals a missing or empty manual_dir this way
            manual = None
        # The default manual_dir (<data_dir>/downloads/manual) may belong to other datasets.
        if manual is not None and _holds_any(manual, self.builder_config.languages):
            return manual
        env = os.environ.get(MULTI30K_ENV, "")
        return Path(env) if env else None

    def _download(self, dl_manager: tfds.download.DownloadManager, names: list[str]):
        try:
            return dl_manager.download({name: BASE_URL + name for name in names})
        except Exception as exc:  # network errors come in many types; all mean the same
            raise DataError(
                f"could not download Multi30k ({type(exc).__name__}); without internet set "
                f"data.multi30k_dir or ${MULTI30K_ENV} to a folder with the raw files"
            ) from None

    def _generate_examples(self, path1: Path, path2: Path) -> Iterator[tuple[int, dict]]:
        lang1, lang2 = self.builder_config.languages
        for index, (text1, text2) in enumerate(iter_aligned(path1, path2)):
            yield index, {lang1: text1, lang2: text2}
