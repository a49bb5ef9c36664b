"""The input pipeline: one definition of the stages, two engines.

- `nmt.pipeline.stages`: the rules (length filter and its counts, BOS/EOS shift, padded
  widths, batch sizes, bucketing order, per-epoch shuffle seeds), pure Python.
- `nmt.pipeline.tfdata`: the tf.data engine, in-graph tokenization; the default under
  `KERAS_BACKEND=tensorflow`.
- `nmt.pipeline.grain_engine`: the Grain engine, `sentencepiece` in Python; the default
  under the other backends, and it never imports TensorFlow.

With shuffling off both engines yield identical batches and the same counts. Training uses
`make_batches` and `count_split`; each engine is imported only when used.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from nmt import corpus
from nmt.config import DataConfig, TrainingConfig
from nmt.pipeline.stages import bucket_batch_sizes, describe_counts, epoch_seed, padded_lengths
from nmt.tokenizer import Tokenizer

__all__ = [
    "ENGINES",
    "bucket_batch_sizes",
    "count_filtered",
    "count_split",
    "default_engine",
    "describe_counts",
    "epoch_seed",
    "make_batches",
    "make_dataset",
    "padded_lengths",
]

ENGINES = ("tfdata", "grain")


def default_engine() -> str:
    """ "tfdata" under the TensorFlow Keras backend, else "grain"."""
    import keras

    return "tfdata" if keras.backend.backend() == "tensorflow" else "grain"


def _engine(engine: str | None) -> str:
    engine = engine or default_engine()
    if engine not in ENGINES:
        raise ValueError(f"unknown pipeline engine {engine!r}; choose one of {ENGINES}")
    return engine


def make_batches(
    data_cfg: DataConfig,
    train_cfg: TrainingConfig,
    split: str,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    epoch: int | None = None,
    skip: int = 0,
    engine: str | None = None,
) -> Any:
    """The padded, bucketed id batches of a split, for `model.fit` / `evaluate`.

    Args:
        data_cfg: The corpus and its length limits.
        train_cfg: Batching and shuffling settings.
        split: "train", "validation" or "test".
        src_tok: Source tokenizer.
        tgt_tok: Target tokenizer (may be the same object).
        epoch: The training epoch whose shuffle order to produce; None: no shuffling.
        skip: Batches to drop at the start: a resumed epoch's consumed batches.
        engine: "tfdata" or "grain"; None picks by Keras backend (`default_engine`).
            Keras' TensorFlow backend cannot fit on Grain batches of varying widths.

    Returns:
        A `tf.data.Dataset` or a `grain.IterDataset` of `((src_ids, tgt_in_ids),
        tgt_out_ids)`, int32 `(batch, len)`; re-iterable, each pass the same batches.

    Raises:
        DataError: Bad input files (checked before anything is read for training).
    """
    if _engine(engine) == "tfdata":
        from nmt.pipeline import tfdata

        pairs = corpus.load_pairs(data_cfg, split)
        ds = tfdata.make_dataset(pairs, src_tok, tgt_tok, data_cfg, train_cfg, epoch)
        return ds.skip(skip) if skip else ds
    from nmt.pipeline import grain_engine

    corpus.check_split(data_cfg, split)
    open_pairs = functools.partial(corpus.iter_pairs, data_cfg, split)
    return grain_engine.make_dataset(
        open_pairs, src_tok, tgt_tok, data_cfg, train_cfg, epoch=epoch, skip=skip
    )


def count_split(
    data_cfg: DataConfig,
    split: str,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    engine: str | None = None,
) -> dict[str, int]:
    """What `make_batches` keeps and drops from a split (see `count_filtered`)."""
    if _engine(engine) == "tfdata":
        return count_filtered(corpus.load_pairs(data_cfg, split), src_tok, tgt_tok, data_cfg)
    corpus.check_split(data_cfg, split)
    return count_filtered(corpus.iter_pairs(data_cfg, split), src_tok, tgt_tok, data_cfg)


def count_filtered(
    pairs: Any, src_tok: Tokenizer, tgt_tok: Tokenizer, data_cfg: DataConfig
) -> dict[str, int]:
    """Counts the pairs the pipeline keeps and drops, in one streaming pass.

    Args:
        pairs: A `tf.data.Dataset` of scalar tf.string pairs (`corpus.load_pairs`, counted
            in-graph) or any iterable of `(src, tgt)` strings (`corpus.iter_pairs`).
        src_tok: Source tokenizer.
        tgt_tok: Target tokenizer.
        data_cfg: The length limits.

    Returns:
        `{"total", "empty", "too_long", "kept"}` pair counts (`kept = total - empty -
        too_long`), plus the limits `max_src_len` / `max_tgt_len` for `describe_counts`.
    """
    tf = sys.modules.get("tensorflow")  # a tf.data.Dataset means TensorFlow is loaded
    if tf is not None and isinstance(pairs, tf.data.Dataset):
        from nmt.pipeline import tfdata

        return tfdata.count_filtered(pairs, src_tok, tgt_tok, data_cfg)
    from nmt.pipeline import grain_engine

    return grain_engine.count_filtered(pairs, src_tok, tgt_tok, data_cfg)


def make_dataset(
    pairs: Any,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    data_cfg: DataConfig,
    train_cfg: TrainingConfig,
    epoch: int | None = None,
) -> Any:
    """The tf.data engine on a `tf.data.Dataset` of text pairs (`tfdata.make_dataset`)."""
    from nmt.pipeline import tfdata

    return tfdata.make_dataset(pairs, src_tok, tgt_tok, data_cfg, train_cfg, epoch)
