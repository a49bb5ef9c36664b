"""Training: run-directory preparation, precision policy, compile/fit and the run keeper.

A run directory holds everything a run needs and makes:

    config.yaml           the resolved config
    tokenizer/            SentencePiece models
    data_stats.json       filtered-pair counts per split
    checkpoint/           last checkpoint (weights + optimizer state) and state.json
    best.weights.h5       weights with the best validation score so far
    metrics.jsonl         one JSON line per validation
    logs/                 TensorBoard
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from nmt import config as config_lib
from nmt.config import PAD_ID, Config, TrainingConfig
from nmt.errors import ConfigError, NmtError, RunDirError

log = logging.getLogger("nmt")

# Bucketed tf.data pipelines have unknown cardinality, so Keras warns at the end of every first
# epoch that the input "ran out of data"; that is the expected end of an epoch here.
warnings.filterwarnings("ignore", message="Your input ran out of data")

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_SETTINGS = "settings.json"
STATS_FILE = "data_stats.json"
CHECKPOINT_DIR = "checkpoint"
BEST_WEIGHTS = "best.weights.h5"
METRICS_FILE = "metrics.jsonl"


class TrainingDiverged(NmtError):
    """The loss became NaN or Inf."""


# --------------------------------------------------------------------------- run directory


def write_config(cfg: Config, run_dir: Path) -> None:
    """Writes the resolved config; refuses to resume a run whose model differs."""
    path = run_dir / CONFIG_FILE
    if path.exists() and (run_dir / CHECKPOINT_DIR).exists():
        old = config_lib.load(path)
        for section in ("model", "tokenizer"):
            if getattr(old, section) != getattr(cfg, section):
                raise ConfigError(
                    f"{run_dir} holds a run with a different {section} config; "
                    "use a new --run-dir or the same settings to resume"
                )
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare(cfg: Config, run_dir: str | Path) -> dict[str, dict[str, int]]:
    """Builds what training needs: config, SentencePiece models and filtered-pair counts.

    Returns:
        The counts per split, as written to `data_stats.json`.
    """
    from nmt import corpus, pipeline, tokenizer

    run_dir = Path(run_dir)
    write_config(cfg, run_dir)
    tok_dir = run_dir / TOKENIZER_DIR
    _ensure_tokenizers(cfg, tok_dir)
    src_tok, tgt_tok = tokenizer.load_tokenizers(tok_dir)
    stats_path = run_dir / STATS_FILE
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    if stats.get("data") == cfg.to_dict()["data"]:
        counts = stats["counts"]
    else:
        counts = {
            split: pipeline.count_filtered(
                corpus.load_pairs(cfg.data, split), src_tok, tgt_tok, cfg.data
            )
            for split in ("train", "validation")
        }
        atomic_write_text(stats_path, json.dumps({"data": cfg.to_dict()["data"], "counts": counts}))
    for split, split_counts in counts.items():
        log.info("%s: %s", split, pipeline.describe_counts(split_counts))
        if split_counts["kept"] == 0:
            raise NmtError(f"no {split} pairs left after filtering; check data.max_*_len")
    return counts


def _ensure_tokenizers(cfg: Config, tok_dir: Path) -> None:
    """Trains SentencePiece unless models trained with the same settings are there."""
    from nmt import corpus, tokenizer

    settings = {
        "tokenizer": cfg.to_dict()["tokenizer"],
        "seed": cfg.training.seed,
        **{
            k: cfg.to_dict()["data"][k]
            for k in ("format", "tfds_name", "src_lang", "tgt_lang", "train")
        },
    }
    settings_path = tok_dir / TOKENIZER_SETTINGS
    if tokenizer.tokenizers_exist(tok_dir):
        if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
            raise ConfigError(
                f"{tok_dir} holds SentencePiece models trained with other tokenizer or data "
                "settings; use a new --run-dir (or delete that folder to retrain them)"
            )
        return
    log.info(
        "training SentencePiece (%s, %d pieces)", cfg.tokenizer.model_type, cfg.tokenizer.vocab_size
    )
    start = time.perf_counter()
    src = (s for s, _ in corpus.iter_pairs(cfg.data, "train"))
    tgt = (t for _, t in corpus.iter_pairs(cfg.data, "train"))
    tokenizer.train_tokenizers(src, tgt, cfg.tokenizer, tok_dir, seed=cfg.training.seed)
    atomic_write_text(settings_path, json.dumps(settings, indent=2))
    log.info("SentencePiece trained in %.1f s -> %s", time.perf_counter() - start, tok_dir)


# --------------------------------------------------------------------------- precision, loss


def resolve_precision(precision: str) -> str:
    """Maps "auto" to mixed_float16 on a GPU and float32 otherwise."""
    if precision != "auto":
        return precision
    return "mixed_float16" if _gpu_visible() else "float32"


def _gpu_visible() -> bool:
    if keras.backend.backend() == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


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


def token_mean(y_true, values):
    ops = keras.ops
    mask = ops.cast(ops.not_equal(ops.cast(y_true, "int32"), PAD_ID), "float32")
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


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
        ops = keras.ops
        mask = ops.cast(ops.not_equal(ops.cast(y_true, "int32"), PAD_ID), "float32")
        self.total.assign_add(ops.sum(smoothed_nll(y_true, y_pred) * mask))
        self.tokens.assign_add(ops.sum(mask))

    def result(self):
        return self.total / keras.ops.maximum(self.tokens, 1.0)


def learning_rate(cfg: TrainingConfig):
    """The learning rate or a `keras.optimizers.schedules` schedule from the config."""
    schedules = keras.optimizers.schedules
    if cfg.lr_schedule == "exponential":
        return schedules.ExponentialDecay(cfg.learning_rate, cfg.lr_decay_steps, cfg.lr_decay_rate)
    if cfg.lr_schedule == "cosine":
        warm = cfg.warmup_steps > 0
        return schedules.CosineDecay(
            0.0 if warm else cfg.learning_rate,
            cfg.lr_decay_steps,
            warmup_target=cfg.learning_rate if warm else None,
            warmup_steps=cfg.warmup_steps,
        )
    return cfg.learning_rate


def compile_model(model: keras.Model, cfg: TrainingConfig) -> None:
    optimizer = keras.optimizers.Adam(learning_rate(cfg), clipnorm=cfg.clip_norm or None)
    model.compile(
        optimizer=optimizer,
        loss=MaskedCrossEntropy(cfg.label_smoothing),
        metrics=[TokenNLL()],
        steps_per_execution=cfg.steps_per_execution,
    )


# --------------------------------------------------------------------------- the run keeper


class RunKeeper(keras.callbacks.Callback):
    """Checkpoints, metrics.jsonl, best weights, early stopping, the NaN guard and max_steps.

    A checkpoint is a weights file named by its step (`save_weights` includes the optimizer
    state) plus `state.json` naming it. Both are written to temporary files and renamed, the
    weights first and older weights deleted last, so a kill at any moment leaves a
    `state.json` that names complete weights of the same step.
    """

    def __init__(self, run_dir: Path, cfg: TrainingConfig, state: dict[str, Any], bleu_fn=None):
        super().__init__()
        self.run_dir, self.cfg, self.state, self.bleu_fn = run_dir, cfg, state, bleu_fn
        self.diverged_at: int | None = None
        self.epoch = state.get("epoch", 0)
        self.last_checkpoint = state.get("step", 0)

    @property
    def step(self) -> int:
        return int(self.model.optimizer.iterations)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = self.step
            self.model.stop_training = True
            return
        # ">=" rather than "%": with steps_per_execution > 1 Keras reports every few steps.
        if (
            self.cfg.checkpoint_every
            and self.step - self.last_checkpoint >= self.cfg.checkpoint_every
        ):
            self.save_checkpoint(epoch=self.epoch)
        if self.cfg.max_steps and self.step >= self.cfg.max_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at is not None:
            return  # never checkpoint or keep weights from a diverged model
        logs = dict(logs or {})
        record = self._record(epoch, logs)
        score, higher_is_better = self._score(record)
        best = self.state.get("best")
        improved = math.isfinite(score) and (
            best is None or (score > best if higher_is_better else score < best)
        )
        if improved:
            self.state.update(best=score, bad_validations=0)
            self._save_weights(self.run_dir / BEST_WEIGHTS)
        else:
            self.state["bad_validations"] = self.state.get("bad_validations", 0) + 1
        record["best"] = self.state["best"]
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.save_checkpoint(epoch=epoch + 1)
        if self.cfg.patience and self.state["bad_validations"] >= self.cfg.patience:
            log.info("early stopping: no improvement in %d validations", self.cfg.patience)
            self.state["stopped_early"] = True
            self.save_checkpoint(epoch=epoch + 1)
            self.model.stop_training = True

    def _record(self, epoch: int, logs: dict[str, Any]) -> dict[str, Any]:
        record = {"epoch": epoch + 1, "step": self.step, "time": round(time.time(), 1)}
        record.update({k: float(v) for k, v in logs.items()})
        if "val_nll" in record:
            record["val_ppl"] = float(np.exp(min(record["val_nll"], 50.0)))
        if self.bleu_fn is not None:
            record["val_bleu"] = float(self.bleu_fn(self.model))
        return record

    def _score(self, record: dict[str, Any]) -> tuple[float, bool]:
        if self.cfg.early_stopping_metric == "bleu" and "val_bleu" in record:
            return record["val_bleu"], True
        return record.get("val_nll", record.get("val_loss", math.nan)), False

    def save_checkpoint(self, epoch: int) -> None:
        if not all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in self.model.weights):
            # The loss of the last step was finite but its update was not: keep the old one.
            log.warning("step %d: weights are not finite; checkpoint not written", self.step)
            return
        ckpt = self.run_dir / CHECKPOINT_DIR
        ckpt.mkdir(exist_ok=True)
        name = f"ckpt-{self.step}.weights.h5"
        self._save_weights(ckpt / name)
        self.state.update(epoch=epoch, step=self.step, weights=name)
        atomic_write_text(ckpt / "state.json", json.dumps(self.state))
        for old in ckpt.glob("ckpt-*.weights.h5"):
            if old.name != name:
                old.unlink()
        self.last_checkpoint = self.step

    def _save_weights(self, path: Path) -> None:
        tmp = path.with_name("tmp." + path.name)  # keeps the .weights.h5 suffix Keras wants
        self.model.save_weights(tmp)
        os.replace(tmp, path)


def load_checkpoint(model: keras.Model, run_dir: Path) -> dict[str, Any]:
    """Restores weights and optimizer state from the last checkpoint; {} when there is none."""
    ckpt = run_dir / CHECKPOINT_DIR
    if not (ckpt / "state.json").exists():
        return {}
    state = json.loads((ckpt / "state.json").read_text())
    model.optimizer.build(model.trainable_variables)
    load_weights(model, ckpt / state["weights"])
    return state


def load_weights(model: keras.Model, path: Path) -> None:
    """Loads weights, turning a missing or truncated file or a mismatch into a RunDirError."""
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunDirError(
            f"cannot load {path}: {reason} (a missing or truncated file, or weights that do "
            "not match the run's config.yaml)"
        ) from None


# --------------------------------------------------------------------------- train


def train(cfg: Config, run_dir: str | Path) -> dict[str, Any]:
    """Trains (or resumes) the model of `cfg` in `run_dir`.

    Returns:
        The final run state: epoch, step, best score and whether training stopped early.

    Raises:
        TrainingDiverged: the loss became NaN/Inf; the best weights are left untouched.
    """
    from nmt import corpus, pipeline, tokenizer
    from nmt.model import build_model

    run_dir = Path(run_dir)
    prepare(cfg, run_dir)
    keras.utils.set_random_seed(cfg.training.seed)
    policy = resolve_precision(cfg.training.precision)
    keras.mixed_precision.set_global_policy(policy)
    src_tok, tgt_tok = tokenizer.load_tokenizers(run_dir / TOKENIZER_DIR)
    datasets = {
        split: pipeline.make_dataset(
            corpus.load_pairs(cfg.data, split),
            src_tok,
            tgt_tok,
            cfg.data,
            cfg.training,
            training=(split == "train"),
        )
        for split in ("train", "validation")
    }
    model = build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size)
    compile_model(model, cfg.training)
    state = load_checkpoint(model, run_dir)
    lr = learning_rate(cfg.training)
    if not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        # The checkpoint restores the optimizer's learning-rate variable; the config wins.
        model.optimizer.learning_rate = lr
    if state:
        log.info(
            "resuming from %s: epoch %d, step %d",
            run_dir / CHECKPOINT_DIR,
            state["epoch"],
            state["step"],
        )
    if _finished(state, cfg.training):
        log.info("training already finished (epoch %d, step %d)", state["epoch"], state["step"])
        return state
    keeper = RunKeeper(run_dir, cfg.training, state, bleu_fn=_bleu_fn(cfg, src_tok, tgt_tok))
    log.info("training %s params, precision %s", f"{model.count_params():,}", policy)
    model.fit(
        datasets["train"],
        validation_data=datasets["validation"],
        epochs=cfg.training.epochs,
        initial_epoch=state.get("epoch", 0),
        callbacks=[keeper, keras.callbacks.TensorBoard(str(run_dir / "logs"))],
        verbose=1 if sys.stdout.isatty() else 2,
        shuffle=False,  # the tf.data pipeline shuffles (seeded)
    )
    if keeper.diverged_at is not None:
        raise TrainingDiverged(
            f"loss became NaN/Inf at step {keeper.diverged_at}; stopped without saving. "
            f"Best weights so far are kept in {run_dir / BEST_WEIGHTS}; lower "
            "training.learning_rate or set training.clip_norm, then run again to resume"
        )
    return keeper.state


def _finished(state: dict[str, Any], cfg: TrainingConfig) -> bool:
    if not state:
        return False
    return (
        state.get("stopped_early", False)
        or state["epoch"] >= cfg.epochs
        or bool(cfg.max_steps and state["step"] >= cfg.max_steps)
    )


def _bleu_fn(cfg: Config, src_tok, tgt_tok):
    """Greedy validation BLEU for model selection (None: select on validation loss)."""
    if cfg.training.early_stopping_metric != "bleu":
        return None
    import itertools

    from nmt import corpus, evaluation
    from nmt.translator import Translator

    limit = cfg.training.bleu_max_sentences or None
    pairs = list(itertools.islice(corpus.iter_pairs(cfg.data, "validation"), limit))
    srcs, refs = [s for s, _ in pairs], [t for _, t in pairs]

    translators: dict[int, Translator] = {}  # one per model, so the search compiles once

    def bleu(model: keras.Model) -> float:
        translator = translators.setdefault(id(model), Translator(cfg, model, src_tok, tgt_tok))
        hyps = translator.translate(srcs, beam_size=1)
        return evaluation.score(hyps, refs)["bleu"]

    return bleu
