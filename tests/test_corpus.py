"""Reading parallel corpora: text-file pairs, .gz, TSV, and every bad-input error."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from nmt import corpus
from nmt.config import DataConfig
from nmt.errors import DataError

SRC = ["Ein Hund läuft.", "", "Zwei Katzen schlafen.", "  ", "Ende"]
TGT = ["A dog runs.", "", "Two cats sleep.", "  ", "End"]


def write(path: Path, lines: list[str] | bytes) -> Path:
    """Writes lines (or raw bytes), gzip-compressed when the name ends in .gz."""
    data = lines if isinstance(lines, bytes) else "".join(f"{x}\n" for x in lines).encode()
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def files_cfg(prefix: Path) -> DataConfig:
    return DataConfig(format="files", src_lang="de", tgt_lang="en", train=str(prefix))


def tsv_cfg(path: Path) -> DataConfig:
    return DataConfig(format="tsv", train=str(path))


def dataset_pairs(cfg: DataConfig, split: str = "train") -> list[tuple[str, str]]:
    dataset = corpus.load_pairs(cfg, split)
    return [(s.decode(), t.decode()) for s, t in dataset.as_numpy_iterator()]


@pytest.mark.parametrize("src_suffix,tgt_suffix", [("", ""), (".gz", ".gz"), ("", ".gz")])
def test_file_pairs_plain_and_gz(tmp_path, src_suffix, tgt_suffix):
    write(tmp_path / f"train.de{src_suffix}", SRC)
    write(tmp_path / f"train.en{tgt_suffix}", TGT)
    cfg = files_cfg(tmp_path / "train")
    assert list(corpus.iter_pairs(cfg, "train")) == list(zip(SRC, TGT, strict=True))
    assert dataset_pairs(cfg) == list(zip(SRC, TGT, strict=True))


def test_tsv_pairs_and_extra_columns(tmp_path):
    path = write(tmp_path / "c.tsv", ["Hallo\tHello", "\t", "a b\tc d\tattribution"])
    expected = [("Hallo", "Hello"), ("", ""), ("a b", "c d")]
    assert list(corpus.iter_pairs(tsv_cfg(path), "train")) == expected
    assert dataset_pairs(tsv_cfg(path)) == expected


def test_gz_tsv(tmp_path):
    path = write(tmp_path / "c.tsv.gz", ["x\ty", "ü\tu"])
    assert dataset_pairs(tsv_cfg(path)) == [("x", "y"), ("ü", "u")]


def test_crlf_and_missing_final_newline_read_the_same_both_ways(tmp_path):
    write(tmp_path / "t.de", b"eins\r\nzwei\r\ndrei")
    write(tmp_path / "t.en", b"one\ntwo\nthree")
    cfg = files_cfg(tmp_path / "t")
    expected = [("eins", "one"), ("zwei", "two"), ("drei", "three")]
    assert list(corpus.iter_pairs(cfg, "train")) == expected
    assert dataset_pairs(cfg) == expected


@pytest.mark.parametrize("longer", ["src", "tgt"])
def test_line_count_mismatch_names_both_files_and_counts(tmp_path, longer):
    src = write(tmp_path / "m.de", SRC if longer == "src" else SRC[:3])
    tgt = write(tmp_path / "m.en.gz", TGT if longer == "tgt" else TGT[:3])
    counts = (5, 3) if longer == "src" else (3, 5)
    expected = f"{src} has {counts[0]} lines, {tgt} has {counts[1]} lines"
    cfg = files_cfg(tmp_path / "m")
    with pytest.raises(DataError, match="differ in length") as info:
        list(corpus.iter_pairs(cfg, "train"))
    assert expected in str(info.value)
    with pytest.raises(DataError) as info:
        corpus.load_pairs(cfg, "train")
    assert expected in str(info.value)


@pytest.mark.parametrize("name", ["u.de", "u.de.gz"])
def test_undecodable_bytes_name_file_and_line(tmp_path, name):
    # The message itself is tested with nmt.textio; here: it reaches the corpus reader.
    src = write(tmp_path / name, b"gut\nschlecht \xff\xfe\n")
    write(tmp_path / "u.en", ["good", "bad"])
    with pytest.raises(DataError, match=f"{src}:2: not valid UTF-8"):
        list(corpus.iter_pairs(files_cfg(tmp_path / "u"), "train"))


def test_missing_file(tmp_path):
    write(tmp_path / "only.de", SRC)
    cfg = files_cfg(tmp_path / "only")
    with pytest.raises(DataError, match=r"file not found: .*only\.en \(nor .*only\.en\.gz\)"):
        corpus.iter_pairs(cfg, "train")
    with pytest.raises(DataError, match="file not found"):
        corpus.load_pairs(tsv_cfg(tmp_path / "missing.tsv"), "train")


def test_tsv_line_without_tab(tmp_path):
    path = write(tmp_path / "c.tsv", ["a\tb", "no tab here", "c\td"])
    with pytest.raises(DataError, match=f"{path}:2: no tab"):
        list(corpus.iter_pairs(tsv_cfg(path), "train"))


def bad_inputs(tmp_path: Path) -> dict[str, DataConfig]:
    write(tmp_path / "mis.de", SRC)
    write(tmp_path / "mis.en", TGT[:-1])
    write(tmp_path / "dec.de", b"ok\n\xc3\n")
    write(tmp_path / "dec.en", ["ok", "ok"])
    return {
        "mismatch": files_cfg(tmp_path / "mis"),
        "undecodable": files_cfg(tmp_path / "dec"),
        "no tab": tsv_cfg(write(tmp_path / "t.tsv", ["a\tb", "ab"])),
        "missing": files_cfg(tmp_path / "absent"),
    }


@pytest.mark.parametrize("case", ["mismatch", "undecodable", "no tab", "missing"])
def test_load_pairs_raises_before_any_iteration(tmp_path, case):
    with pytest.raises(DataError):
        corpus.load_pairs(bad_inputs(tmp_path)[case], "train")


@pytest.mark.parametrize("case", ["mismatch", "undecodable", "no tab", "missing"])
def test_check_split_finds_what_iterating_would(tmp_path, case):
    # The Grain pipeline calls it before reading: bad input fails before training starts.
    with pytest.raises(DataError):
        corpus.check_split(bad_inputs(tmp_path)[case], "train")


def test_validation_cache_notices_a_changed_file(tmp_path):
    write(tmp_path / "c.de", SRC)
    tgt = write(tmp_path / "c.en", TGT)
    cfg = files_cfg(tmp_path / "c")
    corpus.load_pairs(cfg, "train")
    write(tgt, TGT + ["one more"])
    os.utime(tgt, ns=(0, 0))  # a different mtime even on coarse-grained file systems
    with pytest.raises(DataError, match="has 6 lines"):
        corpus.load_pairs(cfg, "train")


def test_splits_use_their_own_prefix(tmp_path):
    write(tmp_path / "dev.de", ["x"])
    write(tmp_path / "dev.en", ["y"])
    cfg = files_cfg(tmp_path / "train")
    cfg.validation = str(tmp_path / "dev")
    assert corpus.split_name(cfg, "validation") == str(tmp_path / "dev")
    assert list(corpus.iter_pairs(cfg, "validation")) == [("x", "y")]
    with pytest.raises(DataError, match="unknown split 'dev'"):
        corpus.split_name(cfg, "dev")


def test_tfds_unknown_dataset(tmp_path):
    cfg = DataConfig(format="tfds", tfds_name="no_such_dataset_xyz", tfds_data_dir=str(tmp_path))
    with pytest.raises(DataError, match="unknown tfds dataset 'no_such_dataset_xyz'"):
        corpus.load_pairs(cfg, "train")
