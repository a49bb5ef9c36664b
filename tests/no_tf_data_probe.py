"""Run in a subprocess by tests/test_data_without_tensorflow.py: the data side of nmt with
TensorFlow, tensorflow_text and tensorflow_datasets unimportable.

    KERAS_BACKEND=jax python -m tests.no_tf_data_probe WORK_DIR [MULTI30K_DIR]

Checks tokenizer training, encode/decode, corpus iteration (files, tsv, a Multi30k folder),
Grain batches and counts, `model.fit` on Grain batches, and the one-line errors of the
formats that need tensorflow_datasets. Exits non-zero with the failing assertion.
"""

import sys

BLOCKED = ("tensorflow", "tensorflow_text", "tensorflow_datasets")


class _BlockTensorFlow:
    """A meta path finder that makes every TensorFlow module unimportable."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, _BlockTensorFlow())

import gzip  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from nmt import corpus, pipeline, tokenizer  # noqa: E402
from nmt.config import MULTI30K_ENV, DataConfig, TokenizerConfig, TrainingConfig  # noqa: E402
from nmt.errors import NmtError  # noqa: E402

SRC = ["a small dog runs", "the red house", "", "a cat sits on the street", "big blue"]
TGT = ["ein kleiner hund rennt", "das rote haus", "x", "eine katze sitzt", "groß blau"]


def check_tokenizer(work: Path) -> tokenizer.Tokenizer:
    cfg = TokenizerConfig(vocab_size=40, joint=True)
    tokenizer.train_tokenizers(iter(SRC * 20), iter(TGT * 20), cfg, work / "tok")
    tok, same = tokenizer.load_tokenizers(work / "tok")
    assert tok is same
    ids = tok.encode("the red house")
    assert ids and tok.decode([2, *ids, 3, 7]) == "the red house"
    assert tok.encode_batch(["big blue", ""]) == [tok.encode("big blue"), []]
    return tok


def write_corpora(work: Path) -> dict[str, DataConfig]:
    (work / "c.en").write_text("".join(f"{s}\n" for s in SRC))
    (work / "c.de").write_text("".join(f"{t}\n" for t in TGT))
    (work / "c.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(SRC, TGT, strict=True)))
    folder = work / "m30k"
    folder.mkdir()
    for stem in ("train", "val", "test_2016_flickr"):
        for lang, lines in (("en", SRC), ("de", TGT)):
            text = "".join(f"{line}\n" for line in lines)
            (folder / f"{stem}.{lang}.gz").write_bytes(gzip.compress(text.encode()))
    return {
        "files": DataConfig(format="files", train=str(work / "c")),
        "tsv": DataConfig(format="tsv", train=str(work / "c.tsv")),
        "multi30k": DataConfig(format="multi30k", multi30k_dir=str(folder)),
    }


def check_corpora(cfgs: dict[str, DataConfig]) -> None:
    for name, cfg in cfgs.items():
        pairs = list(corpus.iter_pairs(cfg, "train"))
        assert pairs == list(zip(SRC, TGT, strict=True)), (name, pairs)
    test = list(corpus.iter_pairs(cfgs["multi30k"], "test"))  # test_2016_flickr.*.gz
    assert test == list(zip(SRC, TGT, strict=True))


def check_grain(cfg: DataConfig, tok: tokenizer.Tokenizer) -> list:
    assert pipeline.default_engine() == "grain"
    train = TrainingConfig(batch_size=2, bucket_width=4, shuffle_buffer=4)
    counts = pipeline.count_split(cfg, "train", tok, tok)
    assert (counts["total"], counts["empty"], counts["kept"]) == (5, 1, 4), counts
    batches = list(pipeline.make_batches(cfg, train, "train", tok, tok, epoch=0))
    assert sum(tgt_out.shape[0] for _, tgt_out in batches) == 4
    for (src, tgt_in), tgt_out in batches:
        assert src.dtype == tgt_in.dtype == tgt_out.dtype == np.int32
        assert src.shape == tgt_in.shape == tgt_out.shape and src.shape[1] % 4 == 0
    skipped = list(pipeline.make_batches(cfg, train, "train", tok, tok, epoch=0, skip=1))
    assert [b[1].tolist() for b in skipped] == [b[1].tolist() for b in batches[1:]]
    return batches


def check_fit(work: Path, tok: tokenizer.Tokenizer) -> None:
    """Keras takes the Grain dataset as it is (its Grain adapter), whose first two batches
    share a width that later ones do not (Keras infers its input spec from them)."""
    import keras

    short, long = "big blue", "a small dog runs on the red house and a cat sits"
    lines = [f"{text}\t{text}\n" for text in [short] * 4 + [long] * 4]
    (work / "fit.tsv").write_text("".join(lines))
    cfg = DataConfig(format="tsv", train=str(work / "fit.tsv"))

    src = keras.Input((None,), dtype="int32")
    tgt_in = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(tok.vocab_size, 8)(tgt_in)
    logits = keras.layers.Dense(tok.vocab_size)(embedded)
    model = keras.Model((src, tgt_in), logits)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = TrainingConfig(batch_size=2, bucket_width=4)
    batches = pipeline.make_batches(cfg, train, "train", tok, tok)
    widths = [tgt_out.shape[1] for _, tgt_out in batches]
    assert widths[0] == widths[1] and len(set(widths)) > 1, widths
    history = model.fit(batches, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def check_errors(work: Path) -> None:
    os.environ.pop(MULTI30K_ENV, None)
    cases = {
        "data.format=tfds needs the tensorflow extra": DataConfig(format="tfds", tfds_name="x"),
        "downloading Multi30k": DataConfig(format="multi30k"),
    }
    for expected, cfg in cases.items():
        try:
            corpus.iter_pairs(cfg, "train")
        except NmtError as exc:
            message = str(exc)
        else:
            raise AssertionError(f"no error for {cfg.format}")
        assert message.startswith(expected) and "\n" not in message, message
        assert message.endswith('pip install "nmt[tensorflow]"'), message


def check_real_multi30k(folder: Path, tok: tokenizer.Tokenizer) -> None:
    cfg = DataConfig(format="multi30k", multi30k_dir=str(folder))
    first = next(corpus.iter_pairs(cfg, "train"))
    assert first == (
        "Two young, White males are outside near many bushes.",
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
    )
    sizes = {split: sum(1 for _ in corpus.iter_pairs(cfg, split)) for split in corpus.SPLITS}
    assert sizes == {"train": 29000, "validation": 1014, "test": 1000}, sizes
    assert pipeline.count_split(cfg, "validation", tok, tok)["total"] == 1014


def main(argv: list[str]) -> None:
    work = Path(argv[0])
    tok = check_tokenizer(work)
    cfgs = write_corpora(work)
    check_corpora(cfgs)
    check_grain(cfgs["files"], tok)
    check_fit(work, tok)
    check_errors(work)
    if len(argv) > 1:
        check_real_multi30k(Path(argv[1]), tok)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1:])
