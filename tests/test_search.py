"""Greedy and beam search against scripted step functions with known log-probabilities."""

import ast
import itertools
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from nmt import search
from nmt.config import BOS_ID, EOS_ID, PAD_ID
from nmt.search import beam_search, gnmt_length_penalty, greedy_search

A, B, C, D = 4, 5, 6, 7
VOCAB = 8
FILL = -100.0  # score of every token a scripted row does not name


def chain(spec: dict[int, dict[int, float]]) -> np.ndarray:
    """A Markov chain as a (VOCAB, VOCAB) log-prob table indexed by the previous token.

    Rows named in `spec` give the listed probabilities and FILL elsewhere; other rows
    (tokens the script never expects to extend) put all their mass on EOS.
    """
    table = np.full((VOCAB, VOCAB), FILL, np.float32)
    table[:, EOS_ID] = 0.0
    for prev, probs in spec.items():
        table[prev] = FILL
        for token, p in probs.items():
            table[prev, token] = np.log(p)
    return table


def markov_step(tables: np.ndarray, steps: int = 1):
    """Step function over per-sentence, per-step Markov tables.

    Args:
        tables: (sentences, steps, VOCAB, VOCAB) log-probs, or (VOCAB, VOCAB) for one
            chain shared by all sentences and steps.
        steps: unused when `tables` is 4-D (taken from its shape).

    The state is {"sent": (n,) sentence index, "t": (n,) step counter}; the counter makes
    the state change every step, so gathering it by parent beam matters.
    """
    tables = np.asarray(tables, np.float32)
    if tables.ndim == 2:
        tables = tables[None, None]
    sentences, steps, vocab, _ = tables.shape
    flat = ops.convert_to_tensor(tables.reshape(-1, vocab))

    def step_fn(token_ids, state):
        t = ops.minimum(state["t"], steps - 1)
        row = (state["sent"] * steps + t) * vocab + token_ids
        return ops.take(flat, row, axis=0), {"sent": state["sent"], "t": state["t"] + 1}

    return step_fn


def markov_state(sentences):
    sent = np.asarray(sentences, np.int32)
    return {"sent": ops.convert_to_tensor(sent), "t": ops.zeros(sent.shape, "int32")}


def np_(x) -> np.ndarray:
    return ops.convert_to_numpy(x)


def padded(rows: list[list[int]], width: int) -> np.ndarray:
    return np.array([r + [PAD_ID] * (width - len(r)) for r in rows], np.int32)


def lp(length: int, alpha: float) -> float:
    return ((5 + length) / 6) ** alpha


# Greedy takes A (0.5) then ends (0.3): 0.15. Beam finds B EOS: 0.4 * 0.9 = 0.36.
GREEDY_TRAP = chain(
    {
        BOS_ID: {A: 0.5, B: 0.4, EOS_ID: 0.1},
        A: {EOS_ID: 0.3, C: 0.26, D: 0.24},
        B: {EOS_ID: 0.9, C: 0.1},
    }
)
# After step 1 two hypotheses have finished (B: 0.28, A: 0.27), filling a finished set of
# size 2, while the alive A C (0.33) still beats both and wins at step 2.
LATE_WINNER = chain(
    {
        BOS_ID: {A: 0.6, B: 0.4},
        A: {EOS_ID: 0.45, C: 0.55},
        B: {EOS_ID: 0.7, D: 0.3},
        C: {EOS_ID: 1.0},
        D: {EOS_ID: 1.0},
    }
)
# Short [A] has 0.4, long [B C D] has 0.35: the length penalty decides.
SHORT_OR_LONG = chain(
    {BOS_ID: {A: 0.4, B: 0.5}, A: {EOS_ID: 1.0}, B: {C: 1.0}, C: {D: 1.0}, D: {EOS_ID: 0.7}}
)
# Never emits EOS (only FILL): every hypothesis runs into max_len.
NO_EOS = chain({BOS_ID: {A: 0.9, B: 0.1}, A: {B: 0.8, A: 0.2}, B: {A: 0.7, B: 0.3}})


def test_greedy_exact_ids_and_score():
    ids, scores = greedy_search(markov_step(GREEDY_TRAP), markov_state([0]), max_len=5)
    np.testing.assert_array_equal(np_(ids), padded([[A]], 5))
    np.testing.assert_allclose(np_(scores), [np.log(0.5 * 0.3)], rtol=1e-6)


def test_beam_finds_higher_probability_sequence_than_greedy():
    greedy_ids, _ = greedy_search(markov_step(GREEDY_TRAP), markov_state([0]), max_len=5)
    np.testing.assert_array_equal(np_(greedy_ids), padded([[A]], 5))
    ids, scores = beam_search(
        markov_step(GREEDY_TRAP), markov_state([0]), 5, beam_size=2, length_penalty=0.0
    )
    assert ids.shape == (1, 1, 5)
    np.testing.assert_array_equal(np_(ids)[:, 0], padded([[B]], 5))
    np.testing.assert_allclose(np_(scores), [[np.log(0.4 * 0.9)]], rtol=1e-6)


@pytest.mark.parametrize("n_best", [1, 2])
def test_finished_hypotheses_do_not_end_search_while_alive_can_win(n_best):
    ids, scores = beam_search(
        markov_step(LATE_WINNER), markov_state([0]), 6, 2, length_penalty=0.0, n_best=n_best
    )
    expected_ids = padded([[A, C], [B]], 6)[:n_best]
    expected_scores = np.log([0.6 * 0.55, 0.4 * 0.7])[:n_best]
    np.testing.assert_array_equal(np_(ids)[0], expected_ids)
    np.testing.assert_allclose(np_(scores)[0], expected_scores, rtol=1e-6)


@pytest.mark.parametrize(("alpha", "long_wins"), [(0.0, False), (1.0, True)])
def test_length_penalty_changes_the_winner(alpha, long_wins):
    ids, scores = beam_search(
        markov_step(SHORT_OR_LONG), markov_state([0]), 6, 2, length_penalty=alpha, n_best=2
    )
    # Lengths count EOS: [A] EOS is 2 tokens, [B C D] EOS is 4.
    short = ([A], np.log(0.4) / lp(2, alpha))
    long = ([B, C, D], np.log(0.35) / lp(4, alpha))
    ranked = [long, short] if long_wins else [short, long]
    assert (long[1] > short[1]) == long_wins  # the script does what the test claims
    np.testing.assert_array_equal(np_(ids)[0], padded([h for h, _ in ranked], 6))
    np.testing.assert_allclose(np_(scores)[0], [s for _, s in ranked], rtol=1e-6)


def test_alive_beam_that_wins_only_through_the_length_penalty_is_kept():
    # alpha=1: [A] EOS scores log(0.37) / (7/6) = -0.852. After step 1 the alive [B C]
    # (log 0.3) divided by its current penalty 8/6 gives -0.903, worse, yet it ends as
    # [B C D] EOS with log(0.3) / (9/6) = -0.803: the bound must use the longest length.
    table = chain({BOS_ID: {A: 0.37, B: 0.3}, A: {EOS_ID: 1.0}, B: {C: 1.0}, C: {D: 1.0}})
    ids, scores = beam_search(markov_step(table), markov_state([0]), 6, 2, length_penalty=1.0)
    np.testing.assert_array_equal(np_(ids)[0], padded([[B, C, D]], 6))
    np.testing.assert_allclose(np_(scores)[0], [np.log(0.3) / lp(4, 1.0)], rtol=1e-6)


def test_n_best_sorted_best_first_with_scores():
    ids, scores = beam_search(
        markov_step(GREEDY_TRAP), markov_state([0]), 4, 4, length_penalty=0.6, n_best=4
    )
    hyps = {  # ids -> probability (length counts EOS)
        (B,): 0.4 * 0.9,
        (A,): 0.5 * 0.3,
        (A, C): 0.5 * 0.26,
        (A, D): 0.5 * 0.24,
    }
    ranked = sorted(hyps, key=lambda h: -np.log(hyps[h]) / lp(len(h) + 1, 0.6))[:4]
    np.testing.assert_array_equal(np_(ids)[0], padded([list(h) for h in ranked], 4))
    expected = [np.log(hyps[h]) / lp(len(h) + 1, 0.6) for h in ranked]
    np.testing.assert_allclose(np_(scores)[0], expected, rtol=1e-6)
    assert np.all(np.diff(np_(scores)[0]) < 0)


def test_per_sentence_max_len_truncates_without_eos():
    step, state = markov_step(NO_EOS), markov_state([0, 0, 0])
    max_len = ops.convert_to_tensor([2, 4, 0], "int32")
    expected = padded([[A, B], [A, B, A, B], []], 5)
    logp = np.log([0.9 * 0.8, 0.9 * 0.8 * 0.7 * 0.8, 1.0])

    ids, scores = greedy_search(step, state, max_len, max_steps=5)
    np.testing.assert_array_equal(np_(ids), expected)
    np.testing.assert_allclose(np_(scores), logp, rtol=1e-6)

    ids, scores = beam_search(step, state, max_len, 3, length_penalty=0.6, max_steps=5)
    np.testing.assert_array_equal(np_(ids)[:, 0], expected)
    normalized = logp / np.array([lp(2, 0.6), lp(4, 0.6), 1.0])
    np.testing.assert_allclose(np_(scores)[:, 0], normalized, rtol=1e-6)


def test_max_len_tensor_defaults_width_to_its_maximum():
    ids, _ = greedy_search(
        markov_step(NO_EOS), markov_state([0, 0]), ops.convert_to_tensor([1, 3], "int32")
    )
    np.testing.assert_array_equal(np_(ids), padded([[A], [A, B, A]], 3))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="counts eager loop steps")
def test_search_stops_early_when_all_finished():
    calls = []

    def step_fn(token_ids, state):
        calls.append(1)  # runs eagerly here: counts loop iterations
        return markov_step(GREEDY_TRAP)(token_ids, state)

    greedy_search(step_fn, markov_state([0]), max_len=50)
    assert len(calls) == 2
    calls.clear()
    beam_search(step_fn, markov_state([0]), 50, 2, length_penalty=0.0)
    assert len(calls) == 2


def random_tables(seed: int, sentences: int, steps: int) -> np.ndarray:
    """Random per-sentence, per-step Markov chains; PAD/UNK/BOS are never likely."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(sentences, steps, VOCAB, VOCAB))
    logits[..., [PAD_ID, 1, BOS_ID]] = -30.0
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


# Reference implementations. The step function hashes the whole prefix into its state
# (so every token's log-probs depend on all tokens before it, and gathering the state by
# parent beam matters) and looks the hash up in a random table where PAD and BOS are
# often the most likely tokens (so the references must skip them).
HASH_CODES = 4099  # a prime: the hash of a prefix is (code * 31 + token + 1) % HASH_CODES
ALLOWED = [tok for tok in range(VOCAB) if tok not in (PAD_ID, BOS_ID)]


def hash_tables(seed: int) -> np.ndarray:
    """(HASH_CODES, VOCAB) float32 log-probs, PAD and BOS boosted, EOS lowered."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(HASH_CODES, VOCAB))
    logits[:, [PAD_ID, BOS_ID]] += 2.0
    logits[:, EOS_ID] -= 1.0  # so that some hypotheses run into their length limit
    logits -= np.log(np.exp(logits).sum(-1, keepdims=True))
    return logits.astype(np.float32)


def next_code(code, token):
    return (code * 31 + token + 1) % HASH_CODES


def hash_step(tables: np.ndarray):
    flat = ops.convert_to_tensor(tables)

    def step_fn(token_ids, state):
        code = next_code(state["code"], token_ids)
        return ops.take(flat, code, axis=0), {"code": code}

    return step_fn


def hash_state(sentences: int):
    """Sentence i starts from code i, so sentences differ."""
    return {"code": ops.arange(sentences, dtype="int32")}


def allowed(t: int) -> list[int]:
    """The tokens search may emit at step t: never PAD or BOS, and no EOS first."""
    return ALLOWED if t else [tok for tok in ALLOWED if tok != EOS_ID]


def reference_greedy(tables: np.ndarray, sentence: int, limit: int):
    """Greedy search in plain Python: (ids, log-prob sum, length counting EOS)."""
    code, ids, logp = next_code(sentence, BOS_ID), [], np.float32(0.0)
    for t in range(limit):
        token = max(allowed(t), key=lambda tok: tables[code, tok])
        logp += tables[code, token]
        if token == EOS_ID:
            return ids, logp, len(ids) + 1
        ids.append(token)
        code = next_code(code, token)
    return ids, logp, len(ids)


def reference_beam(tables, sentence, limit, beam_size, alpha, n_best):
    """Beam search as `beam_search` documents it, with lists and without early stop.

    Every step takes the 2K best one-token extensions (`allowed` tokens) of the alive
    hypotheses; those ending in EOS or reaching `limit` steps are finished, with score
    sum / lp(steps taken); the K best others stay alive. Sums are float32, added in the
    same order as in `beam_search`, so that rankings agree exactly.

    Returns:
        n_best (ids, score) pairs, best first, padded with ([], -inf).
    """
    finished = [([], 0.0)] if limit == 0 else []
    alive = [([], np.float32(0.0), next_code(sentence, BOS_ID))]
    for t in range(limit):
        extensions = [
            (ids, logp + tables[code, tok], code, tok)
            for ids, logp, code in alive
            for tok in allowed(t)
        ]
        extensions = sorted(extensions, key=lambda e: -e[1])[: 2 * beam_size]
        alive = []
        for ids, logp, code, tok in extensions:
            if tok == EOS_ID or t + 1 == limit:
                finished.append((ids + [tok] * (tok != EOS_ID), logp / lp(t + 1, alpha)))
            elif len(alive) < beam_size:
                alive.append((ids + [tok], logp, next_code(code, tok)))
    finished = sorted(finished, key=lambda h: -h[1])[:n_best]
    return finished + [([], -np.inf)] * (n_best - len(finished))


def test_hash_tables_make_pad_and_bos_the_most_likely_tokens_often():
    best = hash_tables(0).argmax(-1)
    assert np.isin(best, [PAD_ID, BOS_ID]).mean() > 0.3


@pytest.mark.parametrize("seed", range(12))
def test_greedy_and_beam_size_one_match_reference_greedy(seed):
    tables, limits = hash_tables(seed), [0, 1, 3, 7, 7, 7]
    step, state, max_len = hash_step(tables), hash_state(6), ops.convert_to_tensor(limits)
    refs = [reference_greedy(tables, i, limit) for i, limit in enumerate(limits)]
    ref_ids = padded([ids for ids, _, _ in refs], 7)
    ref_logp = np.array([logp for _, logp, _ in refs])
    ref_len = np.array([length for _, _, length in refs])

    ids, scores = greedy_search(step, state, max_len, max_steps=7)
    np.testing.assert_array_equal(np_(ids), ref_ids)
    np.testing.assert_allclose(np_(scores), ref_logp, rtol=1e-5)
    # beam_size=1 is greedy; what this checks is its scores' length normalization.
    ids, scores = beam_search(step, state, max_len, 1, length_penalty=0.6, max_steps=7)
    np.testing.assert_array_equal(np_(ids)[:, 0], ref_ids)
    np.testing.assert_allclose(np_(scores)[:, 0], ref_logp / lp(ref_len, 0.6), rtol=1e-5)


def run_beam_loop(step, state, max_len, beam_size, alpha, n_best, max_steps):
    """The beam loop, also for beam_size=1, which `beam_search` sends to greedy."""
    if beam_size > 1:
        return beam_search(step, state, max_len, beam_size, alpha, n_best, max_steps=max_steps)
    return search._beam_search(step, state, max_len, 1, alpha, n_best, BOS_ID, EOS_ID, max_steps)


@pytest.mark.parametrize("seed", range(24))
def test_beam_search_matches_reference_implementation(seed):
    rng = np.random.default_rng(seed)
    beam_size = int(rng.integers(1, 6))
    n_best = int(rng.integers(1, beam_size + 1))
    alpha = float(rng.choice([0.0, 0.6, 1.5]))
    limits = [0, 1, 3, 7, int(rng.integers(2, 8))]
    tables = hash_tables(seed)

    ids, scores = run_beam_loop(
        hash_step(tables),
        hash_state(5),
        ops.convert_to_tensor(limits),
        beam_size,
        alpha,
        n_best,
        max_steps=7,
    )
    for i, limit in enumerate(limits):
        ref = reference_beam(tables, i, limit, beam_size, alpha, n_best)
        np.testing.assert_array_equal(np_(ids)[i], padded([h for h, _ in ref], 7), str(i))
        np.testing.assert_allclose(np_(scores)[i], [s for _, s in ref], rtol=1e-5)


@pytest.mark.parametrize("beam_size", [2, 4])
def test_source_entries_decode_as_if_reordered_with_the_rest(beam_size):
    """Entries under search.SOURCE are per-sentence constants that beam search does not
    reorder: the same constant in the reordered part of the state gives the same search."""
    flat = ops.convert_to_tensor(hash_tables(3))

    def step_fn(token_ids, state):
        shift = state[search.SOURCE]["shift"] if search.SOURCE in state else state["shift"]
        code = next_code(state["code"], token_ids)
        return ops.take(flat, (code + shift) % HASH_CODES, axis=0), dict(state, code=code)

    code, shift = ops.zeros((4,), dtype="int32"), ops.convert_to_tensor([0, 7, 11, 29])
    limits = ops.convert_to_tensor([7, 5, 6, 7])
    as_source = {"code": code, search.SOURCE: {"shift": shift}}
    reordered = {"code": code, "shift": shift}
    a = beam_search(step_fn, as_source, limits, beam_size, 0.6, beam_size, max_steps=7)
    b = beam_search(step_fn, reordered, limits, beam_size, 0.6, beam_size, max_steps=7)
    np.testing.assert_array_equal(np_(a[0]), np_(b[0]))
    np.testing.assert_array_equal(np_(a[1]), np_(b[1]))
    assert len(set(np_(a[1])[:, 0].tolist())) == 4  # the shift matters


def tiny_rnn(seed: int, units: int = 8):
    """A random tanh RNN step function whose log-probs depend on the whole prefix."""
    rng = np.random.default_rng(seed)
    embed = ops.convert_to_tensor(rng.normal(size=(VOCAB, units)).astype(np.float32))
    recur = ops.convert_to_tensor(rng.normal(scale=0.6, size=(units, units)).astype(np.float32))
    out = rng.normal(scale=1.5, size=(units, VOCAB)).astype(np.float32)

    def step_fn(token_ids, state):
        h = ops.tanh(ops.take(embed, token_ids, axis=0) + ops.matmul(state["h"], recur))
        return ops.log_softmax(ops.matmul(h, out), axis=-1), {"h": h}

    return step_fn


def teacher_forced_logp(step_fn, state, targets: list[list[int]]) -> np.ndarray:
    """Sum of log p(target token | BOS + earlier targets) under `step_fn`, per row.

    Args:
        step_fn: the step function; nothing is masked here.
        state: initial state with one row per target.
        targets: token lists, EOS included where the hypothesis ended with one.
    """
    width = max(map(len, targets))
    grid = np.array([t + [PAD_ID] * (width - len(t)) for t in targets], np.int32)
    tokens, total = ops.full((len(targets),), BOS_ID, "int32"), np.zeros(len(targets))
    for t in range(width):
        log_probs, state = step_fn(tokens, state)
        step_logp = np_(log_probs)[np.arange(len(targets)), grid[:, t]]
        total += np.where([t < len(row) for row in targets], step_logp, 0.0)
        tokens = ops.convert_to_tensor(grid[:, t])
    return total


def returned_hypotheses(ids: np.ndarray, limits: list[int]) -> list[list[int]]:
    """Each returned hypothesis as its scored steps (batch-major, then n-best order).

    Under the length-limit rule, a hypothesis shorter than its limit ended with EOS;
    one of exactly `limit` tokens was cut there and has no EOS step.
    """
    hyps = []
    for row, limit in zip(ids.reshape(len(limits), -1, ids.shape[-1]), limits, strict=True):
        for hyp in row:
            tokens = [int(tok) for tok in hyp if tok != PAD_ID]
            hyps.append(tokens + [EOS_ID] * (len(tokens) < limit))
    return hyps


def rnn_case(seed: int):
    """`tiny_rnn`'s step function and an initial state of 4 sentences."""
    h0 = np.random.default_rng(seed).normal(size=(4, 8)).astype(np.float32)
    return tiny_rnn(seed), {"h": h0}


EOS_BOOST = 0.05  # near-uniform logits: more would end every hypothesis at once


def model_case(cell: str, gru_variant: str, attention: str):
    """A tiny untrained `Seq2Seq`'s step function and decoder state for 4 sentences."""
    from .test_model import make, tiny

    model = make(tiny(cell=cell, gru_variant=gru_variant, attention=attention))
    src = np.array([[5, 6, 7, 8], [4, 10, 0, 0], [12, 0, 0, 0], [7, 7, 9, 0]], np.int32)

    def step(token_ids, state):
        logits, state = model.decode_step(token_ids, state)
        # Untrained, it seldom ends: a raised EOS logit makes some hypotheses end in EOS.
        is_eos = ops.equal(ops.arange(ops.shape(logits)[-1]), EOS_ID)
        return ops.log_softmax(ops.where(is_eos, logits + EOS_BOOST, logits), axis=-1), state

    return step, model.initial_state(model.encode(src))


SCORED_STEPS = {
    **{f"rnn{seed}": (rnn_case, seed) for seed in range(3)},
    # Every recurrent cell: its state (a tuple, (h, c) for an LSTM) is tiled and gathered.
    "gru": (model_case, "gru", "reset_after", "none"),
    "gru_reset_before": (model_case, "gru", "reset_before", "additive"),
    "lstm": (model_case, "lstm", "reset_after", "additive"),
}


@pytest.mark.parametrize("case", SCORED_STEPS)
def test_scores_equal_teacher_forced_log_prob_under_the_length_penalty(case):
    make_case, *args = SCORED_STEPS[case]
    (step, state), alpha, limits = make_case(*args), 0.8, [2, 4, 6, 6]
    max_len = ops.convert_to_tensor(limits)

    ids, scores = beam_search(step, state, max_len, 4, alpha, n_best=4)
    hyps = returned_hypotheses(np_(ids), limits)
    ended = [h[-1] == EOS_ID for h in hyps]
    assert any(ended) and not all(ended)  # both EOS-ended and cut hypotheses are checked
    tiled = keras.tree.map_structure(lambda x: ops.repeat(x, 4, axis=0), state)
    logp = teacher_forced_logp(step, tiled, hyps)
    expected = logp / lp(np.array([len(h) for h in hyps]), alpha)
    np.testing.assert_allclose(np_(scores).reshape(-1), expected, rtol=1e-5)

    # Greedy follows the same rule, without the length penalty.
    ids, scores = greedy_search(step, state, max_len)
    hyps = returned_hypotheses(np_(ids), limits)
    expected = teacher_forced_logp(step, state, hyps)
    np.testing.assert_allclose(np_(scores), expected, rtol=1e-5)


# PAD and BOS are the most likely tokens at every step; with them excluded the best path
# is A (0.3), B (0.2), EOS (0.1), and the EOS row never leads anywhere else.
PAD_BOS_FIRST = chain(
    {
        BOS_ID: {PAD_ID: 0.6, A: 0.3, EOS_ID: 0.1},
        A: {BOS_ID: 0.7, B: 0.2, EOS_ID: 0.1},
        B: {PAD_ID: 0.5, BOS_ID: 0.4, EOS_ID: 0.1},
    }
)


def test_pad_and_bos_are_never_emitted():
    step, state = markov_step(PAD_BOS_FIRST), markov_state([0])
    ids, scores = greedy_search(step, state, max_len=4)
    np.testing.assert_array_equal(np_(ids), padded([[A, B]], 4))
    np.testing.assert_allclose(np_(scores), [np.log(0.3 * 0.2 * 0.1)], rtol=1e-6)

    ids, scores = beam_search(step, state, 4, 2, length_penalty=0.0, n_best=2)
    hyps = {(A,): 0.3 * 0.1, (A, B): 0.3 * 0.2 * 0.1}  # all others have FILL
    np.testing.assert_array_equal(np_(ids)[0], padded([list(h) for h in hyps], 4))
    np.testing.assert_allclose(np_(scores)[0], np.log(list(hyps.values())), rtol=1e-6)


def test_eos_is_never_the_first_token():
    # No empty translation, however likely: JoeyNMT's and fairseq's minimum output length.
    table = chain({BOS_ID: {EOS_ID: 0.9, A: 0.1}, A: {EOS_ID: 1.0}})
    step, state = markov_step(table), markov_state([0])
    ids, scores = greedy_search(step, state, max_len=3)
    np.testing.assert_array_equal(np_(ids), padded([[A]], 3))
    np.testing.assert_allclose(np_(scores), [np.log(0.1)], rtol=1e-6)
    ids, scores = beam_search(step, state, 3, 2, length_penalty=0.0, n_best=1)
    np.testing.assert_array_equal(np_(ids)[0], padded([[A]], 3))
    np.testing.assert_allclose(np_(scores)[0], [np.log(0.1)], rtol=1e-6)


def test_bos_that_is_also_eos_still_ends_hypotheses():
    # Models that start from EOS: masking BOS must not forbid ending.
    table = chain({EOS_ID: {PAD_ID: 0.5, A: 0.4, EOS_ID: 0.1}, A: {EOS_ID: 0.9, A: 0.1}})
    step, state = markov_step(table), markov_state([0])
    ids, _ = greedy_search(step, state, 5, bos_id=EOS_ID)
    np.testing.assert_array_equal(np_(ids), padded([[A]], 5))
    ids, _ = beam_search(step, state, 5, 2, bos_id=EOS_ID)
    np.testing.assert_array_equal(np_(ids)[0], padded([[A]], 5))


def test_batch_gives_the_same_results_as_one_sentence_at_a_time():
    tables = random_tables(7, sentences=3, steps=6)
    step, limits = markov_step(tables), [6, 4, 5]
    ids, scores = beam_search(
        step, markov_state(range(3)), ops.convert_to_tensor(limits), 3, n_best=3, max_steps=6
    )
    for i, limit in enumerate(limits):
        one_ids, one_scores = beam_search(step, markov_state([i]), limit, 3, n_best=3, max_steps=6)
        np.testing.assert_array_equal(np_(ids)[i], np_(one_ids)[0])
        np.testing.assert_allclose(np_(scores)[i], np_(one_scores)[0], rtol=1e-6)


# Exhaustive check with scores that depend on the whole prefix, which the step function
# reads from its state: if state rows were not gathered by parent beam, the prefix codes
# would be wrong and so would the results.
REAL = (A, B, C)
SMALL_VOCAB = 7  # PAD UNK BOS EOS A B C
MAX_LEN = 4
WIDE = 3 ** (MAX_LEN - 1)  # beams that hold every prefix the last step extends


def prefix_tables(seed: int, sentences: int) -> np.ndarray:
    """(sentences, SMALL_VOCAB ** (MAX_LEN + 1), SMALL_VOCAB) log-probs per prefix code."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(sentences, SMALL_VOCAB ** (MAX_LEN + 1), SMALL_VOCAB))
    logits[..., [PAD_ID, 1, BOS_ID]] = -np.inf
    logits[..., EOS_ID] -= 1.0  # so that long hypotheses make the n-best lists too
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def prefix_step(tables: np.ndarray):
    """State: {"code": (n,) int32 base-V code of BOS + prefix, "aux": ((n, 2) float,)}."""
    sentences, codes, vocab = tables.shape
    flat = ops.convert_to_tensor(tables.reshape(-1, vocab).astype(np.float32))

    def step_fn(token_ids, state):
        code = ops.minimum(state["code"] * vocab + token_ids, codes - 1)
        sent = ops.cast(state["aux"][0][:, 0], "int32")
        return ops.take(flat, sent * codes + code, axis=0), {"code": code, "aux": state["aux"]}

    return step_fn


def prefix_state(sentences: int):
    aux = np.stack([np.arange(sentences), np.ones(sentences)], axis=1).astype(np.float32)
    return {"code": ops.zeros((sentences,), "int32"), "aux": (ops.convert_to_tensor(aux),)}


def brute_force(table: np.ndarray, alpha: float, n_best: int) -> list[tuple[tuple, float]]:
    """The n_best of all hypotheses of 1 to MAX_LEN tokens (never empty): (ids, normalized
    score), best first."""
    ranked = []
    for length in range(1, MAX_LEN + 1):
        for prefix in itertools.product(REAL, repeat=length):
            code, logp = BOS_ID, 0.0
            for token in prefix:
                logp += table[code, token]
                code = code * SMALL_VOCAB + token
            if length < MAX_LEN:  # ends with EOS, which counts in the length
                ranked.append((prefix, (logp + table[code, EOS_ID]) / lp(length + 1, alpha)))
            else:  # truncated at max_len, no EOS
                ranked.append((prefix, logp / lp(MAX_LEN, alpha)))
    return sorted(ranked, key=lambda h: -h[1])[:n_best]


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_wide_beam_equals_exhaustive_search(alpha):
    tables = prefix_tables(seed=3, sentences=2)
    # WIDE beams hold every prefix of up to MAX_LEN - 1 tokens, so the search is exact.
    ids, scores = beam_search(
        prefix_step(tables), prefix_state(2), MAX_LEN, WIDE, length_penalty=alpha, n_best=10
    )
    for i in range(2):
        expected = brute_force(tables[i], alpha, n_best=10)
        np.testing.assert_array_equal(np_(ids)[i], padded([list(h) for h, _ in expected], MAX_LEN))
        np.testing.assert_allclose(np_(scores)[i], [s for _, s in expected], rtol=1e-5)


def test_missing_n_best_entries_have_minus_inf_scores():
    # One possible token, no empty output: only [A] EOS and [A A] (truncated) exist, 2 of 6.
    table = chain({BOS_ID: {A: 0.5, EOS_ID: 0.5}, A: {A: 0.5, EOS_ID: 0.5}})
    table[table == FILL] = -np.inf
    ids, scores = beam_search(markov_step(table), markov_state([0]), 2, 6, n_best=6)
    np.testing.assert_array_equal(np_(ids)[0, :2], padded([[A], [A, A]], 2))
    assert np.isfinite(np_(scores)[0, :2]).all()
    assert np.isneginf(np_(scores)[0, 2:]).all()
    assert (np_(ids)[0, 2:] == PAD_ID).all()


def test_argument_errors():
    step, state = markov_step(GREEDY_TRAP), markov_state([0])
    with pytest.raises(ValueError, match="n_best"):
        beam_search(step, state, 5, beam_size=2, n_best=3)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(step, state, 5, beam_size=0)


def test_length_penalty_formula():
    np.testing.assert_allclose(
        np_(gnmt_length_penalty(ops.convert_to_tensor([1, 7]), 0.6)), [1.0, 2.0**0.6], rtol=1e-6
    )


# DESIGN.md: model and search code use `keras` and `keras.ops` only (no tensorflow, jax,
# torch or numpy), so they run under every Keras backend.
KERAS_ONLY_MODULES = ["search.py", "model.py"]
ALLOWED_NMT_MODULES = {"config", "search", "model"}  # nmt.config and the keras-only ones


def non_keras_imports(source: str, package: str = "nmt") -> list[str]:
    """Every module `source` imports that is neither the standard library, public
    `keras` (not `keras.src`, whose backend packages are backend-specific), `nmt.config`
    nor another keras-only module; also any `__import__` / `importlib` call, which would
    hide an import.
    `keras.src.backend` itself is allowed: it dispatches to the active backend, and its
    `rnn` (the loop Keras' own RNN layers run) has no public name."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to the module's package, e.g. `from .config import X`
                base = ".".join([package, base]) if base else package
            names = [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Name) and node.id == "__import__":
            names = ["__import__"]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if name == "__import__" or top == "importlib":
                bad.append(name)
            elif top == "keras":
                if name.startswith("keras.src") and name != "keras.src.backend":
                    bad.append(name)
            elif top == "nmt":
                if name.partition(".")[2].split(".")[0] not in ALLOWED_NMT_MODULES:
                    bad.append(name)
            elif top not in sys.stdlib_module_names:
                bad.append(name)
    return bad


def test_non_keras_imports_catches_backend_imports():
    assert non_keras_imports("import keras\nfrom keras import ops\nfrom typing import Any") == []
    assert non_keras_imports("from nmt.config import PAD_ID\nfrom .config import EOS_ID") == []
    assert non_keras_imports("from keras.src import backend") == []
    assert non_keras_imports("from nmt.search import SOURCE") == []
    for source in [
        "import tensorflow as tf",
        "import numpy",
        "from jax import numpy as jnp",
        "import torch.nn",
        "from keras.src.backend.tensorflow import core",
        "from keras.src.backend import jax",
        "from keras.src import ops",
        "from nmt import pipeline",
        "from . import pipeline",
        "import nmt",
        "if TYPE_CHECKING:\n    import tensorflow",
        "def f():\n    import jax",
        "tf = __import__('tensorflow')",
        "import importlib",
    ]:
        assert non_keras_imports(source), source


@pytest.mark.parametrize("name", KERAS_ONLY_MODULES)
def test_module_uses_keras_only(name):
    source = (Path(search.__file__).parent / name).read_text()
    imports = [
        a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names
    ]
    assert "keras" in imports  # the real module was read
    assert non_keras_imports(source) == []


def compiled_cases():
    """A function running all searches, its eager results, and its arguments."""
    markov, prefix = markov_step(random_tables(11, 3, 6)), prefix_step(prefix_tables(5, 3))

    def run(markov_state, prefix_state, max_len):
        return (
            *greedy_search(markov, markov_state, max_len, max_steps=6),
            *beam_search(markov, markov_state, max_len, 3, n_best=2, max_steps=6),
            *beam_search(prefix, prefix_state, MAX_LEN, 4, n_best=3),
        )

    args = (markov_state(range(3)), prefix_state(3), ops.convert_to_tensor([6, 2, 4], "int32"))
    return run, run(*args), args


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function test")
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_same_results_inside_tf_function(jit_compile, dynamic_batch):
    import tensorflow as tf

    run, eager, args = compiled_cases()
    signature = None
    if dynamic_batch:  # batch size unknown at trace time
        signature = [
            {"sent": tf.TensorSpec([None], tf.int32), "t": tf.TensorSpec([None], tf.int32)},
            {"code": tf.TensorSpec([None], tf.int32), "aux": (tf.TensorSpec([None, 2]),)},
            tf.TensorSpec([None], tf.int32),
        ]
    compiled = tf.function(run, jit_compile=jit_compile, input_signature=signature)
    for got, want in zip(compiled(*args), eager, strict=True):
        np.testing.assert_allclose(np_(got), np_(want), rtol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.function test")
def test_traced_max_len_needs_max_steps():
    import tensorflow as tf

    step = markov_step(GREEDY_TRAP)
    fn = tf.function(lambda state, max_len: greedy_search(step, state, max_len))
    with pytest.raises(ValueError, match="max_steps"):
        fn(markov_state([0]), ops.convert_to_tensor([5], "int32"))


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax.jit test")
def test_same_results_inside_jax_jit():
    import jax

    run, eager, args = compiled_cases()
    for got, want in zip(jax.jit(run)(*args), eager, strict=True):
        np.testing.assert_allclose(np_(got), np_(want), rtol=1e-6)


def test_ensemble_step_is_the_log_of_the_mean_probability():
    tables = random_tables(3, sentences=2, steps=1)[:, 0]  # two Markov chains
    steps = [markov_step(table) for table in tables]
    combined = search.ensemble(steps)
    tokens = ops.convert_to_tensor([BOS_ID, A], "int32")
    states = (markov_state([0, 0]), markov_state([0, 0]))
    log_probs, new_states = combined(tokens, states)
    expected = np.log(np.exp(tables[:, [BOS_ID, A]]).mean(axis=0))
    np.testing.assert_allclose(np_(log_probs), expected, rtol=1e-5)
    # Every member's state advanced by its own step function, in member order.
    assert isinstance(new_states, tuple) and len(new_states) == 2
    assert all((np_(s["t"]) == 1).all() for s in new_states)
    # One member is passed through as it is.
    alone, _ = search.ensemble(steps[:1])(tokens, states[:1])
    np.testing.assert_array_equal(np_(alone), np_(steps[0](tokens, states[0])[0]))


def test_ensemble_of_a_model_with_itself_searches_as_the_model():
    step, state = markov_step(GREEDY_TRAP), markov_state([0])
    twice = search.ensemble([step, step])
    ids, scores = beam_search(step, state, 5, 2, n_best=2)
    ids2, scores2 = beam_search(twice, (state, state), 5, 2, n_best=2)
    np.testing.assert_array_equal(np_(ids2), np_(ids))
    np.testing.assert_allclose(np_(scores2), np_(scores), rtol=1e-6)


def test_ensemble_argument_errors():
    with pytest.raises(ValueError, match="at least one"):
        search.ensemble([])
