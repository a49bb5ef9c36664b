"""Reading parallel corpora: text-file pairs (.gz ok), TSV files, tfds datasets, Multi30k.

Two ways in, giving the same pairs in the same order:

- `iter_pairs` streams `(src, tgt)` Python strings (tokenizer training, evaluation, the
  Grain pipeline). No TensorFlow for `files`, `tsv` and `multi30k` from a local folder,
  which is read straight from its files; only a Multi30k download and `tfds` need
  tensorflow_datasets.
- `load_pairs` returns a `tf.data.Dataset` of scalar `tf.string` pairs (the tf.data
  pipeline). It reads files in-graph, which is what keeps that pipeline fast.

`check_split` streams through a split's files once in Python to check alignment, decoding
and tabs, so every bad-input error is a `DataError` raised before any pipeline runs;
`load_pairs` calls it, the Grain pipeline too.

Empty lines are passed through: the pipeline filters and counts them.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nmt import config as config_lib
from nmt.config import DataConfig
from nmt.datasets import multi30k_layout
from nmt.errors import DataError, NmtError
from nmt.textio import is_gzip, iter_aligned, mismatch_error, read_lines

if TYPE_CHECKING:
    import tensorflow as tf

SPLITS = ("train", "validation", "test")
TENSORFLOW_EXTRA = 'pip install "nmt[tensorflow]"'
_MULTI30K_DOWNLOAD = (
    f"downloading Multi30k (neither data.multi30k_dir nor ${config_lib.MULTI30K_ENV} is set)"
)

# (kind, resolved path, mtime_ns, size) -> line count, for files that passed validation.
_VALIDATED: dict[tuple[str, str, int, int], int] = {}


def split_name(data_cfg: DataConfig, split: str) -> str:
    """The configured name, prefix or path of `split` ("train", "validation" or "test").

    Raises:
        DataError: For any other split.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of " + ", ".join(SPLITS))
    return getattr(data_cfg, split)


def iter_tsv(path: str | Path) -> Iterator[tuple[str, str]]:
    """Streams `(src, tgt)` from a `src<TAB>tgt` file; columns after the second are ignored.

    Raises:
        DataError: At once if the file is missing; while iterating if it is unreadable or
            a line has no tab (naming file and line).
    """
    return _tsv_fields(read_lines(path), path)


def _tsv_fields(lines: Iterator[str], path: Any) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(lines, 1):
        fields = line.split("\t", 2)
        if len(fields) < 2:
            raise DataError(f"{path}:{number}: no tab between source and target")
        yield fields[0], fields[1]


def pair_paths(prefix: str | Path, src_lang: str, tgt_lang: str) -> tuple[Path, Path]:
    """The files PREFIX.SRC_LANG and PREFIX.TGT_LANG, each possibly with a .gz suffix.

    Raises:
        DataError: If neither the plain nor the .gz file exists.
    """
    return _lang_path(prefix, src_lang), _lang_path(prefix, tgt_lang)


def _lang_path(prefix: str | Path, lang: str) -> Path:
    plain = Path(f"{prefix}.{lang}")
    for path in (plain, Path(f"{plain}.gz")):
        if path.is_file():
            return path
    raise DataError(f"file not found: {plain} (nor {plain}.gz)")


def _import_extra(module: str, what: str) -> Any:
    """Imports a module of the tensorflow extra, or says in one line that `what` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise NmtError(
            f"{what} needs the tensorflow extra ({module} cannot be imported): " + TENSORFLOW_EXTRA
        ) from None


def iter_pairs(data_cfg: DataConfig, split: str) -> Iterator[tuple[str, str]]:
    """Streams the `(src, tgt)` sentence pairs of a split in corpus order.

    Args:
        data_cfg: Where the corpus comes from (`format`, languages, split names or paths).
        split: "train", "validation" or "test".

    Returns:
        An iterator of `(src, tgt)` strings, empty lines included.

    Raises:
        DataError: For missing, misaligned, undecodable or malformed input; missing files
            and unknown splits at once, the rest while iterating.
    """
    name = split_name(data_cfg, split)
    if paths := _aligned_paths(data_cfg, name):
        return iter_aligned(*paths)
    if data_cfg.format == "tsv":
        return iter_tsv(name)
    if data_cfg.format == "multi30k":
        _import_extra("tensorflow_datasets", _MULTI30K_DOWNLOAD)
    return _decoded(load_pairs(data_cfg, split))


def _aligned_paths(data_cfg: DataConfig, name: str) -> tuple[Path, Path] | None:
    """The source and target files of split `name` when the corpus is a pair of text files
    (format `files`, or `multi30k` from a local folder); None for `tsv` and tfds datasets."""
    if data_cfg.format == "files":
        return pair_paths(name, data_cfg.src_lang, data_cfg.tgt_lang)
    if data_cfg.format == "multi30k" and config_lib.multi30k_dir(data_cfg):
        return _multi30k_paths(data_cfg, name)
    return None


def train_files_sha256(data_cfg: DataConfig) -> str | None:
    """One SHA-256 over the bytes of the train split's local files, so that a run can tell
    whether its tokenizer was trained on these files; None for tfds datasets."""
    name = split_name(data_cfg, "train")
    paths = _aligned_paths(data_cfg, name) or ((Path(name),) if data_cfg.format == "tsv" else ())
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _multi30k_paths(data_cfg: DataConfig, split: str) -> tuple[Path, Path]:
    """The files of a split in the configured local Multi30k folder, which must hold them."""
    folder = Path(config_lib.multi30k_dir(data_cfg))
    name = multi30k_layout.config_name(data_cfg.src_lang, data_cfg.tgt_lang)
    paths = multi30k_layout.split_paths(folder, split, data_cfg.src_lang, data_cfg.tgt_lang)
    _check_multi30k_dir(folder, name)
    return paths


def check_split(data_cfg: DataConfig, split: str) -> None:
    """Streams once through a split's files (cached per path, mtime and size) so that bad
    input raises here rather than in the middle of training.

    Raises:
        DataError: For missing, misaligned, undecodable or malformed files. Prepared tfds
            datasets (format `tfds`, a downloaded Multi30k) are not checked again.
    """
    name = split_name(data_cfg, split)
    if paths := _aligned_paths(data_cfg, name):
        _validate_aligned(*paths)
    elif data_cfg.format == "tsv":
        _validate(Path(name), "tsv")


def _decoded(dataset: tf.data.Dataset) -> Iterator[tuple[str, str]]:
    for src, tgt in dataset.as_numpy_iterator():
        yield src.decode("utf-8"), tgt.decode("utf-8")


def load_pairs(data_cfg: DataConfig, split: str) -> tf.data.Dataset:
    """A dataset of `(src, tgt)` scalar `tf.string` pairs of a split, in corpus order.

    Files are validated (`check_split`) before the dataset is built, so bad input raises
    here rather than in the middle of training. Needs TensorFlow.

    Args:
        data_cfg: Where the corpus comes from.
        split: "train", "validation" or "test".

    Returns:
        The dataset; it reads files in-graph, or a prepared tfds dataset.

    Raises:
        DataError: For missing, misaligned, undecodable or malformed input.
        NmtError: TensorFlow (or for tfds datasets tensorflow_datasets) is not installed.
    """
    name = split_name(data_cfg, split)
    if data_cfg.format == "tfds":
        return _tfds_pairs(data_cfg, name)
    tf = _import_extra("tensorflow", "the tf.data input pipeline")
    check_split(data_cfg, split)
    # A local Multi30k folder is read straight from its files too: the tfds build of it
    # would be cached by language pair only, and keep serving the first folder it read.
    if paths := _aligned_paths(data_cfg, name):
        return tf.data.Dataset.zip(*(_text_lines(path) for path in paths))
    if data_cfg.format == "tsv":
        return _text_lines(Path(name)).map(_split_tab, num_parallel_calls=tf.data.AUTOTUNE)
    return _multi30k_pairs(data_cfg, name)


def _text_lines(path: Path) -> tf.data.Dataset:
    import tensorflow as tf

    return tf.data.TextLineDataset(
        str(path), compression_type="GZIP" if is_gzip(path) else "", buffer_size=1 << 20
    )


def _split_tab(line: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    import tensorflow as tf

    fields = tf.strings.split(line, "\t", maxsplit=2)
    return fields[0], fields[1]


def _validate_aligned(src_path: Path, tgt_path: Path) -> None:
    src_count, tgt_count = _validate(src_path, "text"), _validate(tgt_path, "text")
    if src_count != tgt_count:
        raise mismatch_error(src_path, src_count, tgt_path, tgt_count)


def _validate(path: Path, kind: str) -> int:
    """Streams through a file once (cached per path, mtime and size); returns its lines."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    stat = path.stat()
    key = (kind, str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _VALIDATED:
        lines = iter_tsv(path) if kind == "tsv" else read_lines(path)
        _VALIDATED[key] = sum(1 for _ in lines)
    return _VALIDATED[key]


def _multi30k_pairs(data_cfg: DataConfig, split: str) -> tf.data.Dataset:
    """Downloads and prepares (once per tfds data_dir) and loads the bundled Multi30k
    builder: the route without a local folder."""
    name = multi30k_layout.config_name(data_cfg.src_lang, data_cfg.tgt_lang)
    multi30k_layout.split_stem(split)  # an unknown split fails before any download
    _import_extra("tensorflow_datasets", _MULTI30K_DOWNLOAD)
    from nmt.datasets import multi30k  # tfds is slow to import; only needed here

    def make() -> Any:
        return multi30k.Multi30k(config=name, data_dir=data_cfg.tfds_data_dir or None)

    builder = _prepared(make(), make, multi30k.download_config())
    return _read_split(builder, split, data_cfg.src_lang, data_cfg.tgt_lang)


def _prepared(builder: Any, make_builder: Callable[[], Any], download_config: Any) -> Any:
    """`builder` if its dataset is built (its folder may be read-only), else a builder made
    and prepared while holding a lock beside that folder. Two trainings started together
    would otherwise both build the dataset, and the slower fails on tfds' final rename
    ("Destination ... already exists"); the second now waits, then makes its builder anew
    (the earlier one would not see the splits written meanwhile)."""
    versioned = Path(builder.data_dir)
    if (versioned / "dataset_info.json").is_file():  # tfds renames a finished build here
        return builder
    versioned.parent.mkdir(parents=True, exist_ok=True)
    with open(versioned.parent / f".{versioned.name}.prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        builder = make_builder()
        builder.download_and_prepare(download_config=download_config)
    return builder


def _check_multi30k_dir(folder: Path, name: str) -> None:
    # A configured folder must be used, never silently replaced by a download.
    if not folder.is_dir():
        raise DataError(f"Multi30k folder not found: {folder}")
    missing = multi30k_layout.missing_files(folder, tuple(name.split("-")))
    if missing:
        raise DataError(f"Multi30k folder {folder} lacks " + ", ".join(missing))


def _tfds_pairs(data_cfg: DataConfig, split: str) -> tf.data.Dataset:
    """Prepares and loads any tfds translation dataset by name."""
    tfds = _import_extra("tensorflow_datasets", "data.format=tfds")  # slow: only here

    try:
        builder = tfds.builder(data_cfg.tfds_name, data_dir=data_cfg.tfds_data_dir or None)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown tfds dataset {data_cfg.tfds_name!r}") from None
    # Features are known before preparing: a wrong language fails before any download.
    _check_languages(builder, data_cfg.src_lang, data_cfg.tgt_lang)
    builder = _prepared(
        builder,
        lambda: tfds.builder(data_cfg.tfds_name, data_dir=data_cfg.tfds_data_dir or None),
        tfds.download.DownloadConfig(try_download_gcs=False),
    )
    return _read_split(builder, split, data_cfg.src_lang, data_cfg.tgt_lang)


def _check_languages(builder: Any, src_lang: str, tgt_lang: str) -> None:
    features = builder.info.features
    keys = sorted(features.keys()) if hasattr(features, "keys") else []
    for lang in (src_lang, tgt_lang):
        if lang not in keys:
            raise DataError(
                f"{builder.info.full_name} has no language {lang!r}; available: "
                + (", ".join(keys) or "none (not a translation dataset)")
            )


def _read_split(builder: Any, split: str, src_lang: str, tgt_lang: str) -> tf.data.Dataset:
    """Reads a prepared translation builder's split as `(src, tgt)`, in stored order."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    _check_languages(builder, src_lang, tgt_lang)
    splits = sorted(builder.info.splits.keys())
    if split not in splits:
        raise DataError(
            f"{builder.info.full_name} has no split {split!r}; available: " + ", ".join(splits)
        )
    # No tfds autocache: caching is the pipeline's decision, and a partly read cache warns.
    read_config = tfds.ReadConfig(try_autocache=False)
    dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
    return dataset.map(lambda ex: (ex[src_lang], ex[tgt_lang]), num_parallel_calls=tf.data.AUTOTUNE)
