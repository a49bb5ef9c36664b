"""Checkpoint averaging: the mean of the last kept checkpoints' weights, one model to translate.

Averaging the parameters of the last few checkpoints of one run smooths the noise of the
final updates and usually gains some BLEU at no decoding cost (Vaswani et al. 2017 average
the last 5 or 20). Training keeps the checkpoints (`training.keep_checkpoints`); `nmt average`
writes `RUN_DIR/averaged.weights.h5`, which `--weights averaged` loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np

from nmt import rundir


def average_weights(model: keras.Model, paths: Sequence[Path]) -> None:
    """Sets `model`'s weights to the mean of those saved in `paths` (optimizer state is not
    averaged: a model without an optimizer does not load it).

    Raises:
        RunDirError: a file is missing, corrupt or of another model.
    """
    total = None
    for path in paths:
        rundir.load_weights(model, path)
        # float64 sums: no rounding that depends on the order of the files.
        values = [keras.ops.convert_to_numpy(w).astype(np.float64) for w in model.weights]
        total = values if total is None else [t + v for t, v in zip(total, values, strict=True)]
    model.set_weights(
        [(t / len(paths)).astype(w.dtype) for t, w in zip(total, model.weights, strict=True)]
    )


def average_checkpoints(run_dir: str | Path, last: int) -> Path:
    """Writes the average of the run's last `last` kept checkpoints to its averaged weights.

    Returns:
        The path written (`RUN_DIR/averaged.weights.h5`, replaced atomically).

    Raises:
        RunDirError: no such run, `last` < 1, or fewer kept checkpoints than `last`.
    """
    from nmt.translator import load_run_model

    run = rundir.RunDir(run_dir)
    model = load_run_model(run.path, weights="last")  # checks the run
    average_weights(model, rundir.last_checkpoints(run, last))
    rundir.save_weights(model, run.averaged_weights)
    return run.averaged_weights
