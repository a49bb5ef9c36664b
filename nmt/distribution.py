"""Training on several devices with the engine each framework ships.

`training.distribution`: "mirrored" is `tf.distribute.MirroredStrategy` over the local GPUs
(TensorFlow backend); "data_parallel" is `keras.distribution.DataParallel` over all local
devices (JAX backend). Either way the configured batch is the global batch, split across
replicas, and a step gives the update one device would make on that batch: the loss is a
mean over the global batch's tokens and gradients are clipped after they are summed.
Without GPUs, `NMT_CPU_DEVICES=N` (`nmt.devices`) gives a CPU machine N devices to test on.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import keras
import numpy as np

from nmt.config import PAD_ID, TrainingConfig
from nmt.errors import ConfigError
from nmt.losses import MaskedCrossEntropy, smoothed_nll, token_mask

log = logging.getLogger("nmt")

_BACKEND_OF = {"mirrored": "tensorflow", "data_parallel": "jax"}


def check_backend(cfg: TrainingConfig) -> None:
    """Raises ConfigError when `cfg.distribution` does not exist for the Keras backend."""
    backend = keras.backend.backend()
    wanted = _BACKEND_OF.get(cfg.distribution, backend)
    if wanted != backend:
        other = {v: k for k, v in _BACKEND_OF.items()}.get(backend)
        hint = f"use training.distribution={other}" if other else "use training.distribution=none"
        raise ConfigError(
            f"training.distribution={cfg.distribution} needs the {wanted} backend "
            f"(KERAS_BACKEND={wanted}); under {backend} {hint}"
        )


def strategy_scope(cfg: TrainingConfig) -> contextlib.AbstractContextManager:
    """Sets up `cfg.distribution`; the model, optimizer and metrics are built inside the
    returned context.

    Raises:
        ConfigError: the distribution does not exist for the running Keras backend.
    """
    check_backend(cfg)
    backend = keras.backend.backend()
    if backend == "jax":  # a global setting: one run in a process must not leak into the next
        data_parallel = cfg.distribution == "data_parallel"
        keras.distribution.set_distribution(
            keras.distribution.DataParallel() if data_parallel else None
        )
    if cfg.distribution == "mirrored":
        import tensorflow as tf

        return _mirrored(tf).scope()
    return contextlib.nullcontext()


def _mirrored(tf: Any):
    """MirroredStrategy over the GPUs, or over the CPU devices when there is no GPU."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def replicas(model: keras.Model) -> int:
    """How many replicas train `model`: its strategy's or the distribution's devices."""
    if keras.backend.backend() == "tensorflow":
        return model.distribute_strategy.num_replicas_in_sync
    dist = keras.distribution.distribution()
    return dist.device_mesh.devices.size if dist is not None else 1


def describe(replica_count: int) -> str:
    """The start-up line, e.g. 'training on 2 replicas (1 worker)'."""
    return f"training on {replica_count} replica{'s' if replica_count != 1 else ''} (1 worker)"


def _replica_context():
    """The tf.distribute replica context of a step with several replicas, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    return ctx if ctx is not None and ctx.num_replicas_in_sync > 1 else None


@keras.saving.register_keras_serializable(package="nmt")
class GlobalTokenCrossEntropy(MaskedCrossEntropy):
    """`MaskedCrossEntropy` averaged over the tokens of the whole global batch.

    Under tf.distribute each replica sees part of the batch and the replicas' gradients are
    summed. Keras divides a per-example loss by the replica count, but not a scalar one like
    this: `MaskedCrossEntropy` would give the sum of per-replica token means. This loss is
    each replica's token sum over the global token count, so the replicas sum to the mean.
    """

    def call(self, y_true, y_pred):
        ctx = _replica_context()
        if ctx is None:
            return super().call(y_true, y_pred)
        import tensorflow as tf

        mask = token_mask(y_true)
        total = keras.ops.sum(smoothed_nll(y_true, y_pred, self.label_smoothing) * mask)
        tokens = ctx.all_reduce("sum", tf.stop_gradient(keras.ops.sum(mask)))
        return total / keras.ops.maximum(tokens, 1.0)


class SummedClipAdam(keras.optimizers.Adam):
    """Adam that sums the replicas' gradients before clipping them.

    Keras' TensorFlow optimizer clips each replica's partial gradient and sums afterwards
    (`_all_reduce_sum_gradients`), so `clip_norm` would bound something else than on one
    device. These two private hooks move the sum before the clip.
    """

    def _clip_gradients(self, grads):
        ctx = _replica_context()
        if ctx is not None:
            present = [g for g in grads if g is not None]
            summed = iter(ctx.all_reduce("sum", present))
            grads = [None if g is None else next(summed) for g in grads]
        return super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        if _replica_context() is not None:
            return list(grads_and_vars)  # summed in _clip_gradients
        return super()._all_reduce_sum_gradients(grads_and_vars)


def pad_to_replicas(batches, replica_count: int):
    """Batches whose size divides by `replica_count`, so every replica gets an equal part
    (JAX shards the batch axis evenly; Keras' TensorFlow trainer sums the first batch's
    parts when it builds). A partial batch gets copies of its first pair with an all-PAD
    target, which add nothing to the loss, its gradients or the token metrics."""
    if replica_count == 1:
        return batches
    if keras.backend.backend() == "tensorflow":
        return batches.map(lambda x, y: _pad_batch((x, y), replica_count, keras.ops))
    return batches.map(lambda batch: _pad_batch(batch, replica_count, np))


def _pad_batch(batch, multiple: int, xp):
    """`batch` padded to a multiple of `multiple` rows, with numpy or keras.ops (`xp`)."""
    (src, tgt_in), tgt_out = batch
    extra = -xp.shape(src)[0] % multiple

    def pad(a, fill=None):
        rows = xp.repeat(a[:1], extra, axis=0)
        return xp.concatenate([a, rows if fill is None else xp.full_like(rows, fill)], axis=0)

    return (pad(src), pad(tgt_in)), pad(tgt_out, PAD_ID)
