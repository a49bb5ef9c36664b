"""The rules of the input pipeline, defined once for both engines (tf.data and Grain).

Pure Python and numpy, no TensorFlow. Each element of a pipeline's output is
`((src_ids, tgt_in_ids), tgt_out_ids)`, int32, right-padded with PAD (0), for a sentence pair
with subword ids `x` (source) and `y` (target):

    src_ids     = x + [EOS]      (batch, len)
    tgt_in_ids  = [BOS] + y      (batch, len)   teacher-forcing decoder input
    tgt_out_ids = y + [EOS]      (batch, len)   labels

Filter. A pair with no tokens on a side (whitespace-only text included) is dropped as
"empty"; otherwise one with more than `max_src_len` / `max_tgt_len` tokens (EOS/BOS not
counted) is dropped as "too long". Each dropped pair counts once, so the counts add up.

Bucketing and padding. Source and target share one padded length per batch: a pair goes
into the bucket of `max(len(x) + 1, len(y) + 1)` and all three arrays are padded up to that
bucket's length, a multiple of `training.bucket_width`. So every batch has shape
`(batch, L)` with `L` in `padded_lengths(...)` = `[w, 2w, ..., n*w]`, the smallest multiple
of `w` that fits the longest allowed pair. Compiled train steps (tf.function, XLA) thus see at
most `n` sequence shapes (times one smaller batch size per bucket at the end of an epoch),
instead of `n * n` with separate source and target buckets. The cost is extra padding on the
shorter side when source and target lengths differ a lot; padding is masked, and for
Multi30k-like pairs the two lengths are close.

Batching. Pairs are grouped per bucket in arrival order; a bucket's batch is emitted as soon
as it holds its batch size (`training.batch_size` sentences, or with `training.batch_by:
tokens` `max(1, training.max_tokens // L)`, so each array holds at most `max_tokens`
positions, padding included). At the end of the input the partial batches follow, by
ascending bucket length. That is exactly what tf.data's `bucket_by_sequence_length` does,
which is why both engines give identical batches (`Bucketer` is the Python rendering).

Determinism: a training epoch's order is a pure function of `training.seed` and the epoch
number (`epoch_seed`), so epoch `e` yields the same batches in every run and every process,
which lets a resumed run skip exactly the batches its checkpoint had consumed.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from nmt.config import BOS_ID, EOS_ID, PAD_ID, DataConfig, TrainingConfig

T = TypeVar("T")
COUNT_KEYS = ("total", "empty", "too_long", "kept")


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


def bucket_index(length: int, lengths: Sequence[int]) -> int:
    """The bucket of a pair of `length` tokens: the first padded length that holds it."""
    return bisect.bisect_left(lengths, length)


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: distinct per epoch, the same in every run."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def shuffles(epoch: int | None, train_cfg: TrainingConfig) -> bool:
    """Whether a pipeline shuffles: training epochs with a buffer of more than one pair."""
    return epoch is not None and train_cfg.shuffle_buffer > 1


def drop_flags(x_len: Any, y_len: Any, data_cfg: DataConfig) -> tuple[Any, Any]:
    """Why pairs are dropped: `(empty, too_long)` boolean arrays.

    Args:
        x_len: Source token counts (EOS not counted): a numpy array or a tf tensor; the
            rule uses only elementwise operators so that both engines share it.
        y_len: Target token counts, same type and shape.
        data_cfg: The limits `max_src_len` / `max_tgt_len`.

    Returns:
        `empty` (a side has no tokens) and `too_long` (over a limit and not empty), so a
        dropped pair is counted once.
    """
    empty = (x_len == 0) | (y_len == 0)
    too_long = ~empty & ((x_len > data_cfg.max_src_len) | (y_len > data_cfg.max_tgt_len))
    return empty, too_long


def drop_reason(x_len: int, y_len: int, data_cfg: DataConfig) -> str | None:
    """`drop_flags` for one pair: "empty", "too_long" or None (kept)."""
    empty, too_long = drop_flags(np.int64(x_len), np.int64(y_len), data_cfg)
    return "empty" if empty else "too_long" if too_long else None


def make_counts(total: int, empty: int, too_long: int, data_cfg: DataConfig) -> dict[str, int]:
    """The filter's counts as both engines report them, with the limits for the log line."""
    return {
        "total": int(total),
        "empty": int(empty),
        "too_long": int(too_long),
        "kept": int(total - empty - too_long),
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


def shift(x: T, y: T, concat: Callable[[Any, Any], T]) -> tuple[T, T, T]:
    """`(x, y)` -> `(x + [EOS], [BOS] + y, y + [EOS])`.

    Args:
        x: Source ids, 1-D.
        y: Target ids, 1-D.
        concat: Joins two 1-D int32 sequences (one may be a Python list), in the engine's
            array type (`np_concat` or a tf.concat).
    """
    return concat(x, [EOS_ID]), concat([BOS_ID], y), concat(y, [EOS_ID])


def np_concat(a: Any, b: Any) -> np.ndarray:
    """`shift`'s `concat` for numpy: int32 whatever the inputs' integer types."""
    # One conversion from Python lists (what SentencePiece returns) is the fast path.
    return np.array([*a, *b], np.int32)


def pair_length(src_len: Any, tgt_len: Any, maximum: Callable[[Any, Any], Any] = max) -> Any:
    """The length a shifted pair is bucketed by: source and target share one padded width."""
    return maximum(src_len, tgt_len)


class Bucketer:
    """Groups shifted pairs by bucket the way tf.data's `bucket_by_sequence_length` does.

    Args:
        lengths: `padded_lengths(...)`.
        sizes: `bucket_batch_sizes(...)`, one per length.
    """

    def __init__(self, lengths: Sequence[int], sizes: Sequence[int]) -> None:
        self.lengths, self.sizes = list(lengths), list(sizes)
        self.groups: dict[int, list] = {}

    def add(self, item: Sequence[np.ndarray]) -> tuple[int, list] | None:
        """Adds `(src, tgt_in, tgt_out)`; returns `(padded length, items)` when its bucket
        becomes full, else None."""
        length = pair_length(len(item[0]), len(item[1]))
        k = bucket_index(length, self.lengths)
        group = self.groups.setdefault(k, [])
        group.append(item)
        if len(group) < self.sizes[k]:
            return None
        del self.groups[k]
        return self.lengths[k], group

    def flush(self) -> Iterator[tuple[int, list]]:
        """The partial batches left at the end of the input, by ascending bucket length
        (tf.data keeps its groups in a key-ordered map)."""
        for k in sorted(self.groups):
            yield self.lengths[k], self.groups.pop(k)


def pad_batch(items: Sequence[Sequence[np.ndarray]], width: int) -> tuple[np.ndarray, ...]:
    """Stacks `(src, tgt_in, tgt_out)` items into int32 `(batch, width)` arrays, PAD-filled."""
    arrays = []
    for column in zip(*items, strict=True):
        out = np.full((len(column), width), PAD_ID, np.int32)
        for row, ids in zip(out, column, strict=True):
            row[: len(ids)] = ids
        arrays.append(out)
    return tuple(arrays)
