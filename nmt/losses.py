"""Losses and metrics over padded target batches: the PAD positions never count.

`smoothed_nll` is the per-token loss; `MaskedCrossEntropy` (training) and `TokenNLL`
(validation perplexity) both average it over real target tokens.
"""

from __future__ import annotations

from typing import Any

import keras

from nmt.config import PAD_ID


@keras.saving.register_keras_serializable(package="nmt")
class MaskedCrossEntropy(keras.losses.Loss):
    """Token-level cross-entropy over non-pad targets, with optional label smoothing.

    Returns the mean over real target tokens of the batch, so batches with many padded
    positions are not down-weighted.
    """

    def __init__(
        self, label_smoothing: float = 0.0, name: str = "masked_cross_entropy", **kwargs: Any
    ):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        return token_mean(y_true, smoothed_nll(y_true, y_pred, self.label_smoothing))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def smoothed_nll(y_true, logits, label_smoothing: float = 0.0):
    """Per-token loss `(batch, tgt_len)`: NLL mixed with the uniform-distribution loss."""
    ops = keras.ops
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    y_true = ops.cast(y_true, "int32")
    nll = -ops.squeeze(ops.take_along_axis(log_probs, y_true[..., None], axis=-1), -1)
    if not label_smoothing:
        return nll
    return (1.0 - label_smoothing) * nll - label_smoothing * ops.mean(log_probs, axis=-1)


def token_mask(y_true):
    """1.0 at real target tokens, 0.0 at PAD."""
    return keras.ops.cast(keras.ops.not_equal(keras.ops.cast(y_true, "int32"), PAD_ID), "float32")


def token_mean(y_true, values):
    """Mean of per-token `values` over the real (non-PAD) tokens of `y_true`."""
    mask = token_mask(y_true)
    return keras.ops.sum(values * mask) / keras.ops.maximum(keras.ops.sum(mask), 1.0)


@keras.saving.register_keras_serializable(package="nmt")
class TokenNLL(keras.metrics.Metric):
    """Unsmoothed cross-entropy per real target token over all batches (exp: perplexity).

    Sums and counts tokens across batches, so batches of different lengths and sizes weigh
    by their tokens (a mean of per-batch means would not).
    """

    def __init__(self, name: str = "nll", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.tokens = self.add_variable(shape=(), initializer="zeros", name="tokens")

    def update_state(self, y_true, y_pred, sample_weight=None):
        mask = token_mask(y_true)
        self.total.assign_add(keras.ops.sum(smoothed_nll(y_true, y_pred) * mask))
        self.tokens.assign_add(keras.ops.sum(mask))

    def result(self):
        return self.total / keras.ops.maximum(self.tokens, 1.0)
