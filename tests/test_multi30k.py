"""Multi30k: local folders (read straight from their files), the tfds builder (downloads),
direction, alignment checks, the real corpus."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from nmt import corpus
from nmt.config import MULTI30K_ENV, DataConfig
from nmt.datasets import multi30k
from nmt.errors import DataError

SIZES = {"train": 5, "val": 3, "test_2016_flickr": 2}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any download attempt fails the test: every case here must read local files."""

    def refuse(*args, **kwargs):
        raise ConnectionError("tests must not download")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", refuse)


def line(stem: str, lang: str, index: int) -> str:
    return f"{lang} {stem} sentence {index} ü"


@pytest.fixture
def folder(tmp_path) -> Path:
    """A tiny Multi30k folder: en and de, all three splits, gzip-compressed."""
    path = tmp_path / "raw"
    path.mkdir()
    for stem, size in SIZES.items():
        for lang in ("en", "de"):
            text = "".join(line(stem, lang, i) + "\n" for i in range(size))
            (path / f"{stem}.{lang}.gz").write_bytes(gzip.compress(text.encode()))
    return path


def cfg(folder: Path | str, data_dir: Path, src: str = "en", tgt: str = "de") -> DataConfig:
    return DataConfig(
        format="multi30k",
        src_lang=src,
        tgt_lang=tgt,
        multi30k_dir=str(folder),
        tfds_data_dir=str(data_dir),
    )


def test_builder_reads_local_folder(folder, tmp_path):
    builder = multi30k.Multi30k(config="en-de", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=multi30k.download_config(folder))
    splits = builder.info.splits
    assert {name: splits[name].num_examples for name in splits} == {
        "train": 5,
        "validation": 3,
        "test_2016": 2,
    }
    assert builder.info.supervised_keys == ("en", "de")
    examples = list(builder.as_dataset(split="validation", shuffle_files=False))
    assert [ex["de"].numpy().decode() for ex in examples] == [
        line("val", "de", i) for i in range(3)
    ]
    assert [ex["en"].numpy().decode() for ex in examples] == [
        line("val", "en", i) for i in range(3)
    ]


@pytest.mark.parametrize("src,tgt", [("en", "de"), ("de", "en")])
def test_corpus_picks_direction(folder, tmp_path, src, tgt):
    data_cfg = cfg(folder, tmp_path / "tfds", src, tgt)
    expected = [(line("train", src, i), line("train", tgt, i)) for i in range(5)]
    assert list(corpus.iter_pairs(data_cfg, "train")) == expected
    pairs = corpus.load_pairs(data_cfg, "test").as_numpy_iterator()
    assert [(s.decode(), t.decode()) for s, t in pairs] == [
        (line("test_2016_flickr", src, i), line("test_2016_flickr", tgt, i)) for i in range(2)
    ]


def test_iter_pairs_reads_a_folder_without_tfds(folder, tmp_path):
    # Straight from the files: no tfds preparation (and no TensorFlow) for the Grain path.
    data_cfg = cfg(folder, tmp_path / "tfds")
    assert list(corpus.iter_pairs(data_cfg, "validation")) == [
        (line("val", "en", i), line("val", "de", i)) for i in range(3)
    ]
    corpus.check_split(data_cfg, "validation")
    assert not (tmp_path / "tfds").exists()


def test_tf_data_reads_whichever_folder_is_configured(folder, tmp_path):
    # Straight from the files, like iter_pairs: a tfds build would be cached per language
    # pair and keep serving the first folder (a distilled or cleaned copy would be ignored).
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    (other / "train.de.gz").write_bytes(gzip.compress(b"".join(b"new %d\n" % i for i in range(5))))
    for source, expected in ((folder, line("train", "de", 0)), (other, "new 0")):
        data_cfg = cfg(source, tmp_path / "tfds")
        first = next(corpus.load_pairs(data_cfg, "train").as_numpy_iterator())
        assert first[1].decode() == expected == next(corpus.iter_pairs(data_cfg, "train"))[1]
    assert not (tmp_path / "tfds").exists()


def test_env_var_folder(folder, tmp_path, monkeypatch):
    monkeypatch.setenv(MULTI30K_ENV, str(folder))
    data_cfg = cfg("", tmp_path / "tfds")
    assert len(list(corpus.iter_pairs(data_cfg, "validation"))) == 3


def test_config_names():
    assert multi30k.config_name("de", "en") == multi30k.config_name("en", "de") == "en-de"
    assert multi30k.config_name("cs", "fr") == "fr-cs"
    assert len(multi30k.Multi30k.BUILDER_CONFIGS) == 6
    with pytest.raises(DataError, match="no language 'ja'; choose among en, de, fr, cs"):
        multi30k.config_name("en", "ja")
    with pytest.raises(DataError, match="both 'en'"):
        multi30k.config_name("en", "en")


def test_folder_lacking_files_is_an_error_not_a_download(folder, tmp_path):
    (folder / "val.de.gz").unlink()
    with pytest.raises(DataError, match=f"Multi30k folder {folder} lacks val.de.gz"):
        corpus.load_pairs(cfg(folder, tmp_path / "tfds"), "train")
    with pytest.raises(DataError, match="Multi30k folder not found"):
        corpus.load_pairs(cfg(tmp_path / "absent", tmp_path / "tfds"), "train")


def test_misaligned_files(folder, tmp_path):
    (folder / "train.de.gz").write_bytes(gzip.compress(b"only one line\n"))
    with pytest.raises(DataError) as info:
        corpus.load_pairs(cfg(folder, tmp_path / "tfds"), "train")
    message = str(info.value)
    assert f"{folder / 'train.en.gz'} has 5 lines" in message
    assert f"{folder / 'train.de.gz'} has 1 lines" in message


def test_no_local_folder_means_download(tmp_path, monkeypatch):
    monkeypatch.delenv(MULTI30K_ENV, raising=False)
    # The autouse fixture makes the download fail, as it would offline.
    with pytest.raises(DataError, match=r"could not download Multi30k \(ConnectionError\)"):
        corpus.load_pairs(cfg("", tmp_path / "tfds"), "train")


def test_unknown_split(folder, tmp_path):
    data_cfg = cfg(folder, tmp_path / "tfds")
    data_cfg.test = "test_2017"
    expected = "no split 'test_2017'; available: train, validation, test_2016"
    with pytest.raises(DataError, match=expected):
        corpus.load_pairs(data_cfg, "test")


def test_generic_tfds_format_reads_a_prepared_dataset(folder, tmp_path):
    data_dir = tmp_path / "tfds"
    builder = multi30k.Multi30k(config="en-de", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=multi30k.download_config(folder))
    data_cfg = DataConfig(
        format="tfds", tfds_name="multi30k/en-de", tfds_data_dir=str(data_dir), test="test_2016"
    )
    assert next(corpus.iter_pairs(data_cfg, "test")) == (
        line("test_2016_flickr", "en", 0),
        line("test_2016_flickr", "de", 0),
    )
    data_cfg.tgt_lang = "fr"
    with pytest.raises(
        DataError, match="multi30k/en-de/1.0.0 has no language 'fr'; available: de, en"
    ):
        corpus.load_pairs(data_cfg, "test")


def test_real_multi30k(multi30k_dir, tmp_path):
    data_cfg = cfg(multi30k_dir, tmp_path / "tfds")
    train = corpus.iter_pairs(data_cfg, "train")
    assert next(train) == (
        "Two young, White males are outside near many bushes.",
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    )
    assert count(corpus.load_pairs(data_cfg, "train")) == 29000
    assert count(corpus.load_pairs(data_cfg, "validation")) == 1014
    assert count(corpus.load_pairs(data_cfg, "test")) == 1000
    # tf.data reads the files line for line as Python does (iter_pairs, the Grain pipeline).
    files = corpus.iter_aligned(multi30k_dir / "val.en.gz", multi30k_dir / "val.de.gz")
    pairs = corpus.load_pairs(data_cfg, "validation").as_numpy_iterator()
    assert [(s.decode(), t.decode()) for s, t in pairs] == list(files)


def count(dataset) -> int:
    return sum(len(src) for src, _ in dataset.batch(4096).as_numpy_iterator())


def test_concurrent_preparations_take_turns(folder, tmp_path, monkeypatch):
    """Two trainings starting together: the second waits for the first's dataset instead of
    building its own and failing on tfds' final rename."""
    import threading
    import time

    prepare, active, overlaps = multi30k.Multi30k.download_and_prepare, [], []

    def slow_prepare(self, **kwargs):
        active.append(1)
        overlaps.append(len(active))
        time.sleep(0.5)  # long enough for the other thread to arrive meanwhile
        try:
            return prepare(self, **kwargs)
        finally:
            active.pop()

    monkeypatch.setattr(multi30k.Multi30k, "download_and_prepare", slow_prepare)
    # The download route (no local folder configured), served from the tiny folder.
    real_config = multi30k.download_config
    monkeypatch.setattr(multi30k, "download_config", lambda: real_config(folder))
    monkeypatch.delenv(MULTI30K_ENV, raising=False)
    data_cfg, loaded = cfg("", tmp_path / "tfds"), []
    threads = [
        threading.Thread(
            target=lambda: loaded.append(len(list(corpus.load_pairs(data_cfg, "train"))))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1]
    assert loaded == [5, 5]
