"""The checkpoint keeper: what training leaves in the run directory, and how it resumes.

A checkpoint records the exact position of training: the epoch, how many of its batches
were consumed, the optimizer step, weights with optimizer state, and the dropout RNG state.
Together with the pipeline's per-epoch shuffle order (`pipeline.make_batches(epoch=...)`),
that lets a killed run continue with the very batches and random numbers an uninterrupted
run would have used. See `nmt.rundir` for how the files stay consistent across a kill.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from nmt import distribution, rundir
from nmt.config import FORMAT_KEY, FORMAT_VERSION, TrainingConfig
from nmt.errors import RunDirError
from nmt.rundir import RunDir

log = logging.getLogger("nmt")

# Scores a model on the validation split (higher is better), e.g. greedy BLEU.
ValidationScore = Callable[[keras.Model], float]


def rng_variables(model: keras.Model) -> list:
    """The model's dropout seed states: variables that are not weights (nor optimizer
    or metric state), which `save_weights` leaves out."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def restore(model: keras.Model, run: RunDir, state: dict[str, Any]) -> None:
    """Loads the checkpoint `state` names: weights, optimizer state and RNG state.

    Builds the optimizer even without a checkpoint: TensorFlow without a tf.distribute
    strategy would leave that to the first training step, and a traced function that
    creates variables is traced twice (docs/benchmarks.md, "Start-up")."""
    if not model.optimizer.built:  # a LossScaleOptimizer would add a second scale and counter
        model.optimizer.build(model.trainable_variables)
    if not state:
        return
    rundir.load_weights(model, run.checkpoint / state["weights"])
    # By position, not by name: Keras numbers seed generators per process.
    saved, variables = state.get("rng", []), rng_variables(model)
    if len(saved) != len(variables):
        raise RunDirError(
            f"{run.state} holds {len(saved)} random-generator states but the model has "
            f"{len(variables)}; the checkpoint does not belong to this model"
        )
    for v, value in zip(variables, saved, strict=True):
        v.assign(np.asarray(value, dtype=v.dtype))


class RunKeeper(keras.callbacks.Callback):
    """Checkpoints, metrics.jsonl, best weights, early stopping, the NaN guard and max_steps.

    The training loop calls `start_epoch` before each epoch's `fit`; `stop_reason` tells it
    why training stopped ("diverged", "max_steps", "early_stopping"), None otherwise.
    """

    def __init__(
        self,
        run: RunDir,
        cfg: TrainingConfig,
        state: dict[str, Any],
        validation_score: ValidationScore | None = None,
        writes: bool = True,
    ):
        super().__init__()
        self.run, self.cfg, self.validation_score = run, cfg, validation_score
        # Only the chief of several workers writes; the others keep the same state in memory.
        self.writes = writes
        self.state = {"metrics_lines": 0, **state, "metric": cfg.early_stopping_metric}
        self.stop_reason: str | None = None
        self.epoch = self.state.get("epoch", 0)
        self.batches = self.batches_before = self.state.get("batches", 0)
        self.step = self.steps_before = self.last_checkpoint = self.state.get("step", 0)
        self.seen = None  # the values of self.counters after the last batch Keras reported

    def on_train_begin(self, logs=None):
        # The optimizer's iteration count and the dropout seed states (see on_epoch_end).
        self.counters = [self.model.optimizer.iterations, *rng_variables(self.model)]
        # Reading them after every batch is cheap under TensorFlow; under JAX it would sync
        # the whole model state every step, and its trainer takes no phantom step.
        self.undo_phantom_step = keras.backend.backend() == "tensorflow"

    def start_epoch(self, epoch: int, skipped_batches: int) -> None:
        self.epoch, self.batches_before, self.batches = epoch, skipped_batches, skipped_batches
        self.steps_before, self.seen = self.step, None

    def on_train_batch_end(self, batch, logs=None):
        # Steps count the batches trained on, not optimizer.iterations (which skips the
        # steps loss scaling drops under mixed_float16).
        self.batches = self.batches_before + batch + 1
        self.step = self.steps_before + batch + 1
        if self.undo_phantom_step:
            self.seen = [keras.ops.convert_to_numpy(v) for v in self.counters]
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self._stop("diverged")
        elif self.cfg.max_steps and self.step >= self.cfg.max_steps:
            self._stop("max_steps")  # on_epoch_end validates, then checkpoints
        # ">=" rather than "%": with steps_per_execution > 1 Keras reports every few steps.
        elif (
            self.cfg.checkpoint_every
            and self.step - self.last_checkpoint >= self.cfg.checkpoint_every
        ):
            self.save_checkpoint()

    def close_epoch(self, epoch: int) -> None:
        """Marks `epoch` done when a resumed run finds no batches left in it (its last
        validation was recorded when it stopped there)."""
        self.epoch, self.batches = epoch + 1, 0
        self.state.update(epoch=self.epoch, batches=0)
        if self.writes:
            rundir.commit_state(self.run, self.state)

    def on_epoch_end(self, epoch, logs=None):
        # Keras' TensorFlow trainer finds the end of a dataset of unknown length with one
        # more step call that updates nothing but still advances the iteration counter and
        # the dropout seeds. Adam's bias correction, the learning-rate schedule and dropout
        # read them, so a run resumed at an epoch's end would differ from one that ran
        # through it: undo that phantom step.
        if self.seen is not None:
            for v, value in zip(self.counters, self.seen, strict=True):
                v.assign(value)
        if self.stop_reason == "diverged" or not self._weights_finite():
            return  # never checkpoint or keep weights from a diverged model
        # Stopped by max_steps: Keras validated anyway; record it as the partial epoch it is
        # and keep the position, so a higher max_steps later continues inside this epoch.
        partial = self.stop_reason == "max_steps"
        record = self._record(epoch, dict(logs or {}), partial)
        improved = self._update_best(record)
        record["best"] = self.state["best"]
        self._append_metrics(record)
        if not partial:
            self.epoch, self.batches = epoch + 1, 0
        if self.cfg.patience and self.state["bad_validations"] >= self.cfg.patience:
            log.info("early stopping: no improvement in %d validations", self.cfg.patience)
            self.state["stopped_early"] = True
            self._stop("early_stopping")
        self._write_checkpoint(best=improved)  # weights checked finite above

    def _stop(self, reason: str) -> None:
        self.stop_reason = reason
        self.model.stop_training = True

    def _record(self, epoch: int, logs: dict[str, Any], partial: bool) -> dict[str, Any]:
        record = {"epoch": epoch + 1, "step": self.step, "time": round(time.time(), 1)}
        if partial:
            record.update(partial=True, batches=self.batches)
        record.update({k: float(v) for k, v in logs.items()})
        if "val_nll" in record:
            record["val_ppl"] = float(np.exp(min(record["val_nll"], 50.0)))
        if self.validation_score is not None:
            record["val_bleu"] = float(self.validation_score(self.model))
        return record

    def _update_best(self, record: dict[str, Any]) -> bool:
        """Updates best score and patience count; True when this validation is the best."""
        if self.cfg.early_stopping_metric == "bleu" and "val_bleu" in record:
            score, higher_is_better = record["val_bleu"], True
        else:
            score, higher_is_better = record.get("val_nll", math.nan), False
        best = self.state.get("best")
        improved = math.isfinite(score) and (
            best is None or (score > best if higher_is_better else score < best)
        )
        if improved:
            self.state.update(best=score, bad_validations=0)
        else:
            self.state["best"] = best
            self.state["bad_validations"] = self.state.get("bad_validations", 0) + 1
        return improved

    def _append_metrics(self, record: dict[str, Any]) -> None:
        """Appends one line; `state.json` counts the committed lines (see rundir.reconcile)."""
        self.state["metrics_lines"] += 1
        if not self.writes:
            return
        with open(self.run.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _weights_finite(self) -> bool:
        if all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in self.model.weights):
            return True
        # The loss of the last step was finite but its update was not: keep the old checkpoint.
        log.warning("step %d: weights are not finite; checkpoint not written", self.step)
        return False

    def save_checkpoint(self) -> None:
        """A mid-epoch checkpoint, unless the weights have gone non-finite."""
        if self._weights_finite():
            self._write_checkpoint()

    def _write_checkpoint(self, best: bool = False) -> None:
        """Writes weights (and, when `best`, links them as the best), then commits state.json."""
        name, best_name = f"ckpt-{self.step}.weights.h5", f"best-{self.step}.weights.h5"
        if self.writes:
            self.run.checkpoint.mkdir(exist_ok=True)
            with distribution.local_variables():
                rundir.save_weights(self.model, self.run.checkpoint / name)
            if best:
                rundir.link(self.run.checkpoint / name, self.run.checkpoint / best_name)
        if best:
            self.state["best_weights"] = best_name
        # The newest `keep_checkpoints` (for `nmt average`); commit_state deletes the rest.
        kept = [n for n in self.state.get("kept", []) if n != name] + [name]
        self.state["kept"] = kept[-self.cfg.keep_checkpoints :]
        self.state.update(
            {FORMAT_KEY: FORMAT_VERSION},
            epoch=self.epoch,
            batches=self.batches,
            step=self.step,
            weights=name,
            rng=[keras.ops.convert_to_numpy(v).tolist() for v in rng_variables(self.model)],
        )
        if self.writes:
            rundir.commit_state(self.run, self.state)
        self.last_checkpoint = self.step


class EpochProgress(keras.callbacks.ProgbarLogger):
    """Keras' progress bar, told the run's epoch count: training calls `fit` once per epoch."""

    def __init__(self, epochs: int):
        super().__init__()
        self.total_epochs = epochs

    def set_params(self, params):
        super().set_params({**params, "epochs": self.total_epochs})
