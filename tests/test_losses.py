"""Losses and metrics against hand computations in numpy."""

import numpy as np
import pytest

from nmt.losses import MaskedCrossEntropy, TokenNLL

Y = np.array([[4, 5, 0, 0], [3, 0, 0, 0]])  # 3 real tokens, 5 PAD positions


def log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def hand_loss(y, logits, smoothing):
    """Mean over real tokens of (1 - e) * NLL + e * (mean over the vocabulary of -log p)."""
    log_p = log_softmax(logits.astype(np.float64))
    terms = [
        (1 - smoothing) * -log_p[b, t, y[b, t]] + smoothing * -log_p[b, t].mean()
        for b, t in zip(*np.nonzero(y), strict=True)
    ]
    return np.mean(terms)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_masked_cross_entropy_matches_hand_computation(smoothing):
    logits = np.random.default_rng(1).normal(size=(2, 4, 6)).astype("float32") * 3
    got = float(MaskedCrossEntropy(smoothing)(Y, logits))
    assert got == pytest.approx(hand_loss(Y, logits, smoothing), rel=1e-5)


def test_padding_positions_do_not_count():
    logits = np.random.default_rng(0).normal(size=(2, 4, 6)).astype("float32")
    changed = logits.copy()
    changed[Y == 0] = np.random.default_rng(5).normal(size=(5, 6)) * 100
    loss = MaskedCrossEntropy(0.1)
    assert float(loss(Y, changed)) == pytest.approx(float(loss(Y, logits)), rel=1e-6)
    # ...while a real position does count.
    changed[0, 1] += np.arange(6) * 10.0
    assert float(loss(Y, changed)) != pytest.approx(float(loss(Y, logits)), rel=1e-3)


def test_token_nll_weighs_batches_by_their_tokens():
    rng = np.random.default_rng(0)
    metric = TokenNLL()
    batches = [
        (np.array([[4, 5, 6, 0]]), rng.normal(size=(1, 4, 8)).astype("float32")),
        (np.array([[7, 0, 0, 0], [0, 0, 0, 0]]), rng.normal(size=(2, 4, 8)).astype("float32")),
    ]
    per_token = []
    for y, logits in batches:
        metric.update_state(y, logits)
        log_p = log_softmax(logits.astype(np.float64))
        per_token += [-log_p[b, t, y[b, t]] for b, t in zip(*np.nonzero(y), strict=True)]
    # 4 tokens: the mean over tokens (3 + 1), not the mean of the two batch means.
    assert float(metric.result()) == pytest.approx(np.mean(per_token), rel=1e-5)
    assert np.mean(per_token) != pytest.approx(np.mean([np.mean(per_token[:3]), per_token[3]]))
