"""tf.data pipeline: target shift, padding, bucketing, batching, filtering, determinism."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from nmt.config import BOS_ID, EOS_ID, PAD_ID, DataConfig, TokenizerConfig, TrainingConfig
from nmt.pipeline import (
    bucket_batch_sizes,
    count_filtered,
    describe_counts,
    make_dataset,
    padded_lengths,
)
from nmt.tokenizer import Tokenizer, load_tokenizers, train_tokenizers

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "ru", "to") for b in ("s", "n", "ve", "")]
DATA_CFG = DataConfig(max_src_len=20, max_tgt_len=20)


def sentence(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choices(WORDS, k=n_words))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> tuple[Tokenizer, Tokenizer]:
    rng = random.Random(0)
    corpus = [sentence(rng, rng.randint(1, 10)) for _ in range(2000)]
    out = tmp_path_factory.mktemp("tok")
    cfg = TokenizerConfig(vocab_size=40, joint=False)
    train_tokenizers(iter(corpus), iter(corpus[::-1]), cfg, out)
    return load_tokenizers(out)


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, str]]:
    """Unique source sentences of 1-25 words; targets are the words reversed. Some pairs
    have an empty or whitespace-only side."""
    rng = random.Random(1)
    pairs, seen = [], set()
    while len(pairs) < 400:
        src = sentence(rng, rng.randint(1, 25))
        if src not in seen:
            seen.add(src)
            pairs.append((src, " ".join(reversed(src.split()))))
    for i, (src, tgt) in enumerate([("", "x"), ("ka", ""), ("  ", "lo"), ("mi", "\t "), ("", "")]):
        pairs.insert(37 * i, (src, tgt))
    return pairs


def as_dataset(pairs: list[tuple[str, str]]) -> tf.data.Dataset:
    src, tgt = zip(*pairs, strict=True)
    return tf.data.Dataset.from_tensor_slices((list(src), list(tgt)))


def expected_kept(pairs, src_tok, tgt_tok, data_cfg=DATA_CFG) -> dict[tuple, tuple]:
    """Source ids -> (x, y) ids for pairs the filter should keep, computed in Python."""
    kept = {}
    for src, tgt in pairs:
        x, y = src_tok.encode(src), tgt_tok.encode(tgt)
        if x and y and len(x) <= data_cfg.max_src_len and len(y) <= data_cfg.max_tgt_len:
            kept[tuple(x)] = (x, y)
    return kept


def unpad(row: np.ndarray) -> list[int]:
    """Strips right padding, checking there is no PAD inside the sequence."""
    n = int(np.count_nonzero(row))
    assert (row[:n] != PAD_ID).all() and (row[n:] == PAD_ID).all()
    return row[:n].tolist()


def batches(ds: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [(s.numpy(), ti.numpy(), to.numpy()) for (s, ti), to in ds]


def train_cfg(**kw) -> TrainingConfig:
    return TrainingConfig(**{"batch_size": 16, "bucket_width": 8, "shuffle_buffer": 1000, **kw})


def test_padded_lengths_and_batch_sizes():
    assert padded_lengths(DataConfig(), TrainingConfig()) == [8, 16, 24, 32, 40, 48, 56, 64, 72]
    cfg = TrainingConfig(batch_by="tokens", max_tokens=100, bucket_width=10)
    assert bucket_batch_sizes(DataConfig(max_src_len=39, max_tgt_len=20), cfg) == [10, 5, 3, 2]


@pytest.mark.parametrize("epoch", [0, None])
def test_shift_padding_and_buckets(tokenizers, corpus, epoch):
    src_tok, tgt_tok = tokenizers
    expected = expected_kept(corpus, src_tok, tgt_tok)
    cfg = train_cfg()
    seen = []
    for src, tgt_in, tgt_out in batches(
        make_dataset(as_dataset(corpus), *tokenizers, DATA_CFG, cfg, epoch)
    ):
        assert src.dtype == tgt_in.dtype == tgt_out.dtype == np.int32
        # One shared length per batch, always a bucket length.
        assert src.shape == tgt_in.shape == tgt_out.shape
        assert src.shape[1] in padded_lengths(DATA_CFG, cfg)
        assert 1 <= src.shape[0] <= cfg.batch_size
        for s, ti, to in zip(src, tgt_in, tgt_out, strict=True):
            s, ti, to = unpad(s), unpad(ti), unpad(to)
            x, y = expected[tuple(s[:-1])]
            assert s == x + [EOS_ID]
            assert ti == [BOS_ID] + y
            assert to == y + [EOS_ID]
            seen.append(tuple(x))
    # Every kept pair comes out exactly once (training and evaluation alike).
    assert Counter(seen) == Counter(expected.keys())


def test_buckets_are_tight(tokenizers, corpus):
    """A batch's padded length is the smallest bucket length that fits its longest pair."""
    cfg = train_cfg(bucket_width=4)
    ds = make_dataset(as_dataset(corpus), *tokenizers, DATA_CFG, cfg, epoch=None)
    for src, tgt_in, _ in batches(ds):
        longest = max(len(unpad(r)) for r in np.concatenate([src, tgt_in]))
        assert src.shape[1] - 4 < longest <= src.shape[1]


def test_token_budget(tokenizers, corpus):
    cfg = train_cfg(batch_by="tokens", max_tokens=96, bucket_width=8)
    sizes = dict(zip(padded_lengths(DATA_CFG, cfg), bucket_batch_sizes(DATA_CFG, cfg), strict=True))
    n = 0
    for src, _, _ in batches(make_dataset(as_dataset(corpus), *tokenizers, DATA_CFG, cfg, 0)):
        assert src.shape[0] * src.shape[1] <= cfg.max_tokens
        assert src.shape[0] <= sizes[src.shape[1]]
        n += src.shape[0]
    assert n == len(expected_kept(corpus, *tokenizers))


def test_count_filtered(tokenizers, corpus):
    src_tok, tgt_tok = tokenizers
    empty = too_long = 0
    for src, tgt in corpus:
        x, y = src_tok.encode(src), tgt_tok.encode(tgt)
        if not x or not y:
            empty += 1
        elif len(x) > DATA_CFG.max_src_len or len(y) > DATA_CFG.max_tgt_len:
            too_long += 1
    assert empty == 5 and too_long > 20  # the corpus exercises both filters
    counts = count_filtered(as_dataset(corpus), src_tok, tgt_tok, DATA_CFG)
    kept = len(corpus) - empty - too_long
    assert counts["total"] == len(corpus)
    assert (counts["empty"], counts["too_long"], counts["kept"]) == (empty, too_long, kept)
    assert kept == len(expected_kept(corpus, src_tok, tgt_tok))
    assert describe_counts(counts) == (
        f"read {len(corpus)} pairs: kept {kept}, dropped {empty} empty, "
        f"{too_long} over the length limit (20/20 tokens)"
    )


def test_separate_length_limits(tokenizers, corpus):
    data_cfg = DataConfig(max_src_len=30, max_tgt_len=6)
    counts = count_filtered(as_dataset(corpus), *tokenizers, data_cfg)
    assert counts["kept"] == len(expected_kept(corpus, *tokenizers, data_cfg))
    ds = make_dataset(as_dataset(corpus), *tokenizers, data_cfg, train_cfg(), epoch=None)
    assert sum(b[0].shape[0] for b in batches(ds)) == counts["kept"]


def batch_order(ds: tf.data.Dataset) -> list[list[list[int]]]:
    return [src.tolist() for src, _, _ in batches(ds)]


def test_shuffle_is_a_function_of_seed_and_epoch(tokenizers, corpus):
    def order(seed, epoch):
        cfg = train_cfg(seed=seed)
        return batch_order(make_dataset(as_dataset(corpus), *tokenizers, DATA_CFG, cfg, epoch))

    first = order(7, 0)
    assert order(7, 1) != first  # each epoch has its own order
    # A fresh pipeline (a resumed run) gives every epoch the order it had before.
    assert order(7, 0) == first and order(7, 1) == order(7, 1)
    assert order(8, 0) != first
    # Reading an epoch twice from one dataset gives the same order: skip() relies on it.
    ds = make_dataset(as_dataset(corpus), *tokenizers, DATA_CFG, train_cfg(seed=7), 3)
    assert batch_order(ds) == batch_order(ds)
    assert batch_order(ds.skip(2)) == batch_order(ds)[2:]


def test_evaluation_is_not_shuffled(tokenizers, corpus):
    ds = make_dataset(as_dataset(corpus), *tokenizers, DATA_CFG, train_cfg(), epoch=None)
    assert batch_order(ds) == batch_order(ds)
