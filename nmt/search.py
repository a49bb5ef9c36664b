"""Greedy and beam search over a step function.

Search knows nothing of the model. It drives a *step function*

    step_fn(token_ids, state) -> (log_probs, new_state)

- `token_ids`: (n,) int32, the previous token of every row (BOS at the first step).
- `state`: any nested structure (dict, tuple, ...) of tensors, each with leading dim n.
- `log_probs`: (n, vocab) float scores of the next token, normally log-softmaxed. Search
  only adds them up and compares them; the one assumption is that they are <= 0, which
  beam search's early stop relies on (see `beam_search`).
- `new_state`: the same structure and shapes as `state`. Entries under a dict key
  `SOURCE` must come back unchanged; beam search then skips reordering them (see `SOURCE`).

Several models decode as one through `ensemble`, which combines their step functions into
one (their states a tuple), so nothing below knows how many models there are.

Shapes are static, so `step_fn` runs on every row at every step, also for sentences
that have finished (they are fed PAD or a dead beam's token); those outputs are ignored.

Design, shared by both searches:

- The whole search is ONE `keras.ops.while_loop` with static shapes, so callers can wrap
  it in `tf.function` or `jax.jit` and it compiles once per (batch, max_steps) shape.
  Output ids live in buffers preallocated with PAD, shape (..., max_steps); step t
  writes column t through a `where` on a one-hot column mask. The loop exits early once
  every sentence is finished.
- PAD and BOS are never emitted: their log-probs are set to -inf after every call of
  `step_fn`, whatever it returns, because a PAD inside the ids would read as the end of
  the sentence and BOS is only ever an input. (Not when `bos_id` is also `eos_id`, as in
  models that start from EOS: that would forbid ending.) The scores are not
  renormalized: they stay the step function's log-probs of the tokens chosen.
- No empty output: EOS is not emitted at the first step (the minimum output length of
  1 that JoeyNMT and fairseq default to). Without it, beam search returned an empty
  translation for about 3 sentences in 1,000 of Multi30k: an EOS-only hypothesis
  scores one log-prob, and the length penalty does not push it below the longer ones.
- Lengths: `max_len` is an int or a (batch,) int tensor of per-sentence limits (e.g.
  `max_len_a * src_len + max_len_b`): the most search steps, i.e. the most tokens of a
  hypothesis counting its EOS. So a hypothesis ends in EOS with at most `max_len - 1`
  tokens before it, or holds `max_len` tokens and no EOS.
- The length-limit rule (as in JoeyNMT; fairseq instead forces an EOS): a hypothesis
  still without EOS after `max_len` steps is finished there, as it is. It gets no EOS,
  neither in its ids nor in its score, and is scored like every other hypothesis: the
  sum of the log-probs of the steps it took, divided in beam search by the length
  penalty of its length, where length = steps taken = tokens + 1 for an EOS-ended
  hypothesis and `max_len` for a cut one. Greedy search and beam search (also
  `beam_size=1`) follow this one rule, and in beam search cut and EOS-ended
  hypotheses compete in the same finished set.
- The output width T is static: `max_steps` (default: `max_len` when it is an int,
  else the largest value of the `max_len` tensor, which needs it to be concrete, i.e.
  outside tf.function / jax.jit; pass `max_steps` there). T does not shrink when every
  sentence finishes early: rows are right-padded with PAD, so callers strip PADs.
- Returned ids never contain BOS or EOS; PAD (0) follows the last token.
- Only `keras` and `keras.ops` are used, so search runs under the TensorFlow, JAX and
  PyTorch backends alike (eagerly under PyTorch: `ops.while_loop` is a Python loop there).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from nmt.config import BOS_ID, EOS_ID, PAD_ID

# A nested structure of tensors, each with leading dim n (rows).
State = Any
Tensor = Any
StepFn = Callable[[Tensor, State], tuple[Tensor, State]]

NEG_INF = float("-inf")

# A dict entry under this key, at any depth of the state, holds per-sentence constants that
# the step function reads and returns unchanged (a model's encoder outputs, attention keys,
# source mask). Beam search tiles it once and never gathers it by parent beam: a beam's
# parent is always a beam of the same sentence, so the gather would copy it unchanged, at
# every step (for an attention model, most of the state's bytes).
SOURCE = "source"


def gnmt_length_penalty(length: Tensor, alpha: float) -> Tensor:
    """The GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016, eq. 14).

    Args:
        length: int or float tensor of any shape: hypothesis lengths in tokens, counting
            the EOS token when the hypothesis ended with one.
        alpha: strength; 0 turns the penalty off (it is then 1 everywhere).

    Returns:
        float32 tensor of the shape of `length`; normalized score = log-prob sum / this.
    """
    length = ops.cast(length, "float32")
    return ops.power((5.0 + length) / 6.0, alpha)


def ensemble(step_fns: Sequence[StepFn]) -> StepFn:
    """One step function for several models: the log of the mean of their probabilities.

    `log p(y) = log((1/K) sum_k p_k(y))` (a mixture, as fairseq's and Sockeye's default
    ensembles), rather than the mean of the log-probs (a product of experts): the result is
    a normalized distribution, so ensemble scores stay log-probabilities on the scale of a
    single model's (n-best scores and the length penalty keep their meaning), and one member
    that is sure a token is wrong cannot veto it when the others like it.

    Args:
        step_fns: the members' step functions, each returning log-probs over the same
            vocabulary.

    Returns:
        `step_fn(token_ids, states)`, where `states` is a tuple of the members' states, in
        order (each member keeps its own encoder outputs and decoder state).
    """
    step_fns = tuple(step_fns)
    if not step_fns:
        raise ValueError("an ensemble needs at least one step function")

    def step_fn(token_ids: Tensor, states: tuple) -> tuple[Tensor, tuple]:
        outputs = [step(token_ids, state) for step, state in zip(step_fns, states, strict=True)]
        if len(outputs) == 1:  # a single model: nothing to average, no rounding added
            return outputs[0][0], (outputs[0][1],)
        log_probs = ops.stack([ops.cast(lp, "float32") for lp, _ in outputs])
        mean = ops.logsumexp(log_probs, axis=0) - math.log(len(outputs))
        # Rounding can lift a near-certain token's log-prob a hair above 0; search needs <= 0.
        return ops.minimum(mean, 0.0), tuple(state for _, state in outputs)

    return step_fn


def _batch_size(state: State) -> Any:
    leaves = keras.tree.flatten(state)
    if not leaves:
        raise ValueError("state must hold at least one tensor: the batch size is its leading dim")
    return ops.shape(leaves[0])[0]


def _resolve_limits(max_len: int | Tensor, max_steps: int | None, batch: Any) -> tuple[Any, int]:
    """Per-sentence limits (batch,) int32 and the static number of steps T."""
    if max_steps is None:
        if isinstance(max_len, numbers.Integral):
            max_steps = int(max_len)
        else:
            try:
                max_steps = int(ops.convert_to_numpy(ops.max(max_len)))
            except Exception as exc:  # a traced tensor has no value to read
                raise ValueError(
                    "max_len is a traced tensor (inside tf.function / jax.jit): pass "
                    "max_steps, a static int upper bound of max_len"
                ) from exc
    max_steps = max(int(max_steps), 0)
    limits = ops.broadcast_to(ops.cast(max_len, "int32"), (batch,))
    return ops.minimum(limits, max_steps), max_steps


def _banned_ids(bos_id: int, eos_id: int) -> tuple[int, ...]:
    """Ids search never emits: PAD and BOS, but never EOS (see the module doc)."""
    return tuple(sorted({PAD_ID, bos_id} - {eos_id}))


def _next_log_probs(
    step_fn: StepFn, tokens: Tensor, state: State, banned: tuple[int, ...], eos_id: int, t: Tensor
) -> tuple[Tensor, State]:
    """`step_fn`'s float32 log-probs (n, vocab) at step `t` with the `banned` ids, and EOS
    at the first step, set to -inf (see the module doc); and the new state."""
    log_probs, state = step_fn(tokens, state)
    log_probs = ops.cast(log_probs, "float32")
    vocab_ids = ops.arange(ops.shape(log_probs)[-1], dtype="int32")
    is_banned = ops.logical_and(ops.equal(vocab_ids, eos_id), ops.equal(t, 0))
    for token in banned:
        is_banned = ops.logical_or(is_banned, ops.equal(vocab_ids, token))
    return ops.where(is_banned[None, :], NEG_INF, log_probs), state


def _write_column(buffer: Tensor, column_mask: Tensor, values: Tensor) -> Tensor:
    """Writes `values` (...,) into `buffer` (..., T) at the column where the mask is true."""
    return ops.where(column_mask, ops.expand_dims(values, -1), buffer)


def greedy_search(
    step_fn: StepFn,
    state: State,
    max_len: int | Tensor,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    max_steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Greedy decoding: the most likely token (never PAD or BOS, nor EOS first) until EOS or
    `max_len`.

    Args:
        step_fn: `(token_ids (batch,), state) -> (log_probs (batch, vocab), state)`.
        state: nested structure of tensors with leading dim batch (the decoder's
            initial state, encoder outputs, masks, ...).
        max_len: int or (batch,) int tensor: most steps, an EOS step included (see
            the module doc).
        bos_id: token fed at the first step.
        eos_id: token that ends a sentence.
        max_steps: static output width T; defaults to max(max_len) (see module doc).

    Returns:
        ids: (batch, T) int32 without BOS and EOS, right-padded with PAD.
        scores: (batch,) float32 sum of the chosen tokens' log-probs, including the EOS
            step when EOS was emitted (0 for an empty limit).
    """
    ids, scores, _ = _greedy(step_fn, state, max_len, bos_id, eos_id, max_steps)
    return ids, scores


def _greedy(
    step_fn: StepFn,
    state: State,
    max_len: int | Tensor,
    bos_id: int,
    eos_id: int,
    max_steps: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`greedy_search` that also returns lengths (batch,) int32, counting EOS."""
    batch = _batch_size(state)
    limits, steps = _resolve_limits(max_len, max_steps, batch)
    columns = ops.arange(steps, dtype="int32")
    banned = _banned_ids(bos_id, eos_id)

    def cond(t, tokens, state, ids, scores, lengths, finished):
        return ops.logical_and(t < steps, ops.logical_not(ops.all(finished)))

    def body(t, tokens, state, ids, scores, lengths, finished):
        log_probs, state = _next_log_probs(step_fn, tokens, state, banned, eos_id, t)
        best = ops.cast(ops.argmax(log_probs, axis=-1), "int32")
        best_logp = ops.take_along_axis(log_probs, best[:, None], axis=-1)[:, 0]
        active = ops.logical_not(finished)
        # Finished rows feed PAD and add nothing, so their output no longer changes.
        tokens = ops.where(active, best, PAD_ID)
        scores = scores + ops.where(active, best_logp, 0.0)
        lengths = lengths + ops.cast(active, "int32")
        is_eos = ops.logical_and(active, ops.equal(best, eos_id))
        ids = _write_column(ids, ops.equal(columns, t), ops.where(is_eos, PAD_ID, tokens))
        finished = ops.logical_or(ops.logical_or(finished, is_eos), t + 1 >= limits)
        return t + 1, tokens, state, ids, scores, lengths, finished

    loop_vars = (
        ops.convert_to_tensor(0, dtype="int32"),
        ops.full((batch,), bos_id, dtype="int32"),
        state,
        ops.full((batch, steps), PAD_ID, dtype="int32"),
        ops.zeros((batch,), dtype="float32"),
        ops.zeros((batch,), dtype="int32"),
        limits <= 0,
    )
    _, _, _, ids, scores, lengths, _ = ops.while_loop(cond, body, loop_vars)
    return ids, scores, lengths


@dataclasses.dataclass(frozen=True)
class _Beam:
    """What every beam step needs besides the loop variables."""

    size: int  # beams per sentence (K)
    alpha: float  # length penalty strength
    n_best: int
    eos_id: int
    banned: tuple[int, ...]  # ids never emitted (PAD, BOS)
    limits: Any  # (batch,) int32 per-sentence max_len
    columns: Any  # (T,) int32 column numbers of the id buffers
    row_base: Any  # (batch * K,) int32 first row of each row's sentence


def beam_search(
    step_fn: StepFn,
    state: State,
    max_len: int | Tensor,
    beam_size: int,
    length_penalty: float = 0.6,
    n_best: int = 1,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    max_steps: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Beam search with the GNMT length penalty and an n-best list per sentence.

    Every state leaf is tiled to batch * beam_size rows, beam-major within a sentence
    (row b * beam_size + k is beam k of sentence b), and gathered by parent beam at every
    step (except `SOURCE` entries, constant per sentence), so `step_fn` sees
    batch * beam_size rows.

    Search keeps two sets per sentence (tensor2tensor style): `beam_size` *alive*
    hypotheses, which never contain EOS, and `beam_size` *finished* ones. Each step
    takes the 2 * beam_size best extensions of the alive beams (enough for beam_size of
    them not to be EOS); those ending in EOS, or reaching the sentence's `max_len`, go
    into the finished set, the best others become the new alive beams. Finished
    hypotheses are never extended again (their ids are PAD after the end and their
    score is fixed). A finished hypothesis does not end the search by itself: a sentence
    stops when the best score an alive beam could still reach (its log-prob sum divided
    by the largest length penalty it could get before `max_len`, valid because adding
    log-probs <= 0 only lowers the sum) cannot beat the `n_best`-th finished score, or
    when it reaches `max_len`.

    Scores are normalized: log-prob sum / ((5 + len) / 6) ** length_penalty, where len
    counts the EOS token; a hypothesis cut at max_len has len = max_len and no EOS step
    in its sum (the length-limit rule in the module doc).

    `beam_size=1` runs `greedy_search` (a single beam cannot keep looking after its only
    hypothesis emitted EOS, so it is greedy by definition): ids are exactly greedy's and
    the score is greedy's sum divided by the length penalty.

    Args:
        step_fn: `(token_ids (n,), state) -> (log_probs (n, vocab), state)`, n = batch *
            beam_size.
        state: nested structure of tensors with leading dim batch.
        max_len: int or (batch,) int tensor: most steps, an EOS step included (see
            the module doc).
        beam_size: beams per sentence, >= 1.
        length_penalty: GNMT alpha; 0 ranks by plain log-prob sums.
        n_best: hypotheses returned per sentence, 1 <= n_best <= beam_size.
        bos_id: token fed at the first step.
        eos_id: token that ends a hypothesis.
        max_steps: static output width T; defaults to max(max_len) (see module doc).

    Returns:
        ids: (batch, n_best, T) int32 without BOS and EOS, right-padded with PAD,
            best first.
        scores: (batch, n_best) float32 normalized scores, best first. An entry for
            which no hypothesis exists (tiny vocabulary or max_len 0 beyond the first)
            has score -inf and only PAD ids; max_len 0 gives one empty hypothesis with
            score 0.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    if beam_size == 1:
        ids, scores, lengths = _greedy(step_fn, state, max_len, bos_id, eos_id, max_steps)
        scores = scores / gnmt_length_penalty(lengths, length_penalty)
        return ids[:, None, :], scores[:, None]
    return _beam_search(
        step_fn, state, max_len, beam_size, length_penalty, n_best, bos_id, eos_id, max_steps
    )


def _beam_search(
    step_fn: StepFn,
    state: State,
    max_len: int | Tensor,
    beam_size: int,
    alpha: float,
    n_best: int,
    bos_id: int,
    eos_id: int,
    max_steps: int | None,
) -> tuple[Tensor, Tensor]:
    """The beam search loop for any beam_size (also 1; `beam_search` sends that to greedy)."""
    batch = _batch_size(state)
    limits, steps = _resolve_limits(max_len, max_steps, batch)
    rows = batch * beam_size
    beam = _Beam(
        size=beam_size,
        alpha=alpha,
        n_best=n_best,
        eos_id=eos_id,
        banned=_banned_ids(bos_id, eos_id),
        limits=limits,
        columns=ops.arange(steps, dtype="int32"),
        row_base=(ops.arange(rows, dtype="int32") // beam_size) * beam_size,
    )

    def cond(t, tokens, state, alive_seq, alive_logp, fin_seq, fin_scores, done):
        return ops.logical_and(t < steps, ops.logical_not(ops.all(done)))

    def body(*loop_vars):
        return _beam_step(beam, step_fn, *loop_vars)

    loop_vars = (
        ops.convert_to_tensor(0, dtype="int32"),
        ops.full((rows,), bos_id, dtype="int32"),
        keras.tree.map_structure(lambda x: ops.repeat(x, beam_size, axis=0), state),
        *_initial_beams(beam, batch, steps),
    )
    outputs = ops.while_loop(cond, body, loop_vars)
    fin_seq, fin_scores = outputs[5][:, :n_best], outputs[6][:, :n_best]
    # Slots no hypothesis ever filled hold whatever -inf candidate passed by; blank them.
    missing = ops.expand_dims(ops.equal(fin_scores, NEG_INF), -1)
    return ops.where(missing, PAD_ID, fin_seq), fin_scores


def _initial_beams(beam: _Beam, batch: Any, steps: int) -> tuple[Any, ...]:
    """alive_seq, alive_logp, fin_seq, fin_scores, done before the first step."""
    empty = beam.limits <= 0
    first = ops.equal(ops.arange(beam.size, dtype="int32"), 0)[None, :]
    # Only beam 0 starts alive, so the first step does not expand K copies of BOS.
    alive_logp = ops.where(ops.logical_and(first, ops.logical_not(empty[:, None])), 0.0, NEG_INF)
    # A sentence allowed no tokens has one finished hypothesis: the empty one.
    fin_scores = ops.where(ops.logical_and(first, empty[:, None]), 0.0, NEG_INF)
    seq = ops.full((batch, beam.size, steps), PAD_ID, dtype="int32")
    return seq, alive_logp, seq, fin_scores, empty


def _beam_step(
    beam: _Beam,
    step_fn: StepFn,
    t: Tensor,
    tokens: Tensor,
    state: State,
    alive_seq: Tensor,
    alive_logp: Tensor,
    fin_seq: Tensor,
    fin_scores: Tensor,
    done: Tensor,
) -> tuple[Any, ...]:
    """One step of beam search: the loop body (shapes in `_beam_search`'s loop_vars)."""
    log_probs, state = _next_log_probs(step_fn, tokens, state, beam.banned, beam.eos_id, t)
    logp, parent, token = _top_extensions(beam, alive_logp, log_probs)
    seq = _extend(beam, alive_seq, parent, token, t)
    finishing = ops.logical_or(ops.equal(token, beam.eos_id), (t + 1 >= beam.limits)[:, None])
    normalized = logp / gnmt_length_penalty(t + 1, beam.alpha)
    fin_seq, fin_scores = _update_finished(
        beam, fin_seq, fin_scores, seq, ops.where(finishing, normalized, NEG_INF)
    )
    alive_seq, alive_logp, parent, token = _update_alive(
        beam, seq, ops.where(finishing, NEG_INF, logp), parent, token
    )
    state = _gather_beams(state, beam.row_base + ops.reshape(parent, (-1,)))
    done = ops.logical_or(done, _cannot_improve(beam, t, alive_logp, fin_scores))
    # A done sentence's alive beams die, so its finished set stays as it is.
    alive_logp = ops.where(done[:, None], NEG_INF, alive_logp)
    tokens = ops.reshape(token, (-1,))
    return t + 1, tokens, state, alive_seq, alive_logp, fin_seq, fin_scores, done


def _gather_beams(state: State, rows: Tensor) -> State:
    """Every leaf of `state` reordered to `rows` (each row's parent), except `SOURCE` ones."""
    leaves = [
        leaf if SOURCE in path else ops.take(leaf, rows, axis=0)
        for path, leaf in keras.tree.flatten_with_path(state)
    ]
    return keras.tree.pack_sequence_as(state, leaves)


def _top_extensions(beam: _Beam, alive_logp: Tensor, log_probs: Tensor) -> tuple[Any, ...]:
    """The 2K best one-token extensions of the alive beams.

    Args:
        beam: search constants.
        alive_logp: (batch, K) log-prob sums of the alive beams (-inf for dead ones).
        log_probs: (batch * K, vocab) float32 next-token log-probs.

    Returns:
        logp (batch, 2K) float32 sums, parent (batch, 2K) and token (batch, 2K) int32.
    """
    vocab = ops.shape(log_probs)[-1]
    log_probs = ops.reshape(log_probs, (-1, beam.size, vocab))
    total = ops.reshape(alive_logp[:, :, None] + log_probs, (-1, beam.size * vocab))
    # 2K: at most K of them end in EOS (one per parent), so K alive ones always remain.
    logp, index = ops.top_k(total, 2 * beam.size)
    index = ops.cast(index, "int32")
    return logp, index // vocab, index % vocab


def _extend(beam: _Beam, alive_seq: Tensor, parent: Tensor, token: Tensor, t: Tensor) -> Tensor:
    """Parent sequences (batch, K, T) extended by `token` (batch, 2K) at column t.

    EOS is written as PAD: returned ids never contain EOS.
    """
    seq = ops.take_along_axis(alive_seq, parent[:, :, None], axis=1)
    written = ops.where(ops.equal(token, beam.eos_id), PAD_ID, token)
    return _write_column(seq, ops.equal(beam.columns, t), written)


def _update_finished(
    beam: _Beam, fin_seq: Tensor, fin_scores: Tensor, seq: Tensor, scores: Tensor
) -> tuple[Tensor, Tensor]:
    """Best K of the finished set (batch, K[, T]) and new candidates (batch, 2K[, T]).

    Candidates that do not finish this step come with score -inf. Old entries come
    first, so on ties (e.g. two -inf) the old entry stays.
    """
    pool_scores = ops.concatenate([fin_scores, scores], axis=1)
    pool_seq = ops.concatenate([fin_seq, seq], axis=1)
    fin_scores, index = ops.top_k(pool_scores, beam.size)
    return ops.take_along_axis(pool_seq, index[:, :, None], axis=1), fin_scores


def _update_alive(
    beam: _Beam, seq: Tensor, logp: Tensor, parent: Tensor, token: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The K best of the 2K candidates that did not finish (those have logp -inf).

    Returns:
        alive_seq (batch, K, T), alive_logp (batch, K), parent (batch, K), token (batch, K).
    """
    alive_logp, index = ops.top_k(logp, beam.size)
    alive_seq = ops.take_along_axis(seq, index[:, :, None], axis=1)
    parent = ops.take_along_axis(parent, index, axis=1)
    token = ops.take_along_axis(token, index, axis=1)
    return alive_seq, alive_logp, parent, token


def _cannot_improve(beam: _Beam, t: Tensor, alive_logp: Tensor, fin_scores: Tensor) -> Tensor:
    """(batch,) bool: no alive beam can beat the n_best-th finished hypothesis.

    An alive beam now holds t + 1 tokens and will finish with a length between t + 2
    and the sentence's limit. Its log-prob sum can only fall (log-probs <= 0), and for a
    fixed sum the normalized score is monotonic in the penalty, so the best it can reach
    is at one of the two lengths. Dead beams (-inf) give -inf.
    """
    best = ops.max(alive_logp, axis=1)
    shortest = t + 2
    longest = ops.maximum(beam.limits, shortest)
    bound = ops.maximum(
        best / gnmt_length_penalty(shortest, beam.alpha),
        best / gnmt_length_penalty(longest, beam.alpha),
    )
    return bound <= fin_scores[:, beam.n_best - 1]
