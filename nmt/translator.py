"""Translate strings with a trained run: the one API the CLI, notebooks, training and export use."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf

from nmt import config as config_lib
from nmt import search
from nmt.analysis import pad_batch
from nmt.config import Config, DecodingConfig
from nmt.errors import NmtError, RunDirError

log = logging.getLogger("nmt")

# Source batches are padded to multiples of this, so the compiled search sees few shapes.
SRC_PAD_MULTIPLE = 8

Hypothesis = tuple[str, float]


class Counter(Protocol):
    """Where `translate_n_best` reports sentences done, e.g. `nmt.console.Progress`."""

    def update(self, n: int) -> None: ...


class Translator:
    """Translates lists of strings with a model, its tokenizers and decoding settings.

    Batches are sorted by length (less padding, faster) and results come back in input order.
    Inputs that are empty, whitespace-only or encode to no ids at all (e.g. only control
    characters, which SentencePiece normalizes away) give empty outputs without running the
    model: a decoder fed nothing but EOS would only make up a sentence.
    """

    def __init__(self, cfg: Config, model: keras.Model, src_tok, tgt_tok):
        self.cfg, self.model, self.src_tok, self.tgt_tok = cfg, model, src_tok, tgt_tok
        self._compiled: dict[tuple, tf.types.experimental.PolymorphicFunction] = {}

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> Translator:
        """Loads config, SentencePiece models and the best weights of a run directory.

        Raises:
            RunDirError: the folder is missing or lacks a config, tokenizer or weights.
        """
        from nmt import tokenizer, training
        from nmt.model import build_model

        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunDirError(f"run directory not found: {run_dir}")
        cfg_path = run_dir / training.CONFIG_FILE
        if not cfg_path.is_file():
            raise RunDirError(f"{run_dir} is not a run directory (no {training.CONFIG_FILE})")
        cfg = config_lib.load(cfg_path)
        src_tok, tgt_tok = tokenizer.load_tokenizers(run_dir / training.TOKENIZER_DIR)
        weights = _weights_file(run_dir)
        model = build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size)
        training.load_weights(model, weights)
        return cls(cfg, model, src_tok, tgt_tok)

    def translate(self, sentences: Sequence[str], **options) -> list[str]:
        """Best translation of each sentence (options as in `translate_n_best`)."""
        options["n_best"] = 1  # only the best is returned, whatever the config's n_best
        return [hyps[0][0] for hyps in self.translate_n_best(sentences, **options)]

    def translate_n_best(
        self,
        sentences: Sequence[str],
        beam_size: int | None = None,
        n_best: int | None = None,
        length_penalty: float | None = None,
        batch_size: int | None = None,
        progress: Counter | None = None,
        offset: int = 0,
    ) -> list[list[Hypothesis]]:
        """n-best translations with their normalized scores, best first, in input order.

        Args:
            sentences: source strings; empty ones give `[("", 0.0)] * n_best`.
            beam_size, n_best, length_penalty, batch_size: override `cfg.decoding`.
            progress: counts the sentences done.
            offset: how many inputs came before `sentences[0]` when they are one chunk of a
                longer stream, so that warnings name the input's number in the whole stream.
        """
        opts = self.decoding_options(beam_size, n_best, length_penalty, batch_size)
        ids = [self._encode_source(s, offset + i) for i, s in enumerate(sentences)]
        results: list[list[Hypothesis]] = [[("", 0.0)] * opts.n_best for _ in sentences]
        order = sorted((i for i, x in enumerate(ids) if x), key=lambda i: len(ids[i]))
        for start in range(0, len(order), opts.batch_size):
            chunk = order[start : start + opts.batch_size]
            for i, hyps in zip(
                chunk, self._decode_batch([ids[i] for i in chunk], opts), strict=True
            ):
                results[i] = hyps
            if progress:
                progress.update(len(chunk))
        if progress and len(order) < len(sentences):
            progress.update(len(sentences) - len(order))  # the empty ones
        return results

    def decoding_options(
        self, beam_size=None, n_best=None, length_penalty=None, batch_size=None
    ) -> DecodingConfig:
        given = {
            "beam_size": beam_size,
            "n_best": n_best,
            "length_penalty": length_penalty,
            "batch_size": batch_size,
        }
        opts = replace(self.cfg.decoding, **{k: v for k, v in given.items() if v is not None})
        if opts.beam_size < 1 or opts.batch_size < 1 or opts.n_best < 1:
            raise NmtError("beam size, n-best and batch size must be at least 1")
        if opts.n_best > opts.beam_size:
            raise NmtError(f"n-best ({opts.n_best}) cannot exceed the beam size ({opts.beam_size})")
        return opts

    def _encode_source(self, sentence: str, index: int) -> list[int]:
        if not sentence.strip():
            return []
        ids = self.src_tok.encode(sentence)
        if not ids:
            return []
        limit = self.cfg.decoding.max_input_len
        if len(ids) > limit:
            log.warning(
                "input %d has %d tokens; translating its first %d (decoding.max_input_len)",
                index + 1,
                len(ids),
                limit,
            )
            ids = ids[:limit]
        return ids + [config_lib.EOS_ID]

    def _decode_batch(self, batch: list[list[int]], opts: DecodingConfig) -> list[list[Hypothesis]]:
        src = pad_batch(batch, multiple=SRC_PAD_MULTIPLE)
        src_len = src.shape[1]
        lengths = np.array([len(s) for s in batch], np.float32)
        max_len = (opts.max_len_a * lengths + opts.max_len_b).astype(np.int32)
        max_steps = next(steps for width, steps in step_buckets(opts) if width >= src_len)
        fn = self._search_fn(opts.beam_size, opts.n_best, opts.length_penalty, max_steps)
        out_ids, scores = fn(tf.constant(src), tf.constant(max_len))
        out_ids, scores = out_ids.numpy(), scores.numpy()
        return [
            [
                (self.tgt_tok.decode(out_ids[b, k].tolist()), float(scores[b, k]))
                for k in range(opts.n_best)
            ]
            for b in range(len(batch))
        ]

    def _search_fn(self, beam_size: int, n_best: int, alpha: float, max_steps: int):
        key = (beam_size, n_best, alpha, max_steps)
        if key not in self._compiled:
            self._compiled[key] = tf.function(
                lambda src_ids, max_len: self.search(
                    src_ids, max_len, beam_size, n_best, alpha, max_steps
                ),
                reduce_retracing=True,
            )
        return self._compiled[key]

    def search(self, src_ids, max_len, beam_size: int, n_best: int, alpha: float, max_steps: int):
        """Encodes `src_ids` `(batch, src_len)` and runs greedy/beam search in one loop.

        Returns:
            ids `(batch, n_best, T)` int32 without BOS/EOS, scores `(batch, n_best)`.
        """
        state = self.model.initial_state(self.model.encode(src_ids))

        def step(token_ids, state):
            logits, state = self.model.decode_step(token_ids, state)
            return keras.ops.log_softmax(logits, axis=-1), state

        return search.beam_search(
            step,
            state,
            max_len,
            beam_size,
            length_penalty=alpha,
            n_best=n_best,
            max_steps=max_steps,
        )


def step_buckets(opts: DecodingConfig) -> list[tuple[int, int]]:
    """`(padded source width, max_steps)` of each compiled search.

    Search needs a static output width, and every step's cost grows with it, so one width for
    the longest possible source (`max_input_len` + EOS) would make short sentences pay for
    ~400 columns, while one width per padded source length would compile many searches. The
    Translator and the exported graph hold one search per doubling of the source width and
    run the smallest that fits. Its `max_steps` is `max_len_a * width + max_len_b` for its
    widest source: at least every sentence's own `max_len`, so outputs do not depend on the
    bucket, and the loop still stops as soon as every sentence is finished.
    """
    widest = math.ceil((opts.max_input_len + 1) / SRC_PAD_MULTIPLE) * SRC_PAD_MULTIPLE
    widths, width = [], SRC_PAD_MULTIPLE
    # Doublings up to half the widest, then the widest: the last bucket is never only a
    # few columns wider than the one before it.
    while width * 2 <= widest:
        widths.append(width)
        width *= 2
    widths.append(widest)
    return [(w, int(opts.max_len_a * w + opts.max_len_b)) for w in widths]


def _weights_file(run_dir: Path) -> Path:
    from nmt import training

    best = run_dir / training.BEST_WEIGHTS
    if best.is_file():
        return best
    state_file = run_dir / training.CHECKPOINT_DIR / "state.json"
    if state_file.is_file():
        last = run_dir / training.CHECKPOINT_DIR / json.loads(state_file.read_text())["weights"]
        if last.is_file():
            log.warning("%s has no best weights yet; using the last checkpoint", run_dir)
            return last
    raise RunDirError(
        f"{run_dir} has no trained model (no {training.BEST_WEIGHTS}); "
        "train it first with 'nmt train'"
    )
