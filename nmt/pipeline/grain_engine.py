"""The Grain engine: the input pipeline without TensorFlow (JAX and PyTorch backends).

    pairs -> window shuffle (training) -> chunks of pairs -> tokenize (`sentencepiece`),
          filter and shift a chunk -> bucket and pad -> background prefetch

Every rule comes from `nmt.pipeline.stages`, which is what makes the batches identical to
the tf.data engine's when shuffling is off (tested): same filter, same shift, same padded
widths and batch sizes, same order of full and partial batches.

Shuffling differs in algorithm, not in contract: Grain shuffles disjoint windows of
`training.shuffle_buffer` pairs where tf.data draws from a sliding buffer of that size, so
the two engines give different training orders. Each is a pure function of
`(training.seed, epoch)`, so a resumed run that skips `k` batches lands where it stopped.

Elements are `((src_ids, tgt_in_ids), tgt_out_ids)`, int32 numpy `(batch, len)`; Keras'
`model.fit` takes the returned `grain.IterDataset` under JAX and PyTorch. Not under
TensorFlow: there Keras turns it into a tf.data generator whose shapes are fixed by the
first two batches, and a later bucket width fails; TensorFlow uses the tf.data engine.
Iterators support Grain's `get_state` / `set_state` (a position; restoring replays the
epoch up to it).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grain
import numpy as np

import nmt.pipeline.stages as stages  # not `from nmt.pipeline`: no import cycle with __init__
from nmt.config import DataConfig, TrainingConfig
from nmt.tokenizer import Tokenizer

Pair = tuple[str, str]
# Batches tokenized ahead of the trainer by the background thread.
PREFETCH_BATCHES = 16
# Grain's window shuffle adds the window index to its seed and needs the sum in 32 bits.
_SEED_MASK = 0x7FFFFFFF
# Pairs encoded per SentencePiece call (it encodes a list in C++ threads); chunking also
# saves Grain's per-element overhead, a third of the time with one element per pair.
_CHUNK = 256


class PairSource(grain.IterDataset):
    """Text pairs streamed from a function that (re)opens the corpus, e.g.
    `functools.partial(corpus.iter_pairs, data_cfg, split)`."""

    def __init__(self, open_pairs: Callable[[], Iterable[Pair]]) -> None:
        super().__init__()
        self._open_pairs = open_pairs

    def __iter__(self) -> _PairIterator:
        return _PairIterator(self._open_pairs)


class _PairIterator(grain.DatasetIterator):
    def __init__(self, open_pairs: Callable[[], Iterable[Pair]]) -> None:
        super().__init__()
        self._open_pairs = open_pairs
        self._pairs: Iterator[Pair] | None = None  # opened on the first next(): lazily
        self._position = 0

    def __next__(self) -> Pair:
        if self._pairs is None:
            self._pairs = iter(self._open_pairs())
        pair = next(self._pairs)
        self._position += 1
        return pair

    def get_state(self) -> dict[str, Any]:
        return {"position": self._position}

    def set_state(self, state: dict[str, Any]) -> None:
        self._position = state["position"]
        self._pairs = itertools.islice(self._open_pairs(), self._position, None)


class BucketBatches(grain.IterDataset):
    """Chunks (lists) of shifted pairs `(src, tgt_in, tgt_out)` -> padded batches
    `((src, tgt_in), tgt_out)`, grouped by `stages.Bucketer`; the first `skip` batches are
    dropped (resuming)."""

    def __init__(
        self, parent: grain.IterDataset, lengths: list[int], sizes: list[int], skip: int = 0
    ) -> None:
        super().__init__(parent)
        self._lengths, self._sizes, self._skip = lengths, sizes, skip

    def __iter__(self) -> _BucketIterator:
        return _BucketIterator(self._parent.__iter__(), self._lengths, self._sizes, self._skip)


class _BucketIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, lengths, sizes, skip: int) -> None:
        super().__init__(parent)
        self._lengths, self._sizes = lengths, sizes
        self._start_state = parent.get_state()
        self._restart(skip)

    def _restart(self, batches: int) -> None:
        self._bucketer = stages.Bucketer(self._lengths, self._sizes)
        self._items: Iterator[tuple[np.ndarray, ...]] = iter(())  # of the current chunk
        self._flushing: Iterator[tuple[int, list]] | None = None
        self._emitted, self._to_skip = 0, batches

    def _next_item(self) -> tuple[np.ndarray, ...]:
        while (item := next(self._items, None)) is None:  # a chunk may have kept nothing
            self._items = iter(next(self._parent))  # StopIteration at the end of the input
        return item

    def _next_group(self) -> tuple[int, list]:
        while self._flushing is None:
            try:
                full = self._bucketer.add(self._next_item())
            except StopIteration:
                self._flushing = self._bucketer.flush()
            else:
                if full is not None:
                    return full
        return next(self._flushing)

    def __next__(self):
        while self._to_skip:  # skipped batches are grouped but never padded
            self._next_group()
            self._to_skip -= 1
            self._emitted += 1
        width, items = self._next_group()
        self._emitted += 1
        src, tgt_in, tgt_out = stages.pad_batch(items, width)
        return (src, tgt_in), tgt_out

    def get_state(self) -> dict[str, Any]:
        # Cheap on purpose: prefetching asks for the state after every batch.
        return {"batches": self._emitted + self._to_skip}

    def set_state(self, state: dict[str, Any]) -> None:
        # The epoch's order is a pure function of the seed: replay it up to the position.
        self._parent.set_state(self._start_state)
        self._restart(state["batches"])


def _encode(src_tok: Tokenizer, tgt_tok: Tokenizer, chunk: list[Pair]) -> Iterator[tuple]:
    """`(x, y)` subword ids of a chunk of pairs, one SentencePiece call per side."""
    src, tgt = zip(*chunk, strict=True)
    return zip(src_tok.encode_batch(src), tgt_tok.encode_batch(tgt), strict=True)


def _encode_filter_shift(
    src_tok: Tokenizer, tgt_tok: Tokenizer, data_cfg: DataConfig, chunk: list[Pair]
) -> list[tuple[np.ndarray, ...]]:
    """The kept pairs of a chunk as `(src, tgt_in, tgt_out)` int32 arrays, in order."""
    return [
        stages.shift(x, y, stages.np_concat)
        for x, y in _encode(src_tok, tgt_tok, chunk)
        if stages.drop_reason(len(x), len(y), data_cfg) is None
    ]


def make_dataset(
    open_pairs: Callable[[], Iterable[Pair]],
    src_tok: Tokenizer,
    tgt_tok: Tokenizer,
    data_cfg: DataConfig,
    train_cfg: TrainingConfig,
    epoch: int | None = None,
    skip: int = 0,
) -> grain.IterDataset:
    """Turns text pairs into padded, bucketed id batches for `model.fit` / `evaluate`.

    Args:
        open_pairs: Returns a fresh iterator of `(src, tgt)` strings in corpus order each
            time it is called (every epoch, and every Keras iterator, reopens the corpus).
        src_tok: Source tokenizer (its Python `encode_batch` is used).
        tgt_tok: Target tokenizer (may be the same object as `src_tok`).
        data_cfg: Length limits (`stages.drop_flags`).
        train_cfg: Batching and shuffling settings, as for the tf.data engine.
        epoch: The training epoch whose shuffle order to produce; None keeps corpus order.
        skip: Batches to drop at the start (a resumed epoch's consumed batches).

    Returns:
        A re-iterable `grain.IterDataset` of `((src_ids, tgt_in_ids), tgt_out_ids)`, int32
        numpy `(batch, len)` arrays, `len` in `stages.padded_lengths(data_cfg, train_cfg)`.
    """
    ds = PairSource(open_pairs)
    if stages.shuffles(epoch, train_cfg):
        seed = stages.epoch_seed(train_cfg.seed, epoch) & _SEED_MASK
        ds = grain.experimental.WindowShuffleIterDataset(
            ds, window_size=train_cfg.shuffle_buffer, seed=seed
        )
    ds = ds.batch(_CHUNK, batch_fn=list)
    ds = ds.map(functools.partial(_encode_filter_shift, src_tok, tgt_tok, data_cfg))
    lengths = stages.padded_lengths(data_cfg, train_cfg)
    ds = BucketBatches(ds, lengths, stages.bucket_batch_sizes(data_cfg, train_cfg), skip)
    return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=PREFETCH_BATCHES)


def count_filtered(
    pairs: Iterable[Pair], src_tok: Tokenizer, tgt_tok: Tokenizer, data_cfg: DataConfig
) -> dict[str, int]:
    """Counts what `make_dataset` keeps and drops, in one streaming pass over `pairs`.

    Returns:
        `stages.make_counts`: `{"total", "empty", "too_long", "kept"}` and the limits.
    """
    total = empty = too_long = 0
    pairs = iter(pairs)
    while chunk := list(itertools.islice(pairs, _CHUNK)):
        x_len, y_len = np.array([(len(x), len(y)) for x, y in _encode(src_tok, tgt_tok, chunk)]).T
        chunk_empty, chunk_too_long = stages.drop_flags(x_len, y_len, data_cfg)
        total += len(chunk)
        empty += int(chunk_empty.sum())
        too_long += int(chunk_too_long.sum())
    return stages.make_counts(total, empty, too_long, data_cfg)
