"""The tf.data engine: tokenize in-graph -> filter -> shift -> shuffle -> bucket -> prefetch.

The default under `KERAS_BACKEND=tensorflow`. Every rule (filter, shift, bucket widths and
batch sizes, shuffle seed) comes from `nmt.pipeline.stages`; this module only expresses them
as tf.data operations. Determinism: the shuffle is seeded per epoch and never reshuffled,
maps run in parallel with `deterministic=True` and bucketing is order-preserving given its
input, so epoch `e` yields the same batches in every process. Evaluation (`epoch=None`) does
not shuffle; it buckets the same way, so batches come in a deterministic order that is not
the corpus order.
"""

from __future__ import annotations

import tensorflow as tf

import nmt.pipeline.stages as stages  # not `from nmt.pipeline`: no import cycle with __init__
from nmt.config import PAD_ID, DataConfig, TrainingConfig
from nmt.tokenizer import Tokenizer

AUTOTUNE = tf.data.AUTOTUNE
# Tokenizing a few hundred sentences per call amortises the per-op overhead of tf.data.
_TOKENIZE_BATCH = 512


def _tokenized_batches(
    pairs: tf.data.Dataset, src_tok: Tokenizer, tgt_tok: Tokenizer
) -> tf.data.Dataset:
    """Batches of `(x, y)` ragged subword ids `(batch, (len))`, in input order."""

    def tokenize(src: tf.Tensor, tgt: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
        return src_tok.tokenize(src), tgt_tok.tokenize(tgt)

    return pairs.batch(_TOKENIZE_BATCH).map(
        tokenize, num_parallel_calls=AUTOTUNE, deterministic=True
    )


def _concat(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.concat([a, b], 0)


def _shift(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    return stages.shift(x, y, _concat)


def _bucket(
    ds: tf.data.Dataset, data_cfg: DataConfig, train_cfg: TrainingConfig
) -> tf.data.Dataset:
    """Groups `(src, tgt_in, tgt_out)` by shared padded length and pads to that length."""
    lengths = stages.padded_lengths(data_cfg, train_cfg)
    # Bucket k holds lengths in (lengths[k-1], lengths[k]] (`stages.bucket_index`); with
    # pad_to_bucket_boundary, tf.data pads to boundary - 1, hence boundaries at length + 1.
    boundaries = [length + 1 for length in lengths]
    # The bucket past the last boundary stays empty: the length filter ran before.
    sizes = stages.bucket_batch_sizes(data_cfg, train_cfg) + [1]

    def pair_length(src: tf.Tensor, tgt_in: tf.Tensor, tgt_out: tf.Tensor) -> tf.Tensor:
        return stages.pair_length(tf.shape(src)[0], tf.shape(tgt_in)[0], tf.maximum)

    return ds.bucket_by_sequence_length(
        pair_length,
        bucket_boundaries=boundaries,
        bucket_batch_sizes=sizes,
        padding_values=(PAD_ID, PAD_ID, PAD_ID),
        pad_to_bucket_boundary=True,
    )


def make_dataset(
    pairs: tf.data.Dataset,
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    data_cfg: DataConfig,
    train_cfg: TrainingConfig,
    epoch: int | None = None,
) -> tf.data.Dataset:
    """Turns text pairs into padded, bucketed id batches for `model.fit` / `evaluate`.

    Args:
        pairs: Elements `(src, tgt)`, scalar tf.string each (`corpus.load_pairs`).
        src_tok: Source tokenizer.
        tgt_tok: Target tokenizer (may be the same object as `src_tok`).
        data_cfg: Length limits `max_src_len` / `max_tgt_len` (`stages.drop_flags`).
        train_cfg: Batching (`batch_by`, `batch_size`, `max_tokens`, `bucket_width`) and
            shuffling (`seed`, `shuffle_buffer`).
        epoch: The training epoch whose shuffle order to produce; None (evaluation) keeps
            the corpus order.

    Returns:
        Dataset of `((src_ids, tgt_in_ids), tgt_out_ids)`: int32 `(batch, len)` tensors,
        right-padded with 0, `len` in `stages.padded_lengths(data_cfg, train_cfg)` and the
        same for all three tensors of a batch.
    """
    if stages.shuffles(epoch, train_cfg):
        pairs = pairs.shuffle(
            train_cfg.shuffle_buffer,
            seed=stages.epoch_seed(train_cfg.seed, epoch),
            reshuffle_each_iteration=False,
        )
    ds = _tokenized_batches(pairs, src_tok, tgt_tok).unbatch()

    def keep(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        empty, too_long = stages.drop_flags(tf.size(x), tf.size(y), data_cfg)
        return ~(empty | too_long)

    ds = ds.filter(keep).map(_shift, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = _bucket(ds, data_cfg, train_cfg)
    ds = ds.map(lambda src, tgt_in, tgt_out: ((src, tgt_in), tgt_out))
    return ds.prefetch(AUTOTUNE)


def count_filtered(
    pairs: tf.data.Dataset, src_tok: Tokenizer, tgt_tok: Tokenizer, data_cfg: DataConfig
) -> dict[str, int]:
    """Counts what `make_dataset` keeps and drops, in one streaming pass over `pairs`.

    Returns:
        `stages.make_counts`: `{"total", "empty", "too_long", "kept"}` pair counts, plus the
        limits `max_src_len` / `max_tgt_len` for `stages.describe_counts`.
    """

    def batch_counts(x: tf.RaggedTensor, y: tf.RaggedTensor) -> tf.Tensor:
        empty, too_long = stages.drop_flags(x.row_lengths(), y.row_lengths(), data_cfg)
        flags = tf.stack([tf.ones_like(empty), empty, too_long])
        return tf.reduce_sum(tf.cast(flags, tf.int64), axis=1)  # (total, empty, too_long)

    counts = _tokenized_batches(pairs, src_tok, tgt_tok).map(batch_counts)
    total, empty, too_long = (
        counts.reduce(tf.zeros([3], tf.int64), lambda acc, c: acc + c).numpy().tolist()
    )
    return stages.make_counts(total, empty, too_long, data_cfg)
