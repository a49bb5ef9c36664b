"""Training on several devices and machines with the engine each framework ships.

`training.distribution`: "mirrored" is `tf.distribute.MirroredStrategy` over the local GPUs
and "multi_worker" `tf.distribute.MultiWorkerMirroredStrategy` over the machines `TF_CONFIG`
names (TensorFlow backend); "data_parallel" is `keras.distribution.DataParallel` over all
devices, of several processes after `keras.distribution.initialize` (JAX backend). Either
way the configured batch is the global batch, split across replicas, and a step gives the
update one device would make on that batch: the loss is a mean over the global batch's
tokens and gradients are clipped after they are summed. `start()` returns the `Cluster`
the training loop asks for its scope, its worker's share of the input and whether it is
the chief, the one worker that writes the run directory.
Without GPUs, `NMT_CPU_DEVICES=N` (`nmt.devices`) gives a CPU machine N devices to test on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from nmt.config import PAD_ID, TrainingConfig
from nmt.errors import ConfigError
from nmt.losses import MaskedCrossEntropy, smoothed_nll, token_mask

log = logging.getLogger("nmt")

# Set (above 1) by whoever launches JAX training over several processes; Keras reads it.
PROCESSES_ENV = "KERAS_DISTRIBUTION_NUM_PROCESSES"
_BACKEND_OF = {"mirrored": "tensorflow", "multi_worker": "tensorflow", "data_parallel": "jax"}


def check_backend(cfg: TrainingConfig) -> None:
    """Raises ConfigError when `cfg.distribution` does not exist for the Keras backend."""
    backend = keras.backend.backend()
    wanted = _BACKEND_OF.get(cfg.distribution, backend)
    if wanted != backend:
        hint = {"tensorflow": "mirrored or multi_worker", "jax": "data_parallel"}
        instead = hint.get(backend, "none")
        raise ConfigError(
            f"training.distribution={cfg.distribution} needs the {wanted} backend "
            f"(KERAS_BACKEND={wanted}); under {backend} use training.distribution={instead}"
        )


@dataclass
class Cluster:
    """Where this process trains: the engine's strategy, how many replicas and workers.

    Only the chief (worker 0) writes the run directory; every worker runs the same steps.
    """

    strategy: Any = None  # the tf.distribute strategy, if any
    replicas: int = 1
    workers: int = 1
    worker: int = 0

    @property
    def is_chief(self) -> bool:
        return self.worker == 0

    def scope(self) -> contextlib.AbstractContextManager:
        """Build the model, optimizer and metrics inside this."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def barrier(self) -> None:
        """Returns when every worker has called it (e.g. after the chief's preparation)."""
        if self.workers == 1:
            return
        if self.strategy is not None:
            _tf_barrier(self.strategy)
        else:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("nmt")

    def describe(self) -> str:
        """The start-up line, e.g. 'training on 4 replicas (2 workers)'."""
        r, w = self.replicas, self.workers
        return f"training on {r} replica{'s' * (r != 1)} ({w} worker{'s' * (w != 1)})"

    def shard(self, batches):
        """This worker's part of each global batch. Batches are padded to a multiple of the
        replica count first; tf.distribute then splits each batch across all replicas
        (DATA sharding: every worker reads the whole input and keeps its rows), while under
        JAX each process hands Keras its own contiguous rows."""
        batches = pad_to_replicas(batches, self.replicas)
        if self.strategy is not None:
            import tensorflow as tf

            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = (
                tf.data.experimental.AutoShardPolicy.DATA
            )
            return batches.with_options(options)
        if self.workers == 1:
            return batches
        return batches.map(functools.partial(_rows_of_worker, part=self.worker, parts=self.workers))


def start(cfg: TrainingConfig) -> Cluster:
    """Sets up `cfg.distribution`: call it before TensorFlow or JAX computes anything.

    Raises:
        ConfigError: the distribution does not exist for the running Keras backend, or
            multi_worker without `TF_CONFIG`.
    """
    check_backend(cfg)
    if keras.backend.backend() == "jax":
        return _start_jax(cfg.distribution == "data_parallel")
    if cfg.distribution == "mirrored":
        strategy = _mirrored()
    elif cfg.distribution == "multi_worker":
        strategy = _multi_worker()
    else:
        return Cluster()
    resolver = strategy.cluster_resolver
    workers = len(resolver.cluster_spec().as_dict().get("worker", [])) if resolver else 1
    return Cluster(
        strategy,
        strategy.num_replicas_in_sync,
        max(workers, 1),
        resolver.task_id if resolver else 0,
    )


def _start_jax(data_parallel: bool) -> Cluster:
    """`keras.distribution.DataParallel` over every device of every process; several
    processes when `KERAS_DISTRIBUTION_NUM_PROCESSES` (with `..._JOB_ADDRESSES` and
    `..._PROCESS_ID`) asks for them. A global setting: one run must not leak into the next."""
    if not data_parallel:
        keras.distribution.set_distribution(None)
        return Cluster()
    if int(os.environ.get(PROCESSES_ENV, "1") or 1) > 1:
        _initialize_jax_processes()
    import jax

    # Each process hands Keras its own rows of the global batch (Cluster.shard): Keras
    # shards only tf.data input itself.
    keras.distribution.set_distribution(keras.distribution.DataParallel(auto_shard_dataset=False))
    return Cluster(None, jax.device_count(), jax.process_count(), jax.process_index())


@functools.cache
def _initialize_jax_processes() -> None:
    keras.distribution.initialize()  # reads the KERAS_DISTRIBUTION_* variables


@contextlib.contextmanager
def local_variables():
    """Variables created inside are this process's alone. Keras builds a throwaway optimizer
    when it saves weights; under a JAX distribution over several processes creating its
    variables is a collective of every process, so the chief, saving alone, would wait for
    the others forever."""
    if keras.backend.backend() != "jax":
        yield
        return
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def _mirrored():
    """MirroredStrategy over the GPUs, or over the CPU devices when there is no GPU."""
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([d.name for d in devices])


@functools.cache  # TensorFlow configures its collectives once per process
def _multi_worker():
    """MultiWorkerMirroredStrategy over the workers `TF_CONFIG` names."""
    import tensorflow as tf

    if not os.environ.get("TF_CONFIG"):
        raise ConfigError(
            "training.distribution=multi_worker needs TF_CONFIG (the cluster's workers and "
            "this worker's index); see README, 'Training on several GPUs or machines'"
        )
    _patch_keras_for_multi_worker()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _patch_keras_for_multi_worker() -> None:
    """Keras 3's TensorFlow trainer fails under MultiWorkerMirroredStrategy (keras-team/keras
    #20585) in two places: it reduces the first batch across workers just to learn its
    shapes, and it averages the scalar logs along an axis they do not have. Both reductions
    are needless here: shapes are the same on every replica, and the logs are metric
    results, already aggregated over all replicas. Take the local values instead."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer

    trainer._collective_all_reduce_multi_worker = lambda strategy: False

    def symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0], next(it)
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build


def _tf_barrier(strategy) -> None:
    import tensorflow as tf

    @tf.function
    def count_replicas():
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce("sum", tf.constant(1.0))

    strategy.run(count_replicas)


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


def _rows_of_worker(batch, part: int, parts: int):
    """Rows `[part * n / parts, (part + 1) * n / parts)` of every array of a numpy batch."""

    def rows(a):
        size = len(a) // parts
        return a[part * size : (part + 1) * size]

    (src, tgt_in), tgt_out = batch
    return (rows(src), rows(tgt_in)), rows(tgt_out)


def _pad_batch(batch, multiple: int, xp):
    """`batch` padded to a multiple of `multiple` rows, with numpy or keras.ops (`xp`)."""
    (src, tgt_in), tgt_out = batch
    extra = -xp.shape(src)[0] % multiple

    def pad(a, fill=None):
        rows = xp.repeat(a[:1], extra, axis=0)
        return xp.concatenate([a, rows if fill is None else xp.full_like(rows, fill)], axis=0)

    return (pad(src), pad(tgt_in)), pad(tgt_out, PAD_ID)
