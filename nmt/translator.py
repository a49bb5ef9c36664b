"""Translate strings with a trained run: the one API the CLI, notebooks, training and export use.

The search runs under whichever Keras backend is active, compiled with that backend's own
compiler (`compile_search`): TensorFlow is imported only when it is the backend.

Ensembles: a Translator may hold several models (`from_run_dir(run, ensemble=[...])`). They
run one search together through `search.ensemble`, which averages their probabilities; each
model keeps its own encoder outputs and decoder state, so members may differ in anything
(Cho or attention, GRU or LSTM, sizes) but their SentencePiece models. Those must be the
same files, source and target: the target because the members' distributions are averaged
id by id, the source because the source is encoded once (one sorted, padded batch and one
compiled search for all members). Decoding settings and data come from the first run (see
`from_run_dir` for the settings `nmt tune-decoding` stores for an ensemble).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

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
# (src_ids (batch, width) int32, src_len (batch,) int32, length_penalty) -> (ids, scores) as
# numpy arrays.
SearchFn = Callable[[np.ndarray, np.ndarray, float], tuple[np.ndarray, np.ndarray]]


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

    def __init__(
        self,
        cfg: Config,
        model: keras.Model,
        src_tok,
        tgt_tok,
        ensemble: Sequence[keras.Model] = (),
    ):
        self.cfg, self.model, self.src_tok, self.tgt_tok = cfg, model, src_tok, tgt_tok
        # Every model that decodes: `model` first, then the other ensemble members.
        self.models = (model, *ensemble)
        self._compiled: dict[tuple, SearchFn] = {}
        # A warning that the tuned defaults were tuned with other weights: logged the first
        # time one of them is used, so not when options override both, nor by tune-decoding.
        self._tuned_for_other_weights: str | None = None

    @classmethod
    def from_run_dir(
        cls, run_dir: str | Path, weights: str = "best", ensemble: Sequence[str | Path] = ()
    ) -> Translator:
        """Loads config, SentencePiece models and weights of a run directory.

        Decoding defaults come from `nmt tune-decoding`'s settings where it ran, else from the
        run's config. An ensemble takes those tuned for it (`run_dir`'s
        `decoding.ensemble.json` holds them per set of other members), else `run_dir`'s own.

        Args:
            run_dir: the run; with `ensemble`, its config is the ensemble's.
            weights: "best", "last" or "averaged" (see `rundir.trained_weights`), for every
                model.
            ensemble: more runs whose models decode together with it (see the module doc).

        Raises:
            RunDirError: a folder is missing or lacks a config, tokenizer or weights, or an
                ensemble member's SentencePiece models differ from `run_dir`'s.
        """
        first, *members = (_open_run(path) for path in (run_dir, *ensemble))
        for member in members:  # before any weights are read: a mismatch fails fast
            _check_same_tokenizers(first, member)
        models = [_load_model(run, weights) for run in (first, *members)]
        cfg, other_weights = _with_tuned_decoding(first, ensemble, weights)
        translator = cls(cfg, models[0], first.src_tok, first.tgt_tok, ensemble=models[1:])
        translator._tuned_for_other_weights = other_weights
        return translator

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
        if self._tuned_for_other_weights and None in (beam_size, length_penalty):
            log.warning("%s", self._tuned_for_other_weights)
            self._tuned_for_other_weights = None
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
        out_ids, scores = self._search_fn(opts, bucket)(src, src_len, opts.length_penalty)
        return [
            [
                (self.tgt_tok.decode(out_ids[b, k].tolist()), float(scores[b, k]))
                for k in range(opts.n_best)
            ]
            for b in range(len(batch))
        ]

    def _search_fn(self, opts: DecodingConfig, bucket: tuple[int, int]) -> SearchFn:
        """The compiled search of one (decoding options, bucket), made at first use. The
        length penalty is an argument of the search, so one compilation serves every value
        (`nmt tune-decoding` tries several per beam size)."""
        key = (*dataclasses.astuple(dataclasses.replace(opts, length_penalty=0.0)), *bucket)
        if key not in self._compiled:
            self._compiled[key] = compile_search(self, opts, bucket)
        return self._compiled[key]

    def search(self, src_ids, src_len, opts: DecodingConfig, max_steps: int, length_penalty=None):
        """The decoding path the Translator and the SavedModel share.

        Encodes `src_ids` `(batch, width)` (ids + EOS, right-padded), allows each sentence
        `output_limits(src_len)` steps and runs greedy (beam 1) or beam search in one loop.

        Args:
            src_ids: int32 `(batch, width)`.
            src_len: int32 `(batch,)`, real source tokens including EOS.
            opts: beam size, n-best, length penalty and the output-length rule.
            max_steps: the loop's static bound (`step_buckets`), at least every limit.
            length_penalty: a float or scalar tensor in place of `opts.length_penalty`.

        Returns:
            ids `(batch, n_best, T)` int32 without BOS/EOS, scores `(batch, n_best)`.
        """
        states = tuple(model.initial_state(model.encode(src_ids)) for model in self.models)
        return search.beam_search(
            search.ensemble([_log_prob_step(model) for model in self.models]),
            states,
            output_limits(src_len, opts),
            opts.beam_size,
            length_penalty=opts.length_penalty if length_penalty is None else length_penalty,
            n_best=opts.n_best,
            max_steps=max_steps,
        )


def _log_prob_step(model: keras.Model) -> search.StepFn:
    def step(token_ids, state):
        logits, state = model.decode_step(token_ids, state)
        return keras.ops.log_softmax(logits, axis=-1), state

    return step


@dataclasses.dataclass(frozen=True)
class _Run:
    """A run directory's config and SentencePiece models, before its weights are read."""

    run: Any  # nmt.rundir.RunDir
    cfg: Config
    src_tok: Any  # nmt.tokenizer.Tokenizer
    tgt_tok: Any


def _open_run(run_dir: str | Path) -> _Run:
    from nmt import rundir, tokenizer

    run = rundir.RunDir(run_dir)
    if not run.path.is_dir():
        raise RunDirError(f"run directory not found: {run}")
    if not run.config.is_file():
        raise RunDirError(f"{run} is not a run directory (no {rundir.CONFIG_FILE})")
    cfg = config_lib.load(run.config)
    return _Run(run, cfg, *tokenizer.load_tokenizers(run.tokenizer))


def _with_tuned_decoding(
    run: _Run, ensemble: Sequence[str | Path], weights: str
) -> tuple[Config, str | None]:
    """The run's config with the decoding settings `nmt tune-decoding` stored, if any: those
    tuned for the ensemble, else those tuned for the run alone. Settings tuned with other
    `--weights` are still used, as tuning them was the user's choice; the second value is
    then the warning to give when they are, saying how to tune for these weights."""
    from nmt import rundir

    for members in (ensemble, ()) if ensemble else ((),):
        tuned = rundir.read_decoding(run.run, members)
        if not tuned:
            continue
        path = rundir.decoding_file(run.run, members)
        tuned_with = tuned.pop("weights")
        beam, alpha = tuned["beam_size"], tuned["length_penalty"]
        log.info("decoding defaults from %s: beam %d, length penalty %g", path, beam, alpha)
        cfg = replace(run.cfg, decoding=replace(run.cfg.decoding, **tuned))
        if tuned_with in (None, weights):
            return cfg, None
        command = f"nmt tune-decoding {run.run} --weights {weights}"
        command += f" --ensemble {' '.join(map(str, ensemble))}" if ensemble else ", replacing them"
        return cfg, (
            f"beam {beam}, length penalty {alpha:g} from {path} were tuned with --weights "
            f"{tuned_with}; used with the {weights} weights (to tune for these: {command})"
        )
    return run.cfg, None


def load_run_model(run_dir: str | Path, weights: str = "best") -> keras.Model:
    """A run directory's trained model alone: no decoding settings read (`nmt average`)."""
    return _load_model(_open_run(run_dir), weights)


def _load_model(run: _Run, weights: str) -> keras.Model:
    from nmt import rundir
    from nmt.model import build_model

    path = rundir.trained_weights(run.run, weights)
    if weights == "best" and path != run.run.best_weights:
        log.warning("%s has no best weights yet; using the last checkpoint", run.run)
    model = build_model(run.cfg.model, run.src_tok.vocab_size, run.tgt_tok.vocab_size)
    rundir.load_weights(model, path)
    return model


def _check_same_tokenizers(first: _Run, member: _Run) -> None:
    """Ensemble members average distributions id by id and read one source encoding."""
    for side, ours, theirs in [
        ("target vocabulary", first.tgt_tok, member.tgt_tok),
        ("source tokenizer", first.src_tok, member.src_tok),
    ]:
        if ours.model_proto != theirs.model_proto:
            raise RunDirError(
                f"cannot ensemble {member.run} with {first.run}: ensemble members must share "
                f"the {side}, but {theirs.name} is not the SentencePiece model {ours.name}"
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

    def search(src_ids, src_len, length_penalty):
        return translator.search(src_ids, src_len, opts, bucket[1], length_penalty)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tf_search(search)
    if backend == "jax":
        return _jax_search(search, translator.models, bucket[0], opts.batch_size)
    if backend == "torch":
        return _torch_search(search)
    if backend == "numpy":
        return lambda *args: tuple(map(np.asarray, search(*args)))
    raise NmtError(f"decoding does not support KERAS_BACKEND={backend}")


def _tf_search(search: Callable) -> SearchFn:
    import tensorflow as tf

    compiled = tf.function(search, reduce_retracing=True)

    def run(src_ids, src_len, length_penalty):
        alpha = tf.constant(length_penalty, tf.float32)
        ids, scores = compiled(tf.constant(src_ids), tf.constant(src_len), alpha)
        return ids.numpy(), scores.numpy()

    return run


def _jax_search(
    search: Callable, models: Sequence[keras.Model], width: int, batch_size: int
) -> SearchFn:
    import jax

    variables = [v for model in models for v in model.variables]

    def stateless(values, src_ids, src_len, length_penalty):
        # Inside jit a Keras variable read would bake today's value in as a constant.
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return search(src_ids, src_len, length_penalty)

    compiled = jax.jit(stateless)

    def run(src_ids, src_len, length_penalty):
        rows = len(src_len)
        src_ids, src_len = _pad_for_jit(src_ids, src_len, width, batch_size)
        alpha = np.float32(length_penalty)
        ids, scores = compiled([v.value for v in variables], src_ids, src_len, alpha)
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

    def run(src_ids, src_len, length_penalty):
        with torch.no_grad():  # no autograd graph of every decoding step
            ids, scores = search(src_ids, src_len, length_penalty)
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
