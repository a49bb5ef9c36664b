"""SentencePiece training, loading, in-graph and Python tokenization."""

from __future__ import annotations

import gzip
import itertools
import random
import unicodedata
from pathlib import Path

import pytest
import tensorflow as tf

from nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TokenizerConfig
from nmt.errors import DataError, RunDirError
from nmt.tokenizer import (
    Tokenizer,
    load_tokenizers,
    tokenizers_exist,
    train_tokenizers,
)

SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "to", "sa", "vi", "de", "po", "An", "Be"]


def synthetic_sentences(n: int, seed: int) -> list[str]:
    """Pseudo-words joined by single spaces, some with punctuation; pure ASCII."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 3))) for _ in range(300)]
    out = []
    for _ in range(n):
        sentence = " ".join(rng.choices(words, k=rng.randint(1, 12)))
        out.append(sentence + rng.choice(["", ".", "!", " ?"]))
    return out


def normalized(text: str) -> str:
    """What SentencePiece's default nmt_nfkc normalisation makes of ordinary text."""
    return unicodedata.normalize("NFKC", " ".join(text.split()))


def as_text(strings: tf.Tensor) -> list[str]:
    return [s.decode("utf-8") for s in strings.numpy()]


@pytest.fixture(scope="module")
def synthetic_tok(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok")
    cfg = TokenizerConfig(vocab_size=200, joint=True)
    train_tokenizers(
        iter(synthetic_sentences(1500, 1)), iter(synthetic_sentences(1500, 2)), cfg, out
    )
    src, tgt = load_tokenizers(out)
    assert src is tgt
    return src


def test_synthetic_round_trip(synthetic_tok):
    sentences = synthetic_sentences(200, 3)
    ids = synthetic_tok.tokenize(tf.constant(sentences))
    assert isinstance(ids, tf.RaggedTensor) and ids.dtype == tf.int32
    assert as_text(synthetic_tok.detokenize(ids)) == sentences
    assert [synthetic_tok.decode(synthetic_tok.encode(s)) for s in sentences] == sentences


def test_special_ids(synthetic_tok):
    pieces = [synthetic_tok.id_to_piece(i) for i in (PAD_ID, UNK_ID, BOS_ID, EOS_ID)]
    assert pieces == ["<pad>", "<unk>", "<s>", "</s>"]
    assert synthetic_tok.vocab_size == 200
    ids = synthetic_tok.tokenize(tf.constant(synthetic_sentences(100, 4))).flat_values.numpy()
    # Plain text never produces pad/bos/eos; those are the pipeline's to add.
    assert not set(ids.tolist()) & {PAD_ID, BOS_ID, EOS_ID}
    assert UNK_ID in synthetic_tok.encode("kalo \u2603")  # a snowman was never seen


def test_python_encode_matches_in_graph(synthetic_tok):
    sentences = synthetic_sentences(100, 5)
    graph_ids = synthetic_tok.tokenize(tf.constant(sentences)).to_list()
    assert graph_ids == [synthetic_tok.encode(s) for s in sentences]


def test_tokenize_in_tf_data_and_tf_function(synthetic_tok):
    sentences = synthetic_sentences(20, 6)
    ds = tf.data.Dataset.from_tensor_slices(sentences).map(synthetic_tok.tokenize)
    assert [x.numpy().tolist() for x in ds] == [synthetic_tok.encode(s) for s in sentences]

    @tf.function
    def round_trip(strings):
        return synthetic_tok.detokenize(synthetic_tok.tokenize(strings))

    assert as_text(round_trip(tf.constant(sentences))) == sentences


def test_in_graph_tokenizer_first_used_inside_a_trace(synthetic_tok):
    # It is created lazily (so that the module needs no TensorFlow); created inside one
    # graph it must still serve eager code and other graphs.
    tok = Tokenizer(synthetic_tok.model_proto)
    sentences = synthetic_sentences(10, 11)
    ds = tf.data.Dataset.from_tensor_slices(sentences).map(tok.tokenize)
    assert [x.numpy().tolist() for x in ds] == [tok.encode(s) for s in sentences]
    assert tok.tokenize(tf.constant(sentences)).to_list() == tok.encode_batch(sentences)
    assert as_text(tf.function(tok.detokenize)(tok.tokenize(tf.constant(sentences)))) == sentences


def test_detokenize_dense_padded_cuts_at_eos(synthetic_tok):
    a, b = synthetic_tok.encode("kalo mine"), synthetic_tok.encode("ru")
    dense = tf.constant(
        [
            [BOS_ID, *a, EOS_ID, *b, PAD_ID],  # everything after EOS is dropped
            [*b] + [PAD_ID] * (len(a) + 3),
        ]
    )
    assert as_text(synthetic_tok.detokenize(dense)) == ["kalo mine", "ru"]
    assert synthetic_tok.detokenize(tf.constant([*a, EOS_ID, *b])).numpy() == b"kalo mine"
    ragged = tf.ragged.constant([[*a, EOS_ID], b])
    assert as_text(synthetic_tok.detokenize(ragged)) == ["kalo mine", "ru"]
    assert synthetic_tok.decode([BOS_ID, *a, EOS_ID, *b, PAD_ID]) == "kalo mine"


def test_bpe_round_trip(tmp_path):
    cfg = TokenizerConfig(model_type="bpe", vocab_size=150, joint=False)
    train_tokenizers(
        iter(synthetic_sentences(800, 7)), iter(synthetic_sentences(800, 8)), cfg, tmp_path
    )
    assert (tmp_path / "src.model").is_file() and (tmp_path / "tgt.model").is_file()
    src, tgt = load_tokenizers(tmp_path)
    assert src is not tgt and src.vocab_size == tgt.vocab_size == 150
    sentences = synthetic_sentences(50, 9)
    assert as_text(tgt.detokenize(tgt.tokenize(tf.constant(sentences)))) == sentences


def test_empty_lines_are_skipped_and_joint_replaces_separate(tmp_path):
    corpus = [s for sentence in synthetic_sentences(800, 10) for s in (sentence, "", "  \n")]
    cfg = TokenizerConfig(vocab_size=120, joint=False)
    train_tokenizers(iter(corpus), iter(corpus), cfg, tmp_path)
    cfg.joint = True
    train_tokenizers(iter(corpus), iter(corpus), cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "joint.model",
        "joint.vocab",
        "settings.json",
    ]


def test_load_tokenizers_errors(tmp_path):
    assert not tokenizers_exist(tmp_path)
    with pytest.raises(RunDirError, match="no SentencePiece models in .*joint.model"):
        load_tokenizers(tmp_path)
    (tmp_path / "src.model").write_bytes(b"not a model")
    (tmp_path / "tgt.model").write_bytes(b"not a model")
    assert tokenizers_exist(tmp_path)
    with pytest.raises(RunDirError, match="cannot load SentencePiece model .*src.model"):
        load_tokenizers(tmp_path)


def test_vocab_too_large_for_tiny_corpus(tmp_path):
    cfg = TokenizerConfig(vocab_size=8000)
    with pytest.raises(DataError) as info:
        train_tokenizers(iter(["a small corpus"]), iter(["of two lines"]), cfg, tmp_path)
    message = str(info.value)
    assert "tokenizer.vocab_size=8000 is too large" in message
    assert "set tokenizer.vocab_size to" in message and "\n" not in message
    assert not tokenizers_exist(tmp_path)


def test_empty_corpus(tmp_path):
    cfg = TokenizerConfig(vocab_size=100, joint=False)
    with pytest.raises(DataError, match="the target side has no non-empty lines"):
        train_tokenizers(iter(["x y"]), iter(["", " "]), cfg, tmp_path)


def test_sampling_is_seeded(tmp_path):
    """Sampling max_training_sentences of a larger corpus is repeatable given the seed."""
    cfg = TokenizerConfig(vocab_size=100, joint=True, max_training_sentences=300)
    models = []
    for seed in (0, 0, 1):
        corpus = synthetic_sentences(1500, 11)
        train_tokenizers(iter(corpus), iter(corpus[::-1]), cfg, tmp_path, seed=seed)
        models.append((tmp_path / "joint.model").read_bytes())
    assert models[0] == models[1] and models[0] != models[2]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def read_lines(path: Path, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in itertools.islice(f, n)]


@pytest.mark.parametrize("joint", [True, False], ids=["joint", "separate"])
@pytest.mark.parametrize("langs", [("en", "de"), ("fr", "cs")], ids=["en-de", "fr-cs"])
def test_multi30k_round_trip(multi30k_dir, tmp_path, langs, joint):
    src_path, tgt_path = (multi30k_dir / f"train.{lang}.gz" for lang in langs)
    cfg = TokenizerConfig(vocab_size=1000, joint=joint)
    # Generators: training streams the files, it never needs them as lists.
    src_lines = (line for line in read_lines(src_path, 3000))
    tgt_lines = (line for line in read_lines(tgt_path, 3000))
    train_tokenizers(src_lines, tgt_lines, cfg, tmp_path)
    src_tok, tgt_tok = load_tokenizers(tmp_path)
    assert (src_tok is tgt_tok) == joint
    for tok, path in ((src_tok, src_path), (tgt_tok, tgt_path)):
        sentences = read_lines(path, 500)
        back = as_text(tok.detokenize(tok.tokenize(tf.constant(sentences))))
        assert back == [normalized(s) for s in sentences]
