"""tf.data input pipeline: tokenize -> shift -> filter -> shuffle -> bucket -> pad -> prefetch.

Each element of the result is `((src_ids, tgt_in_ids), tgt_out_ids)`, int32, right-padded
with PAD (0), for a sentence pair with subword ids `x` (source) and `y` (target):

    src_ids    = x + [EOS]       (batch, len)
    tgt_in_ids = [BOS] + y       (batch, len)   teacher-forcing decoder input
    tgt_out_ids = y + [EOS]      (batch, len)   labels

Bucketing and padding. Source and target share one padded length per batch: a pair goes
into the bucket of `max(len(x) + 1, len(y) + 1)` and all three tensors are padded up to that
bucket's length, a multiple of `training.bucket_width`. So every batch has shape
`(batch, L)` with `L` in `padded_lengths(...)` = `[w, 2w, ..., n*w]`, the smallest multiple
of `w` that fits the longest allowed pair. Compiled train steps (tf.function, XLA) thus see at
most `n` sequence shapes (times one smaller batch size per bucket at the end of an epoch),
instead of `n * n` with separate source and target buckets. The cost is extra padding on the
shorter side when source and target lengths differ a lot; padding is masked, and for
Multi30k-like pairs the two lengths are close.

Batch sizes: `training.batch_size` sentences per batch, or with `training.batch_by:
tokens` a per-bucket `max(1, training.max_tokens // L)` sentences, so each of the three
tensors holds at most `max_tokens` positions (padding included).

Determinism: a training epoch's order is a pure function of `training.seed` and the epoch
number (a seeded shuffle, never reshuffled), maps run in parallel with `deterministic=True`
and bucketing is order-preserving given its input, so epoch `e` yields the same batches in
every run and in every process. That is what lets a resumed run skip exactly the batches
its checkpoint had consumed. Evaluation (`epoch=None`) does not shuffle; it buckets the
same way, so batches come in a deterministic order that is not the corpus order.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from nmt.config import BOS_ID, EOS_ID, PAD_ID, DataConfig, TrainingConfig
from nmt.tokenizer import Tokenizer

AUTOTUNE = tf.data.AUTOTUNE
# Tokenizing a few hundred sentences per call amortises the per-op overhead of tf.data.
_TOKENIZE_BATCH = 512


def padded_lengths(data_cfg: DataConfig, train_cfg: TrainingConfig) -> list[int]:
    """The sequence lengths batches are padded to: multiples of `train_cfg.bucket_width`.

    The last one is the smallest multiple that holds the longest pair the length filter
    keeps (`max(max_src_len, max_tgt_len) + 1` tokens, the +1 being EOS or BOS).
    """
    width = train_cfg.bucket_width
    longest = max(data_cfg.max_src_len, data_cfg.max_tgt_len) + 1
    return [width * k for k in range(1, math.ceil(longest / width) + 1)]


def bucket_batch_sizes(data_cfg: DataConfig, train_cfg: TrainingConfig) -> list[int]:
    """Sentences per batch for each entry of `padded_lengths` (token budget or fixed)."""
    lengths = padded_lengths(data_cfg, train_cfg)
    if train_cfg.batch_by == "tokens":
        return [max(1, train_cfg.max_tokens // length) for length in lengths]
    return [train_cfg.batch_size] * len(lengths)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: distinct per epoch, the same in every run."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _tokenized_batches(
    pairs: tf.data.Dataset, src_tok: Tokenizer, tgt_tok: Tokenizer
) -> tf.data.Dataset:
    """Batches of `(x, y)` ragged subword ids `(batch, (len))`, in input order."""

    def tokenize(src: tf.Tensor, tgt: tf.Tensor) -> tuple[tf.RaggedTensor, tf.RaggedTensor]:
        return src_tok.tokenize(src), tgt_tok.tokenize(tgt)

    return pairs.batch(_TOKENIZE_BATCH).map(
        tokenize, num_parallel_calls=AUTOTUNE, deterministic=True
    )


def _empty_and_too_long(
    x_len: tf.Tensor, y_len: tf.Tensor, data_cfg: DataConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """Why a pair is dropped. Whitespace-only text has no tokens, so it counts as empty.

    A pair that is both empty on one side and too long on the other counts as empty only,
    so the two counts add up to the number of dropped pairs.
    """
    empty = (x_len == 0) | (y_len == 0)
    too_long = ~empty & ((x_len > data_cfg.max_src_len) | (y_len > data_cfg.max_tgt_len))
    return empty, too_long


def _shift(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """`(x, y)` -> `(x + [EOS], [BOS] + y, y + [EOS])`, each 1-D int32."""
    eos = tf.constant([EOS_ID], tf.int32)
    bos = tf.constant([BOS_ID], tf.int32)
    return tf.concat([x, eos], 0), tf.concat([bos, y], 0), tf.concat([y, eos], 0)


def _bucket(
    ds: tf.data.Dataset, data_cfg: DataConfig, train_cfg: TrainingConfig
) -> tf.data.Dataset:
    """Groups `(src, tgt_in, tgt_out)` by shared padded length and pads to that length."""
    lengths = padded_lengths(data_cfg, train_cfg)
    # Bucket k holds lengths in (lengths[k-1], lengths[k]]; with pad_to_bucket_boundary,
    # tf.data pads to boundary - 1, hence boundaries at length + 1.
    boundaries = [length + 1 for length in lengths]
    # The bucket past the last boundary stays empty: the length filter ran before.
    sizes = bucket_batch_sizes(data_cfg, train_cfg) + [1]

    def pair_length(src: tf.Tensor, tgt_in: tf.Tensor, tgt_out: tf.Tensor) -> tf.Tensor:
        return tf.maximum(tf.shape(src)[0], tf.shape(tgt_in)[0])

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
        pairs: Elements `(src, tgt)`, scalar tf.string each.
        src_tok: Source tokenizer.
        tgt_tok: Target tokenizer (may be the same object as `src_tok`).
        data_cfg: Length limits `max_src_len` / `max_tgt_len` (subword tokens, EOS/BOS
            not counted); longer pairs and pairs with an empty side are dropped.
        train_cfg: Batching (`batch_by`, `batch_size`, `max_tokens`, `bucket_width`) and
            shuffling (`seed`, `shuffle_buffer`).
        epoch: The training epoch whose shuffle order to produce; None (evaluation) keeps
            the corpus order.

    Returns:
        Dataset of `((src_ids, tgt_in_ids), tgt_out_ids)`: int32 `(batch, len)` tensors,
        right-padded with 0, `len` in `padded_lengths(data_cfg, train_cfg)` and the same
        for all three tensors of a batch.
    """
    if epoch is not None and train_cfg.shuffle_buffer > 1:
        pairs = pairs.shuffle(
            train_cfg.shuffle_buffer,
            seed=epoch_seed(train_cfg.seed, epoch),
            reshuffle_each_iteration=False,
        )
    ds = _tokenized_batches(pairs, src_tok, tgt_tok).unbatch()

    def keep(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        empty, too_long = _empty_and_too_long(tf.size(x), tf.size(y), data_cfg)
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
        `{"total", "empty", "too_long", "kept"}` pair counts (`kept = total - empty -
        too_long`), plus the limits `max_src_len` / `max_tgt_len` for `describe_counts`.
    """

    def batch_counts(x: tf.RaggedTensor, y: tf.RaggedTensor) -> tf.Tensor:
        empty, too_long = _empty_and_too_long(x.row_lengths(), y.row_lengths(), data_cfg)
        flags = tf.stack([tf.ones_like(empty), empty, too_long])
        return tf.reduce_sum(tf.cast(flags, tf.int64), axis=1)  # (total, empty, too_long)

    counts = _tokenized_batches(pairs, src_tok, tgt_tok).map(batch_counts)
    total, empty, too_long = (
        counts.reduce(tf.zeros([3], tf.int64), lambda acc, c: acc + c).numpy().tolist()
    )
    return {
        "total": total,
        "empty": empty,
        "too_long": too_long,
        "kept": total - empty - too_long,
        "max_src_len": data_cfg.max_src_len,
        "max_tgt_len": data_cfg.max_tgt_len,
    }


def describe_counts(counts: dict[str, int]) -> str:
    """One log line, e.g. `read 29000 pairs: kept 28990, dropped 3 empty, 7 over the
    length limit (64/64 tokens)`."""
    line = (
        f"read {counts['total']} pairs: kept {counts['kept']}, dropped {counts['empty']} "
        f"empty, {counts['too_long']} over the length limit"
    )
    if "max_src_len" in counts and "max_tgt_len" in counts:
        line += f" ({counts['max_src_len']}/{counts['max_tgt_len']} tokens)"
    return line
