"""SentencePiece subword tokenizers: trained with `sentencepiece`, applied in-graph.

Training streams the sentences through a temporary file (no Python list of the corpus is
built), samples at most `tokenizer.max_training_sentences` per language with a seed, trains
with `sentencepiece` and writes the serialized models into a folder (the run directory):

- joint vocabulary (`tokenizer.joint: true`): `joint.model` (+ `joint.vocab`, for reading)
- separate vocabularies: `src.model` and `tgt.model` (+ `src.vocab`, `tgt.vocab`)

`load_tokenizers` reads them back as `Tokenizer` objects, which tokenize in plain Python
through `sentencepiece.SentencePieceProcessor` (the Grain pipeline, the Translator) and,
under TensorFlow, inside tf.data and `tf.function` through
`tensorflow_text.SentencepieceTokenizer` (same model bytes, same ids). TensorFlow is imported
only when the in-graph tokenizer is first used, so this module works without it.

Special ids are fixed by `nmt.config`: pad=0, unk=1, bos=2, eos=3.

The vocabulary size is a hard limit: a corpus too small for `tokenizer.vocab_size` pieces
is a `DataError` that names the largest size that works, rather than a model silently
smaller than the config says (the model's embedding sizes come from `Tokenizer.vocab_size`
either way, but a config that does not describe the run is a trap when comparing runs).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import sentencepiece as spm

from nmt.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, TokenizerConfig
from nmt.errors import DataError, RunDirError
from nmt.rundir import atomic_write

if TYPE_CHECKING:
    import tensorflow as tf

JOINT_MODEL = "joint.model"
SRC_MODEL = "src.model"
TGT_MODEL = "tgt.model"
SETTINGS_FILE = "settings.json"

_SPECIAL_PIECES = {PAD_ID: "<pad>", UNK_ID: "<unk>", BOS_ID: "<s>", EOS_ID: "</s>"}
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


class Tokenizer:
    """One SentencePiece model usable in plain Python and in-graph (TensorFlow).

    Args:
        model_proto: The serialized SentencePiece model (the bytes of a `.model` file).
        name: A label used in error messages, e.g. the file the model came from.
    """

    def __init__(self, model_proto: bytes, name: str = "tokenizer") -> None:
        self._proto = bytes(model_proto)
        self.name = name
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self._tf_tokenizer: Any = None

    @property
    def tf_tokenizer(self) -> Any:
        """The `tensorflow_text.SentencepieceTokenizer`, created on first use.

        It owns a TF resource; one per object, so tf.data pipelines and exported functions
        capture the same handle. Only TensorFlow users get here: the import is deferred.
        """
        if self._tf_tokenizer is None:
            import tensorflow as tf
            import tensorflow_text as tf_text

            # First use may be inside a tf.data/tf.function trace; the resource must live
            # outside it, or another graph could not use it.
            with tf.init_scope():
                self._tf_tokenizer = tf_text.SentencepieceTokenizer(
                    model=self._proto, out_type=tf.int32
                )
        return self._tf_tokenizer

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Loads a `.model` file; a missing or unreadable file is a `RunDirError`."""
        path = Path(path)
        try:
            proto = path.read_bytes()
            _check_checksum(path, proto)
            tokenizer = cls(proto, name=str(path))
        except (OSError, RuntimeError) as exc:
            raise RunDirError(f"cannot load SentencePiece model {path}: {exc}") from None
        tokenizer._check_special_ids()
        return tokenizer

    def _check_special_ids(self) -> None:
        found = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if found != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise RunDirError(
                f"{self.name}: SentencePiece model has special ids pad/unk/bos/eos = {found}, "
                f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; retrain it with nmt"
            )

    @property
    def vocab_size(self) -> int:
        """Number of ids, special ids included (ids are in `[0, vocab_size)`)."""
        return self._sp.get_piece_size()

    @property
    def model_proto(self) -> bytes:
        """The serialized SentencePiece model (for export or copying into a run directory)."""
        return self._proto

    def tokenize(self, strings: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """Splits UTF-8 strings into subword ids, without BOS/EOS. Works in tf.data/tf.function.

        Args:
            strings: tf.string tensor, shape `()` or `(batch,)`.

        Returns:
            int32 ids: a dense `(len,)` tensor for a scalar input, a `tf.RaggedTensor`
            `(batch, (len))` for a vector input.
        """
        return self.tf_tokenizer.tokenize(strings)

    def detokenize(self, ids: tf.Tensor | tf.RaggedTensor) -> tf.Tensor:
        """Turns ids back into text, dropping PAD and BOS and everything from the first EOS on.

        Args:
            ids: int ids, dense `(len,)` / `(batch, len)` right-padded with PAD (as decoders
                produce them) or ragged `(batch, (len))`.

        Returns:
            tf.string tensor, shape `()` for a `(len,)` input, else `(batch,)`.
        """
        import tensorflow as tf  # only TensorFlow callers get here

        if isinstance(ids, tf.RaggedTensor):
            ids = ids.to_tensor(default_value=PAD_ID)
        ids = tf.cast(tf.convert_to_tensor(ids), tf.int32)
        is_vector = ids.shape.rank == 1
        if is_vector:
            ids = ids[tf.newaxis]
        # Everything at or after the first EOS is cut; cumsum marks those positions.
        before_eos = tf.math.cumsum(tf.cast(ids == EOS_ID, tf.int32), axis=-1) == 0
        keep = before_eos & (ids != PAD_ID) & (ids != BOS_ID)
        text = self.tf_tokenizer.detokenize(tf.ragged.boolean_mask(ids, keep))
        return text[0] if is_vector else text

    def encode(self, text: str) -> list[int]:
        """Python-side `tokenize` for one string: the same ids as the in-graph tokenizer."""
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """`encode` for many strings at once (SentencePiece encodes a list in C++ threads)."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        """Python-side `detokenize` for one sequence (PAD/BOS dropped, cut at the first EOS)."""
        kept = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                kept.append(i)
        return self._sp.decode(kept)

    def id_to_piece(self, token_id: int) -> str:
        """The subword string of one id, e.g. `"▁house"`; specials read `<pad>`, `</s>`, ..."""
        return self._sp.id_to_piece(int(token_id))

    def piece_to_id(self, piece: str) -> int:
        """The id of a subword string (UNK_ID when it is not in the vocabulary)."""
        return self._sp.piece_to_id(piece)


def _spool(sentences: Iterable[str], path: Path) -> int:
    """Streams stripped non-empty sentences into `path`, one per line; returns the count."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for sentence in sentences:
            # A newline inside an item would split it in two in the spool file.
            sentence = sentence.strip().replace("\n", " ")
            if sentence:
                f.write(sentence + "\n")
                count += 1
    return count


def _read_sample(path: Path, count: int, limit: int, seed: int) -> Iterator[str]:
    """Yields the lines of `path`, or `limit` of them chosen uniformly when `count` is larger.

    The sample depends only on `seed` (SentencePiece's own sampler is not repeatable), and
    only the chosen line numbers are held in memory, never the text.
    """
    chosen = None
    if 0 < limit < count:
        chosen = np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))
    with open(path, encoding="utf-8", newline="\n") as f:
        next_pick = 0  # index into the sorted line numbers `chosen`
        for i, line in enumerate(f):
            if chosen is None or (next_pick < limit and chosen[next_pick] == i):
                next_pick += 1
                yield line[:-1]


def _trainer_options(cfg: TokenizerConfig) -> dict:
    """SentencePiece trainer arguments: the config plus nmt's fixed special ids."""
    return dict(
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        input_sentence_size=0,  # sampling is done beforehand, repeatably (_read_sample)
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_piece=_SPECIAL_PIECES[PAD_ID],
        unk_piece=_SPECIAL_PIECES[UNK_ID],
        bos_piece=_SPECIAL_PIECES[BOS_ID],
        eos_piece=_SPECIAL_PIECES[EOS_ID],
        num_threads=os.cpu_count() or 1,
        minloglevel=2,  # SentencePiece's progress log is long; errors still raise.
    )


def _train_one(spools: list[tuple[Path, int]], cfg: TokenizerConfig, seed: int, what: str) -> bytes:
    """Trains one SentencePiece model on spooled sentences of one or more languages.

    Args:
        spools: `(path, sentence count)` per language, as written by `_spool`.

    Returns:
        The serialized model.
    """
    limit = cfg.max_training_sentences
    streams = [_read_sample(path, count, limit, seed + k) for k, (path, count) in enumerate(spools)]
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain(*streams),
            model_writer=writer,
            **_trainer_options(cfg),
        )
    except RuntimeError as exc:
        n_sentences = sum(min(count, limit) if limit > 0 else count for _, count in spools)
        raise _training_error(exc, cfg, n_sentences, what) from None
    return writer.getvalue()


def _training_error(
    exc: RuntimeError, cfg: TokenizerConfig, n_sentences: int, what: str
) -> DataError:
    """Turns SentencePiece's internal errors into a one-line `DataError`."""
    match = _TOO_HIGH.search(str(exc))
    if match:
        return DataError(
            f"tokenizer.vocab_size={cfg.vocab_size} is too large for the {what} tokenizer's "
            f"corpus ({n_sentences} sentences): SentencePiece can build at most "
            f"{match.group(2)} pieces from it; set tokenizer.vocab_size to {match.group(2)} "
            "or less"
        )
    return DataError(f"SentencePiece failed to train the {what} tokenizer: {exc}")


def _write_model(proto: bytes, path: Path) -> None:
    """Writes `path` (+ a human-readable `.vocab` beside it) atomically."""
    atomic_write(path, proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n" for i in range(len(sp)))
    atomic_write(path.with_suffix(".vocab"), vocab)


def _spool_both(
    src_sentences: Iterable[str], tgt_sentences: Iterable[str], tmp: Path
) -> tuple[tuple[Path, int], tuple[Path, int]]:
    """Spools both sides into `tmp`; a side without any non-empty line is a `DataError`."""
    spools = []
    for side, sentences in (("source", src_sentences), ("target", tgt_sentences)):
        path = tmp / f"{side}.txt"
        count = _spool(sentences, path)
        if count == 0:
            raise DataError(f"cannot train the tokenizer: the {side} side has no non-empty lines")
        spools.append((path, count))
    return spools[0], spools[1]


def train_tokenizers(
    src_sentences: Iterable[str],
    tgt_sentences: Iterable[str],
    cfg: TokenizerConfig,
    out_dir: Path,
    seed: int = 0,
    settings: dict | None = None,
) -> None:
    """Trains SentencePiece model(s) and writes them into `out_dir`.

    Both iterables are consumed once, lazily, into temporary files inside `out_dir` (removed
    afterwards); empty lines are skipped. When a side has more than
    `cfg.max_training_sentences` lines, that many are sampled uniformly with `seed`.

    Args:
        src_sentences: Source-language sentences, one per item.
        tgt_sentences: Target-language sentences, one per item.
        cfg: Model type, vocabulary size, coverage, sampling size and joint/separate.
        out_dir: Folder (created if needed) that receives `joint.model`, or
            `src.model` and `tgt.model`.
        seed: Seed of the sentence sampling; the same inputs and seed give the same models.
        settings: What the models were trained with, recorded in `settings.json` beside
            the models' checksums (`load_tokenizers` checks them).

    Raises:
        DataError: A side has no non-empty lines, or is too small for `cfg.vocab_size`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".spm-") as tmp:
        src, tgt = _spool_both(src_sentences, tgt_sentences, Path(tmp))
        if cfg.joint:
            protos = {JOINT_MODEL: _train_one([src, tgt], cfg, seed, "joint")}
        else:
            protos = {
                SRC_MODEL: _train_one([src], cfg, seed, "source"),
                TGT_MODEL: _train_one([tgt], cfg, seed, "target"),
            }
    for name, proto in protos.items():
        _write_model(proto, out_dir / name)
    # Models of the other layout would make `load_tokenizers` ambiguous.
    for name in {JOINT_MODEL, SRC_MODEL, TGT_MODEL} - protos.keys():
        (out_dir / name).unlink(missing_ok=True)
        (out_dir / name).with_suffix(".vocab").unlink(missing_ok=True)
    checksums = {name: hashlib.sha256(proto).hexdigest() for name, proto in protos.items()}
    record = {"settings": settings or {}, "sha256": checksums}
    atomic_write(out_dir / SETTINGS_FILE, json.dumps(record, indent=2))


def read_settings(out_dir: Path) -> dict:
    """`settings.json`: {"settings": what the models were trained with, "sha256": {...}}."""
    path = Path(out_dir) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}") from None


def _check_checksum(path: Path, proto: bytes) -> None:
    expected = read_settings(path.parent).get("sha256", {}).get(path.name)
    if expected and hashlib.sha256(proto).hexdigest() != expected:
        raise RunDirError(
            f"{path} is not the SentencePiece model this run was trained with (its checksum "
            f"differs from {SETTINGS_FILE}); restore the original or train a new run"
        )


def tokenizers_exist(out_dir: Path) -> bool:
    """Whether `out_dir` holds a joint model or both a source and a target model."""
    out_dir = Path(out_dir)
    return (out_dir / JOINT_MODEL).is_file() or (
        (out_dir / SRC_MODEL).is_file() and (out_dir / TGT_MODEL).is_file()
    )


def load_tokenizers(out_dir: Path) -> tuple[Tokenizer, Tokenizer]:
    """Loads the tokenizers written by `train_tokenizers`.

    Returns:
        `(src_tokenizer, tgt_tokenizer)`; for a joint model the same object twice.

    Raises:
        RunDirError: No model in `out_dir`, or a model that cannot be read.
    """
    out_dir = Path(out_dir)
    if (out_dir / JOINT_MODEL).is_file():
        joint = Tokenizer.from_file(out_dir / JOINT_MODEL)
        return joint, joint
    if (out_dir / SRC_MODEL).is_file() and (out_dir / TGT_MODEL).is_file():
        return Tokenizer.from_file(out_dir / SRC_MODEL), Tokenizer.from_file(out_dir / TGT_MODEL)
    raise RunDirError(
        f"no SentencePiece models in {out_dir}: expected {JOINT_MODEL}, or {SRC_MODEL} and "
        f"{TGT_MODEL} (they are written when training starts)"
    )
