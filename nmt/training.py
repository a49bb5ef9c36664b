"""Training: run-directory preparation, precision policy, compile and the epoch loop.

`train()` runs one `model.fit` per epoch over that epoch's seeded shuffle order, so a
resumed run can skip exactly the batches its checkpoint consumed (`nmt.checkpointing`).
The run directory's layout and crash consistency live in `nmt.rundir`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from nmt import config as config_lib
from nmt import distribution, rundir
from nmt.checkpointing import EpochProgress, RunKeeper, ValidationScore, restore
from nmt.config import Config, TrainingConfig
from nmt.errors import ConfigError, NmtError
from nmt.losses import TokenNLL
from nmt.rundir import RunDir

log = logging.getLogger("nmt")

# Bucketed tf.data pipelines have unknown cardinality, so Keras warns at the end of every
# epoch that the input "ran out of data"; that is the expected end of an epoch here.
warnings.filterwarnings("ignore", message="Your input ran out of data")


class TrainingDiverged(NmtError):
    """The loss became NaN or Inf."""


# --------------------------------------------------------------------------- preparation


def write_config(cfg: Config, run: RunDir) -> None:
    """Writes the resolved config; refuses to resume a run whose model differs."""
    if run.config.exists() and run.checkpoint.exists():
        old = config_lib.load(run.config)
        for section in ("model", "tokenizer"):
            if getattr(old, section) != getattr(cfg, section):
                raise ConfigError(
                    f"{run} holds a run with a different {section} config; "
                    "use a new --run-dir or the same settings to resume"
                )
    run.path.mkdir(parents=True, exist_ok=True)
    rundir.atomic_write(run.config, cfg.to_yaml())


def prepare(cfg: Config, run_dir: str | Path) -> dict[str, dict[str, int]]:
    """Builds what training needs: config, SentencePiece models and filtered-pair counts.

    Returns:
        The counts per split, as written to `data_stats.json`.
    """
    from nmt import corpus, pipeline, tokenizer

    run = RunDir(run_dir)
    write_config(cfg, run)
    # The train files' bytes too, not only their names: the models and counts come from them.
    key = {"data": cfg.to_dict()["data"], "train_sha256": corpus.train_files_sha256(cfg.data)}
    _ensure_tokenizers(cfg, run, key["train_sha256"])
    src_tok, tgt_tok = tokenizer.load_tokenizers(run.tokenizer)
    stats = json.loads(run.stats.read_text()) if run.stats.exists() else {}
    if all(stats.get(name) == value for name, value in key.items()):
        counts = stats["counts"]
    else:
        counts = {
            split: pipeline.count_split(cfg.data, split, src_tok, tgt_tok)
            for split in ("train", "validation")
        }
        rundir.atomic_write(run.stats, json.dumps({**key, "counts": counts}))
    for split, split_counts in counts.items():
        log.info("%s: %s", split, pipeline.describe_counts(split_counts))
        if split_counts["kept"] == 0:
            raise NmtError(f"no {split} pairs left after filtering; check data.max_*_len")
    return counts


def _ensure_tokenizers(cfg: Config, run: RunDir, train_sha256: str | None) -> None:
    """Trains SentencePiece unless models trained with the same settings and train files
    (`corpus.train_files_sha256`) are there."""
    from nmt import corpus, tokenizer

    data = cfg.to_dict()["data"]
    settings = {
        "tokenizer": cfg.to_dict()["tokenizer"],
        "seed": cfg.training.seed,
        **{k: data[k] for k in ("format", "tfds_name", "src_lang", "tgt_lang", "train")},
        "train_sha256": train_sha256,
    }
    if tokenizer.tokenizers_exist(run.tokenizer):
        stored = tokenizer.read_settings(run.tokenizer).get("settings", settings)
        # A key the run's models predate (e.g. train_sha256) is not held against them.
        if any(stored.get(key, value) != value for key, value in settings.items()):
            raise ConfigError(
                f"{run.tokenizer} holds SentencePiece models trained with other tokenizer or "
                "data settings; use a new --run-dir (or delete that folder to retrain them)"
            )
        return
    log.info(
        "training SentencePiece (%s, %d pieces)", cfg.tokenizer.model_type, cfg.tokenizer.vocab_size
    )
    # data_stats.json's pair and batch counts were taken in the old models' pieces.
    run.stats.unlink(missing_ok=True)
    start = time.perf_counter()
    src = (s for s, _ in corpus.iter_pairs(cfg.data, "train"))
    tgt = (t for _, t in corpus.iter_pairs(cfg.data, "train"))
    tokenizer.train_tokenizers(
        src, tgt, cfg.tokenizer, run.tokenizer, seed=cfg.training.seed, settings=settings
    )
    log.info("SentencePiece trained in %.1f s -> %s", time.perf_counter() - start, run.tokenizer)


# --------------------------------------------------------------------------- precision, compile


def resolve_precision(precision: str) -> str:
    """Maps "auto" to mixed_float16 on a GPU and float32 otherwise."""
    if precision != "auto":
        return precision
    return "mixed_float16" if _gpu_visible() else "float32"


def _gpu_visible() -> bool:
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _tensorboard(run: RunDir) -> list[keras.callbacks.Callback]:
    """Keras' TensorBoard callback, which writes with tf.summary: only with TensorFlow."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        log.info("no TensorBoard logs: they need the tensorflow extra (metrics.jsonl has all)")
        return []
    return [keras.callbacks.TensorBoard(str(run.logs))]


def learning_rate(cfg: TrainingConfig):
    """The learning rate or a `keras.optimizers.schedules` schedule from the config; a
    cosine schedule over the whole run (`lr_decay_steps: 0`) needs `fit_schedule_to_run`
    first."""
    schedules = keras.optimizers.schedules
    if cfg.lr_schedule == "exponential":
        return schedules.ExponentialDecay(cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_rate)
    if cfg.lr_schedule == "cosine":
        if cfg.lr_decay_steps < 1:
            raise ValueError("lr_decay_steps=0 means the whole run: call fit_schedule_to_run")
        warm = cfg.warmup_steps > 0
        return schedules.CosineDecay(
            0.0 if warm else cfg.learning_rate,
            cfg.lr_decay_steps,
            warmup_target=cfg.learning_rate if warm else None,
            warmup_steps=cfg.warmup_steps,
        )
    return cfg.learning_rate


def fit_schedule_to_run(
    cfg: TrainingConfig, batches_per_epoch: Callable[[], int]
) -> TrainingConfig:
    """`cfg` with a cosine schedule's `lr_decay_steps: 0` replaced by the updates the run
    makes after warm-up (`epochs` x batches per epoch, or `max_steps` if fewer), so the rate
    reaches 0 as training ends however long an epoch is. `batches_per_epoch` is called only
    then: it reads the training split once per run directory (bucketing makes the count
    independent of the shuffle, so every epoch gets the same count). A resumed run refits:
    raise `epochs` or `max_steps` and the schedule stretches to the new end."""
    if cfg.lr_schedule != "cosine" or cfg.lr_decay_steps:
        return cfg
    per_epoch = batches_per_epoch()
    total = per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    if total <= cfg.warmup_steps:  # a short trial or debug run: it ends while warming up
        log.warning(
            "training.warmup_steps (%d) is not shorter than the run (%d updates): the rate "
            "never decays",
            cfg.warmup_steps,
            total,
        )
        return dataclasses.replace(cfg, lr_decay_steps=1)
    log.info(
        "cosine schedule over the whole run: %d warm-up + %d decaying updates (%d per epoch)",
        cfg.warmup_steps,
        total - cfg.warmup_steps,
        per_epoch,
    )
    return dataclasses.replace(cfg, lr_decay_steps=total - cfg.warmup_steps)


def compile_model(model: keras.Model, cfg: TrainingConfig) -> None:
    """Adam and the token-mean loss; under a tf.distribute strategy (compile inside its
    scope) both act on the global batch, as on one device."""
    optimizer = distribution.SummedClipAdam(
        learning_rate(cfg), clipnorm=cfg.clip_norm or None, name="adam"
    )
    model.compile(
        optimizer=optimizer,
        loss=distribution.GlobalTokenCrossEntropy(cfg.label_smoothing),
        metrics=[TokenNLL()],
        steps_per_execution=cfg.steps_per_execution,
        jit_compile={"auto": "auto", "always": True, "never": False}[cfg.xla],
    )


# --------------------------------------------------------------------------- train


def train(
    cfg: Config, run_dir: str | Path, validation_score: ValidationScore | None = None
) -> dict[str, Any]:
    """Trains (or resumes) the model of `cfg` in `run_dir`.

    Args:
        cfg: the resolved config.
        run_dir: the run directory to create or resume.
        validation_score: scores the model after each epoch (higher is better),
            recorded as `val_bleu` and used for model selection when
            `training.early_stopping_metric` is "bleu"; that metric defaults it to
            `evaluation.validation_bleu` (greedy BLEU on the validation split).

    Returns:
        The final run state: epoch, step, best score and whether training stopped early.

    Raises:
        TrainingDiverged: the loss became NaN/Inf; the best weights are left untouched.
    """
    cluster = distribution.start(cfg.training)  # before TensorFlow or JAX computes anything
    run = RunDir(run_dir)
    with rundir.Lock(run) if cluster.is_chief else contextlib.nullcontext():
        if cluster.is_chief:
            prepare(cfg, run.path)
            state = rundir.reconcile(run)
        cluster.barrier()  # the other workers read what the chief prepared
        if not cluster.is_chief:
            state = rundir.read_state(run)
        state = _resumable_state(cfg, state)
        if _finished(state, cfg.training):
            log.info("training already finished: %s", describe_state(state))
            return state
        return _fit_epochs(cfg, run, state, validation_score, cluster)


def _fit_epochs(cfg: Config, run: RunDir, state: dict[str, Any], validation_score, cluster):
    if cfg.training.early_stopping_metric == "bleu" and validation_score is None:
        from nmt import evaluation  # lazily: evaluation decodes, training need not

        validation_score = evaluation.validation_bleu(cfg, run.path)
    model, train_batches, validation = _build(cfg, run, state, cluster)
    keeper = RunKeeper(
        run,
        cfg.training,
        {**state, "batch_order": _batch_order(cfg)},
        validation_score,
        writes=cluster.is_chief,
    )
    logs = _tensorboard(run) if cluster.is_chief else []
    callbacks = [keeper, *logs, EpochProgress(cfg.training.epochs)]
    skip = state.get("batches", 0)  # the resumed epoch's batches consumed before the kill
    for epoch in range(state.get("epoch", 0), cfg.training.epochs):
        batches = train_batches(epoch, skip)
        if skip and _exhausted(batches):
            keeper.close_epoch(epoch)  # stopped by max_steps on the epoch's last batch
            skip = 0
            continue
        keeper.start_epoch(epoch, skip)
        model.fit(
            batches,
            validation_data=validation,
            initial_epoch=epoch,
            epochs=epoch + 1,
            callbacks=callbacks,
            verbose=1 if sys.stdout.isatty() else 2,
            shuffle=False,  # the pipeline shuffles, seeded per epoch
        )
        skip = 0
        if keeper.stop_reason:
            break
    if keeper.stop_reason == "diverged":
        raise TrainingDiverged(
            f"loss became NaN/Inf at step {keeper.step}; stopped without saving. "
            f"Best weights so far are kept in {run.best_weights}; lower "
            "training.learning_rate or set training.clip_norm, then run again to resume"
        )
    return keeper.state


def _exhausted(batches) -> bool:
    return next(iter(batches), None) is None


def _batch_order(cfg: Config) -> dict[str, Any]:
    """What decides which batches an epoch yields, in which order (the two input engines
    shuffle differently, so a run resumed under another backend restarts its epoch)."""
    from nmt import pipeline

    t = cfg.training
    keys = ("seed", "batch_by", "batch_size", "max_tokens", "bucket_width", "shuffle_buffer")
    return {
        "engine": pipeline.default_engine(),
        "data": cfg.to_dict()["data"],
        **{k: getattr(t, k) for k in keys},
    }


def _batches_per_epoch(cfg: Config, run: RunDir, count: Callable[[], int], write: bool) -> int:
    """`count()`, remembered in `data_stats.json` with the batch order it was counted for
    (new SentencePiece models delete the file): a resumed run does not read the training
    split again just to size its schedule."""
    stats = json.loads(run.stats.read_text()) if run.stats.exists() else {}
    remembered = stats.get("batches_per_epoch", {})
    order = json.loads(json.dumps(_batch_order(cfg)))  # as it reads back from the file
    if remembered.get("batch_order") == order:
        return remembered["count"]
    batches = count()
    if write:
        stats["batches_per_epoch"] = {"batch_order": order, "count": batches}
        rundir.atomic_write(run.stats, json.dumps(stats))
    return batches


def _resumable_state(cfg: Config, state: dict[str, Any]) -> dict[str, Any]:
    """The committed state, checked against the config it resumes with.

    Raises:
        ConfigError: the run selects its best model by another metric.
    """
    if not state:
        return state
    metric = cfg.training.early_stopping_metric
    if state.get("metric", metric) != metric:
        raise ConfigError(
            f"this run selects its best weights by validation {state['metric']}, not {metric}; "
            f"keep training.early_stopping_metric={state['metric']} or use a new --run-dir"
        )
    if state.get("batch_order") != _batch_order(cfg) and state.get("batches"):
        log.warning(
            "data or batching settings changed since the checkpoint: epoch %d restarts from "
            "its first batch (the position inside it would not mean the same batches)",
            state["epoch"] + 1,
        )
        state = {**state, "batches": 0}
    return state


def _build(cfg: Config, run: RunDir, state: dict[str, Any], cluster: distribution.Cluster):
    """The compiled model, restored from `state`; a function of the epoch giving that
    epoch's training batches; the validation batches."""
    from nmt import pipeline, tokenizer
    from nmt.model import build_model

    keras.utils.set_random_seed(cfg.training.seed)
    policy = resolve_precision(cfg.training.precision)
    keras.mixed_precision.set_global_policy(policy)
    src_tok, tgt_tok = tokenizer.load_tokenizers(run.tokenizer)

    def batches(split: str, epoch: int | None = None, skip: int = 0, shard: bool = True):
        made = pipeline.make_batches(
            cfg.data, cfg.training, split, src_tok, tgt_tok, epoch=epoch, skip=skip
        )
        return cluster.shard(made) if shard else made

    # Global batches: each one is one update on every worker.
    train_cfg = fit_schedule_to_run(
        cfg.training,
        lambda: _batches_per_epoch(
            cfg,
            run,
            lambda: sum(1 for _ in batches("train", shard=False)),  # unshuffled
            write=cluster.is_chief,
        ),
    )
    with cluster.scope():
        model = build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size)
        compile_model(model, train_cfg)
        restore(model, run, state)
        _apply_config_learning_rate(model, train_cfg)
    if state:
        log.info("resuming from %s: %s", run.checkpoint, describe_position(state))
    log.info("%s, %s params, precision %s", cluster.describe(), f"{model.count_params():,}", policy)

    return model, lambda epoch, skip: batches("train", epoch, skip), batches("validation")


def _apply_config_learning_rate(model: keras.Model, cfg: TrainingConfig) -> None:
    """A checkpoint restores the optimizer's learning-rate variable; the config wins."""
    lr = learning_rate(cfg)
    if not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        model.optimizer.learning_rate = lr


def describe_position(state: dict[str, Any]) -> str:
    """Where a checkpoint stands, e.g. 'epoch 2 (13 batches in), step 41'."""
    return (
        f"epoch {state['epoch'] + 1} ({state.get('batches', 0)} batches in), step {state['step']}"
    )


def describe_state(state: dict[str, Any]) -> str:
    """Where training stands, e.g. 'step 60 (epoch 2 stopped by training.max_steps after
    32 batches)' or 'step 840 (8 epochs, stopped early)'."""
    if state.get("batches"):
        return (
            f"step {state['step']} (epoch {state['epoch'] + 1} stopped by training.max_steps "
            f"after {state['batches']} batches)"
        )
    early = ", stopped early" if state.get("stopped_early") else ""
    return f"step {state.get('step', 0)} ({state.get('epoch', 0)} epochs{early})"


def _finished(state: dict[str, Any], cfg: TrainingConfig) -> bool:
    if not state:
        return False
    return (
        state.get("stopped_early", False)
        or state["epoch"] >= cfg.epochs
        or bool(cfg.max_steps and state["step"] >= cfg.max_steps)
    )
