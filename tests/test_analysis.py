import gzip
import json
import math

import numpy as np
import pytest

from nmt import analysis, config, corpus
from nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from nmt.errors import DataError, RunDirError
from nmt.translator import pad_batch


class WordTokenizer:
    """One id per whitespace word (ids from 4 up), UNK for words outside `vocab`."""

    def __init__(self, vocab):
        self.ids = {word: 4 + k for k, word in enumerate(vocab)}
        self.words = {i: w for w, i in self.ids.items()}
        self.vocab_size = 4 + len(vocab)

    def encode(self, text):
        return [self.ids.get(word, UNK_ID) for word in text.split()]

    def id_to_piece(self, token_id):
        return {0: "<pad>", 1: "<unk>", 2: "<s>", 3: "</s>"}.get(token_id) or self.words[token_id]


def test_find_repo_root_walks_up(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "nmt").mkdir()
    nested = tmp_path / "notebooks" / "deeper"
    nested.mkdir(parents=True)
    assert analysis.find_repo_root(nested) == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match="no repository root"):
        analysis.find_repo_root(tmp_path.parent)


def test_find_multi30k_env_then_sibling_of_repo(tmp_path, monkeypatch):
    repo, data = tmp_path / "repo", tmp_path / "shared" / "data" / "multi30k"
    repo.mkdir()
    monkeypatch.delenv(config.MULTI30K_ENV, raising=False)
    assert analysis.find_multi30k(repo) is None
    data.mkdir(parents=True)
    (data / "train.en.gz").write_bytes(gzip.compress(b"a\n"))
    assert analysis.find_multi30k(repo) == data.resolve()
    monkeypatch.setenv(config.MULTI30K_ENV, str(tmp_path / "elsewhere"))
    assert analysis.find_multi30k(repo) is None


def test_text_stats():
    stats = analysis.text_stats(["a b c", "", "dd ee"])
    assert (stats["sentences"], stats["words"], stats["characters"]) == (3, 5, 10)
    assert stats["lengths"].tolist() == [3, 0, 2]


def test_segmentation_stats_counts_pieces_and_unknowns():
    tok = WordTokenizer(["a", "b"])
    stats = analysis.segmentation_stats(tok, ["a b x", "a y"])
    assert (stats["sentences"], stats["words"], stats["pieces"], stats["unk"]) == (2, 5, 5, 2)
    assert stats["pieces_per_word"] == 1.0 and stats["unk_rate"] == pytest.approx(0.4)
    assert math.isnan(analysis.segmentation_stats(tok, [])["pieces_per_word"])


def _write_gz(path, lines):
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))


def test_subset_multi30k_writes_readable_file_pairs(tmp_path):
    src = tmp_path / "m30k"
    src.mkdir()
    for stem, n in (("train", 10), ("val", 4), ("test_2016_flickr", 3)):
        for lang in ("en", "de"):
            _write_gz(src / f"{stem}.{lang}.gz", [f"{stem} {lang} {i}" for i in range(n)])
    prefixes = analysis.subset_multi30k(
        src, tmp_path / "out", ("en", "de"), {"train": 4, "validation": 0, "test": 2}
    )
    assert prefixes["train"] == tmp_path / "out" / "train"
    cfg = config.load(None, analysis.files_overrides(prefixes))
    train = list(corpus.iter_pairs(cfg.data, "train"))
    assert train == [(f"train en {i}", f"train de {i}") for i in range(4)]
    assert len(list(corpus.iter_pairs(cfg.data, "validation"))) == 4  # 0 keeps all
    assert len(list(corpus.iter_pairs(cfg.data, "test"))) == 2
    with pytest.raises(DataError, match="unknown split 'dev'"):
        analysis.subset_multi30k(src, tmp_path / "out", ("en",), {"dev": 1})
    with pytest.raises(DataError, match="file not found"):
        analysis.subset_multi30k(src, tmp_path / "out", ("fr",), {"train": 1})


def test_multi30k_prefixes_and_files_overrides(tmp_path):
    prefixes = analysis.multi30k_prefixes(tmp_path)
    assert prefixes == {
        "train": tmp_path / "train",
        "validation": tmp_path / "val",
        "test": tmp_path / "test_2016_flickr",
    }
    cfg = config.load(None, analysis.files_overrides(prefixes))
    assert cfg.data.format == "files" and cfg.data.validation == str(tmp_path / "val")


def test_read_metrics_columns(tmp_path):
    lines = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5, "val_bleu": 3.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    for where in (tmp_path, tmp_path / "metrics.jsonl"):
        columns = analysis.read_metrics(where)
        assert list(columns) == ["epoch", "loss", "val_bleu"]
        assert columns["loss"] == [2.0, 1.5]
        assert math.isnan(columns["val_bleu"][0]) and columns["val_bleu"][1] == 3.0
    with pytest.raises(RunDirError, match="no metrics file"):
        analysis.read_metrics(tmp_path / "missing")


def test_model_input_ids_and_pieces():
    tok = WordTokenizer(["a", "b"])
    assert analysis.source_ids(tok, "a b") == [4, 5, EOS_ID]
    assert analysis.decoder_ids(tok, "b a") == ([BOS_ID, 5, 4], [5, 4, EOS_ID])
    assert analysis.pieces(tok, [BOS_ID, 4, UNK_ID, EOS_ID, PAD_ID]) == [
        "<s>",
        "a",
        "<unk>",
        "</s>",
        "<pad>",
    ]


def test_pad_batch():
    batch = pad_batch([[5, 6, 7], [8]], multiple=4)
    assert batch.dtype == np.int32
    assert batch.tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert pad_batch([[1, 2]]).shape == (1, 2)
    assert pad_batch([]).shape == (0, 1)


def test_pca_2d_finds_the_main_axes():
    rng = np.random.default_rng(0)
    n = 400
    x = np.zeros((n, 5))
    x[:, 3] = rng.normal(scale=10.0, size=n)
    x[:, 1] = rng.normal(scale=3.0, size=n)
    x += rng.normal(scale=0.1, size=x.shape)
    xy, ratio = analysis.pca_2d(x)
    assert xy.shape == (n, 2)
    assert abs(np.corrcoef(xy[:, 0], x[:, 3])[0, 1]) > 0.99
    assert abs(np.corrcoef(xy[:, 1], x[:, 1])[0, 1]) > 0.99
    assert ratio[0] > ratio[1] > 0 and ratio.sum() <= 1.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        analysis.pca_2d(np.ones((1, 3)))


def test_format_table_aligns_columns():
    text = analysis.format_table([["en", 12, 1.5], ["de", 3, 10.25]], ["lang", "n", "x"])
    assert text.splitlines() == [
        "lang  n   x",
        "----  --  -----",
        "en    12  1.50",
        "de    3   10.25",
    ]
    assert analysis.format_table([]) == ""


def test_heatmap_labels_axes():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    image = analysis.heatmap(ax, np.eye(3)[:2], ["a", "b", "c"], ["x", "y"], title="t")
    assert image.get_array().shape == (2, 3)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y"]
    assert ax.get_title() == "t"
    plt.close(fig)


def _tiny_model(attention):
    from nmt.model import build_model

    cfg = config.ModelConfig(
        embedding_dim=8,
        encoder_units=8,
        decoder_units=16,
        maxout_units=8,
        attention_units=8,
        dropout=0.0,
        attention=attention,
    )
    return build_model(cfg, 10, 10)


def test_context_vectors_match_single_sentence_encoding():
    tok = WordTokenizer(["a", "b", "c", "d"])
    model = _tiny_model("none")
    sentences = ["a b c d a b", "c", "d a"]
    batched = analysis.context_vectors(model, tok, sentences, batch_size=2)
    assert batched.shape == (3, 16)  # bidirectional: 2 x encoder_units
    for row, sentence in zip(batched, sentences, strict=True):
        alone = model.encode(pad_batch([analysis.source_ids(tok, sentence)]))["context"]
        np.testing.assert_allclose(row, np.asarray(alone)[0], atol=1e-5)


def test_attention_map_shapes_and_labels():
    tok = WordTokenizer(["a", "b", "c", "d"])
    weights, src_pieces, tgt_pieces = analysis.attention_map(
        _tiny_model("additive"), tok, tok, "a b c", "d c"
    )
    assert weights.shape == (3, 4)
    assert src_pieces == ["a", "b", "c", "</s>"] and tgt_pieces == ["d", "c", "</s>"]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="attention"):
        analysis.attention_map(_tiny_model("none"), tok, tok, "a", "b")
