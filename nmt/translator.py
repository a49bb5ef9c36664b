"""Translate strings with a trained run: the one API the CLI, notebooks, training and export use.

The search runs under whichever Keras backend is active, compiled with that backend's own
compiler (`compile_search`): TensorFlow is imported only when it is the backend.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import keras
import numpy as np

from nmt import config as config_lib
from nmt import search
from nmt.config import Config, DecodingConfig
from nmt.errors import NmtError, RunDirError

log = logging.getLogger("nmt")

# Source batches are padded to multiples of this, so the compiled search sees few shapes.
SRC_PAD_MULTIPLE = 8

Hypothesis = tuple[str, float]
# (src_ids (batch, width) int32, src_len (batch,) int32) -> (ids, scores) as numpy arrays.
SearchFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


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
        self._compiled: dict[tuple, SearchFn] = {}

    @classmethod
    def from_run_dir(cls, run_dir: str | Path, weights: str = "best") -> Translator:
        """Loads config, SentencePiece models and weights of a run directory.

        Decoding defaults come from the run's `decoding.json` (`nmt tune-decoding`) where it
        exists, else from its config.

        Args:
            weights: "best", "last" or "averaged" (see `rundir.trained_weights`).

        Raises:
            RunDirError: the folder is missing or lacks a config, tokenizer or weights.
        """
        from nmt import rundir, tokenizer
        from nmt.model import build_model

        run = rundir.RunDir(run_dir)
        if not run.path.is_dir():
            raise RunDirError(f"run directory not found: {run}")
        if not run.config.is_file():
            raise RunDirError(f"{run} is not a run directory (no {rundir.CONFIG_FILE})")
        cfg = config_lib.load(run.config)
        tuned = rundir.read_decoding(run)
        if tuned:
            cfg = replace(cfg, decoding=replace(cfg.decoding, **tuned))
            log.info(
                "decoding defaults from %s: beam %d, length penalty %g",
                run.decoding,
                tuned["beam_size"],
                tuned["length_penalty"],
            )
        src_tok, tgt_tok = tokenizer.load_tokenizers(run.tokenizer)
        path = rundir.trained_weights(run, weights)
        if weights == "best" and path != run.best_weights:
            log.warning("%s has no best weights yet; using the last checkpoint", run)
        model = build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size)
        rundir.load_weights(model, path)
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
        """Source ids + EOS, truncated to `max_input_len`; [] (not translated) when the
        sentence encodes to no ids at all. The SavedModel applies the same rule in-graph."""
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
        src_len = np.array([len(s) for s in batch], np.int32)
        bucket = step_buckets(opts)[int(bucket_index(src.shape[1], opts))]
        out_ids, scores = self._search_fn(opts, bucket)(src, src_len)
        return [
            [
                (self.tgt_tok.decode(out_ids[b, k].tolist()), float(scores[b, k]))
                for k in range(opts.n_best)
            ]
            for b in range(len(batch))
        ]

    def _search_fn(self, opts: DecodingConfig, bucket: tuple[int, int]) -> SearchFn:
        """The compiled search of one (decoding options, bucket), made at first use."""
        key = (*dataclasses.astuple(opts), *bucket)
        if key not in self._compiled:
            self._compiled[key] = compile_search(self, opts, bucket)
        return self._compiled[key]

    def search(self, src_ids, src_len, opts: DecodingConfig, max_steps: int):
        """The decoding path the Translator and the SavedModel share.

        Encodes `src_ids` `(batch, width)` (ids + EOS, right-padded), allows each sentence
        `output_limits(src_len)` steps and runs greedy (beam 1) or beam search in one loop.

        Args:
            src_ids: int32 `(batch, width)`.
            src_len: int32 `(batch,)`, real source tokens including EOS.
            opts: beam size, n-best, length penalty and the output-length rule.
            max_steps: the loop's static bound (`step_buckets`), at least every limit.

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
            output_limits(src_len, opts),
            opts.beam_size,
            length_penalty=opts.length_penalty,
            n_best=opts.n_best,
            max_steps=max_steps,
        )


def compile_search(
    translator: Translator, opts: DecodingConfig, bucket: tuple[int, int]
) -> SearchFn:
    """`translator.search` for one bucket `(width, max_steps)`, compiled for the backend.

    TensorFlow: `tf.function`, one trace for any batch shape (`reduce_retracing`).
    JAX: `jax.jit` with the weights passed as arguments, so the same compiled function sees
    weights that change (validation BLEU during training); shapes are padded to a few, since
    jit compiles once per shape. PyTorch: eager under `torch.no_grad` (measured fastest, see
    `_torch_search`).
    """

    def search(src_ids, src_len):
        return translator.search(src_ids, src_len, opts, bucket[1])

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_search(search)
    if backend == "jax":
        return _jax_search(search, translator.model, bucket[0], opts.batch_size)
    if backend == "torch":
        return _torch_search(search)
    if backend == "numpy":
        return lambda src_ids, src_len: tuple(map(np.asarray, search(src_ids, src_len)))
    raise NmtError(f"decoding does not support KERAS_BACKEND={backend}")


def _tf_search(search: Callable) -> SearchFn:
    import tensorflow as tf

    compiled = tf.function(search, reduce_retracing=True)

    def run(src_ids, src_len):
        ids, scores = compiled(tf.constant(src_ids), tf.constant(src_len))
        return ids.numpy(), scores.numpy()

    return run


def _jax_search(search: Callable, model: keras.Model, width: int, batch_size: int) -> SearchFn:
    import jax

    variables = list(model.variables)

    def stateless(values, src_ids, src_len):
        # Inside jit a Keras variable read would bake today's value in as a constant.
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return search(src_ids, src_len)

    compiled = jax.jit(stateless)

    def run(src_ids, src_len):
        rows = len(src_len)
        src_ids, src_len = _pad_for_jit(src_ids, src_len, width, batch_size)
        ids, scores = compiled([v.value for v in variables], src_ids, src_len)
        return np.asarray(ids)[:rows], np.asarray(scores)[:rows]

    return run


def _pad_for_jit(
    src_ids: np.ndarray, src_len: np.ndarray, width: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pads a batch to the bucket's width and a power-of-two number of rows.

    jit compiles once per input shape: padding bounds that to a few shapes per bucket
    instead of one per (rows, width) seen. The source mask keeps padded columns out of the
    result; extra rows copy row 0, so they finish with it and add no search steps.
    """
    rows = min(1 << (len(src_len) - 1).bit_length(), max(batch_size, len(src_len)))
    padded = np.full((rows, width), config_lib.PAD_ID, np.int32)
    padded[: len(src_ids), : src_ids.shape[1]] = src_ids
    padded[len(src_ids) :] = padded[0]
    lengths = np.concatenate([src_len, np.repeat(src_len[:1], rows - len(src_len))])
    return padded, lengths.astype(np.int32)


def _torch_search(search: Callable) -> SearchFn:
    """Eager search without autograd.

    Measured against `torch.compile` on CPU: compiling the whole search breaks the graph at
    every loop step (the stop test reads a tensor) and took minutes to warm up; compiling
    the decoder step alone recompiles for every source width (seconds each) and then ran no
    faster than eager at the default model size. The loop is Python's either way.
    """
    import torch

    def run(src_ids, src_len):
        with torch.no_grad():  # no autograd graph of every decoding step
            ids, scores = search(src_ids, src_len)
        return keras.ops.convert_to_numpy(ids), keras.ops.convert_to_numpy(scores)

    return run


def output_limits(src_len, opts: DecodingConfig):
    """Search steps allowed per sentence, `max_len_a * src_len + max_len_b`, computed in
    float32 and truncated (the same arithmetic in eager numpy and in a graph)."""
    ops = keras.ops
    return ops.cast(ops.cast(src_len, "float32") * opts.max_len_a + opts.max_len_b, "int32")


def bucket_index(width, opts: DecodingConfig):
    """Index in `step_buckets(opts)` of the narrowest compiled search that fits `width`."""
    widths = np.array([w for w, _ in step_buckets(opts)], np.int32)
    return keras.ops.sum(keras.ops.cast(keras.ops.greater(width, widths), "int32"))


def pad_batch(sequences: Sequence[Sequence[int]], multiple: int = 1) -> np.ndarray:
    """Right-pads id lists with PAD into an int32 `(batch, len)` array.

    `len` is the longest sequence rounded up to a multiple of `multiple` (at least 1).
    """
    longest = max((len(s) for s in sequences), default=0)
    length = max(1, math.ceil(longest / multiple) * multiple)
    batch = np.full((len(sequences), length), config_lib.PAD_ID, dtype=np.int32)
    for row, seq in zip(batch, sequences, strict=True):
        row[: len(seq)] = seq
    return batch


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
