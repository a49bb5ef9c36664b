"""Input pipeline: target shift, padding, bucketing, batching, filtering, determinism, on
both engines (tf.data and Grain), which must agree batch for batch when not shuffling."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from nmt import pipeline
from nmt.config import BOS_ID, EOS_ID, PAD_ID, DataConfig, TokenizerConfig, TrainingConfig
from nmt.pipeline import (
    bucket_batch_sizes,
    count_filtered,
    count_split,
    describe_counts,
    make_batches,
    make_dataset,
    padded_lengths,
    stages,
)
from nmt.tokenizer import Tokenizer, load_tokenizers, train_tokenizers

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "ru", "to") for b in ("s", "n", "ve", "")]
DATA_CFG = DataConfig(max_src_len=20, max_tgt_len=20)
ENGINES = pipeline.ENGINES


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


def write_files(folder: Path, pairs: list[tuple[str, str]]) -> DataConfig:
    """The corpus as text files PREFIX.src / PREFIX.tgt, with DATA_CFG's limits."""
    folder.mkdir(parents=True, exist_ok=True)
    for side, lang in enumerate(("src", "tgt")):
        (folder / f"train.{lang}").write_text("".join(p[side] + "\n" for p in pairs))
    return files_cfg(folder / "train")


def files_cfg(prefix: Path, **limits) -> DataConfig:
    limits = {"max_src_len": 20, "max_tgt_len": 20, **limits}
    return DataConfig(format="files", src_lang="src", tgt_lang="tgt", train=str(prefix), **limits)


@pytest.fixture(scope="module")
def corpus_cfg(tmp_path_factory, corpus) -> DataConfig:
    return write_files(tmp_path_factory.mktemp("corpus"), corpus)


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


def batches(ds) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The batches of either engine's dataset as numpy `(src, tgt_in, tgt_out)`."""
    return [tuple(np.asarray(t) for t in (s, ti, to)) for (s, ti), to in ds]


def engine_batches(engine, data_cfg, tokenizers, cfg, epoch=None, skip=0):
    ds = make_batches(data_cfg, cfg, "train", *tokenizers, epoch=epoch, skip=skip, engine=engine)
    return batches(ds)


def train_cfg(**kw) -> TrainingConfig:
    return TrainingConfig(**{"batch_size": 16, "bucket_width": 8, "shuffle_buffer": 1000, **kw})


def test_padded_lengths_and_batch_sizes():
    assert padded_lengths(DataConfig(), TrainingConfig()) == [8, 16, 24, 32, 40, 48, 56, 64, 72]
    cfg = TrainingConfig(batch_by="tokens", max_tokens=100, bucket_width=10)
    assert bucket_batch_sizes(DataConfig(max_src_len=39, max_tgt_len=20), cfg) == [10, 5, 3, 2]
    buckets = [stages.bucket_index(n, [8, 16, 24]) for n in (1, 8, 9, 16, 17, 24)]
    assert buckets == [0, 0, 1, 1, 2, 2]


def test_drop_reasons_count_each_pair_once():
    cfg = DataConfig(max_src_len=3, max_tgt_len=2)
    cases = {(0, 9): "empty", (9, 0): "empty", (4, 1): "too_long", (1, 3): "too_long"}
    for (x_len, y_len), reason in {**cases, (3, 2): None, (1, 1): None}.items():
        assert stages.drop_reason(x_len, y_len, cfg) == reason
    empty, too_long = stages.drop_flags(np.array([0, 4, 3]), np.array([9, 1, 2]), cfg)
    assert empty.tolist() == [True, False, False] and too_long.tolist() == [False, True, False]


def test_bucketer_emits_full_batches_then_partial_ones_by_ascending_length():
    def item(length: int) -> tuple[np.ndarray, ...]:
        return np.ones(length), np.ones(1), np.ones(1)

    bucketer = stages.Bucketer([4, 8], [2, 2])
    out = [bucketer.add(item(n)) for n in (7, 3, 8, 2, 5)]
    emitted = [o and (o[0], len(o[1])) for o in out]
    assert emitted == [None, None, (8, 2), (4, 2), None]
    bucketer.add(item(1))
    assert [(width, len(items)) for width, items in bucketer.flush()] == [(4, 1), (8, 1)]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("epoch", [0, None])
def test_shift_padding_and_buckets(tokenizers, corpus, corpus_cfg, engine, epoch):
    src_tok, tgt_tok = tokenizers
    expected = expected_kept(corpus, src_tok, tgt_tok)
    cfg = train_cfg()
    seen = []
    for src, tgt_in, tgt_out in engine_batches(engine, corpus_cfg, tokenizers, cfg, epoch):
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


@pytest.mark.parametrize("engine", ENGINES)
def test_buckets_are_tight(tokenizers, corpus_cfg, engine):
    """A batch's padded length is the smallest bucket length that fits its longest pair."""
    cfg = train_cfg(bucket_width=4)
    for src, tgt_in, _ in engine_batches(engine, corpus_cfg, tokenizers, cfg):
        longest = max(len(unpad(r)) for r in np.concatenate([src, tgt_in]))
        assert src.shape[1] - 4 < longest <= src.shape[1]


@pytest.mark.parametrize("engine", ENGINES)
def test_token_budget(tokenizers, corpus, corpus_cfg, engine):
    cfg = train_cfg(batch_by="tokens", max_tokens=96, bucket_width=8)
    sizes = dict(zip(padded_lengths(DATA_CFG, cfg), bucket_batch_sizes(DATA_CFG, cfg), strict=True))
    n = 0
    for src, _, _ in engine_batches(engine, corpus_cfg, tokenizers, cfg, epoch=0):
        assert src.shape[0] * src.shape[1] <= cfg.max_tokens
        assert src.shape[0] <= sizes[src.shape[1]]
        n += src.shape[0]
    assert n == len(expected_kept(corpus, *tokenizers))


@pytest.mark.parametrize(
    "cfg",
    [
        train_cfg(),
        train_cfg(batch_size=5, bucket_width=4),
        train_cfg(batch_by="tokens", max_tokens=64, bucket_width=8),
    ],
    ids=["sentences", "small-buckets", "tokens"],
)
def test_engines_yield_identical_batches(tokenizers, corpus_cfg, cfg):
    tf_batches = engine_batches("tfdata", corpus_cfg, tokenizers, cfg)
    grain_batches = engine_batches("grain", corpus_cfg, tokenizers, cfg)
    assert len(tf_batches) == len(grain_batches)
    for tf_batch, grain_batch in zip(tf_batches, grain_batches, strict=True):
        for a, b in zip(tf_batch, grain_batch, strict=True):
            assert a.dtype == b.dtype == np.int32
            assert a.shape == b.shape
            np.testing.assert_array_equal(a, b)
    # The end of the input flushes partial batches of several buckets: their order is
    # tf.data's (ascending length), which `stages.Bucketer` replicates.
    sizes = dict(zip(padded_lengths(DATA_CFG, cfg), bucket_batch_sizes(DATA_CFG, cfg), strict=True))
    tail = [src.shape for src, _, _ in tf_batches[-3:]]
    assert all(n < sizes[width] for n, width in tail) and len({w for _, w in tail}) == 3
    assert [w for _, w in tail] == sorted(w for _, w in tail)


def test_engines_agree_when_whole_chunks_are_dropped(tmp_path, tokenizers):
    # The Grain engine tokenizes chunks of pairs; a run of chunks with nothing kept in them
    # must neither end the epoch early nor change the batches.
    pairs = [("", "x")] * 700 + [(f"ka lo {w}", f"{w} mi") for w in WORDS]
    data_cfg = write_files(tmp_path, pairs)
    cfg = train_cfg(batch_size=4)
    tf_batches = engine_batches("tfdata", data_cfg, tokenizers, cfg)
    grain_batches = engine_batches("grain", data_cfg, tokenizers, cfg)
    assert sum(b[0].shape[0] for b in grain_batches) == len(WORDS)
    assert [[a.tolist() for a in b] for b in grain_batches] == [
        [a.tolist() for a in b] for b in tf_batches
    ]


def test_engines_count_the_same(tokenizers, corpus, corpus_cfg):
    src_tok, tgt_tok = tokenizers
    empty = too_long = 0
    for src, tgt in corpus:
        x, y = src_tok.encode(src), tgt_tok.encode(tgt)
        if not x or not y:
            empty += 1
        elif len(x) > DATA_CFG.max_src_len or len(y) > DATA_CFG.max_tgt_len:
            too_long += 1
    assert empty == 5 and too_long > 20  # the corpus exercises both filters
    kept = len(corpus) - empty - too_long
    assert kept == len(expected_kept(corpus, src_tok, tgt_tok))
    for engine in ENGINES:
        counts = count_split(corpus_cfg, "train", src_tok, tgt_tok, engine=engine)
        assert counts["total"] == len(corpus)
        assert (counts["empty"], counts["too_long"], counts["kept"]) == (empty, too_long, kept)
        assert describe_counts(counts) == (
            f"read {len(corpus)} pairs: kept {kept}, dropped {empty} empty, "
            f"{too_long} over the length limit (20/20 tokens)"
        )
    # The old entry: a tf.data dataset or an iterable of strings.
    assert count_filtered(as_dataset(corpus), src_tok, tgt_tok, DATA_CFG) == counts
    assert count_filtered(iter(corpus), src_tok, tgt_tok, DATA_CFG) == counts


def test_make_dataset_is_the_tfdata_engine(tokenizers, corpus, corpus_cfg):
    cfg = train_cfg()
    old = batches(make_dataset(as_dataset(corpus), *tokenizers, DATA_CFG, cfg, epoch=None))
    new = engine_batches("tfdata", corpus_cfg, tokenizers, cfg)
    assert [[a.tolist() for a in b] for b in old] == [[a.tolist() for a in b] for b in new]


@pytest.mark.parametrize("engine", ENGINES)
def test_separate_length_limits(tokenizers, corpus, corpus_cfg, engine):
    data_cfg = files_cfg(Path(corpus_cfg.train), max_src_len=30, max_tgt_len=6)
    counts = count_split(data_cfg, "train", *tokenizers, engine=engine)
    assert counts["kept"] == len(expected_kept(corpus, *tokenizers, data_cfg))
    n = sum(b[0].shape[0] for b in engine_batches(engine, data_cfg, tokenizers, train_cfg()))
    assert n == counts["kept"]


def batch_order(batch_list) -> list[list[list[int]]]:
    return [src.tolist() for src, _, _ in batch_list]


@pytest.mark.parametrize("engine", ENGINES)
def test_shuffle_is_a_function_of_seed_and_epoch(tokenizers, corpus_cfg, engine):
    def order(seed, epoch, skip=0):
        cfg = train_cfg(seed=seed, shuffle_buffer=100)
        return batch_order(engine_batches(engine, corpus_cfg, tokenizers, cfg, epoch, skip))

    first = order(7, 0)
    assert order(7, 1) != first  # each epoch has its own order
    # A fresh pipeline (a resumed run) gives every epoch the order it had before.
    assert order(7, 0) == first and order(7, 1) == order(7, 1)
    assert order(8, 0) != first
    assert order(7, None) != first
    # Resuming mid-epoch: skipping k batches gives the rest of the same epoch.
    assert order(7, 0, skip=3) == first[3:]
    assert order(7, 0, skip=len(first) + 5) == []
    # Reading an epoch twice from one dataset gives the same order.
    ds = make_batches(corpus_cfg, train_cfg(seed=7), "train", *tokenizers, epoch=3, engine=engine)
    assert batch_order(batches(ds)) == batch_order(batches(ds))


@pytest.mark.parametrize("engine", ENGINES)
def test_evaluation_is_not_shuffled(tokenizers, corpus_cfg, engine):
    ds = make_batches(corpus_cfg, train_cfg(), "train", *tokenizers, engine=engine)
    assert batch_order(batches(ds)) == batch_order(batches(ds))


def test_grain_iterator_state_restores_the_position(tokenizers, corpus_cfg):
    cfg = train_cfg(seed=3, shuffle_buffer=50)
    ds = make_batches(corpus_cfg, cfg, "train", *tokenizers, epoch=2, engine="grain")
    iterator = iter(ds)
    head = [next(iterator) for _ in range(4)]
    state = iterator.get_state()
    rest = batch_order(batches(iterator))
    fresh = iter(ds)
    fresh.set_state(state)
    assert batch_order(batches(fresh)) == rest
    assert len(head) == 4 and rest


def test_unknown_engine(tokenizers, corpus_cfg):
    with pytest.raises(ValueError, match="unknown pipeline engine 'torch'"):
        make_batches(corpus_cfg, train_cfg(), "train", *tokenizers, engine="torch")
