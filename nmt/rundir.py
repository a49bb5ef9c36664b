"""The run directory: its file layout, atomic writes, weights and training-state I/O.

A run directory holds everything a run needs and makes:

    config.yaml                  the resolved config (with its format version)
    tokenizer/                   SentencePiece models and settings.json (how, and checksums)
    data_stats.json              filtered-pair counts per split, training batches per epoch
    checkpoint/state.json        the training state: the commit point of every checkpoint
    checkpoint/ckpt-STEP.weights.h5   the last checkpoints (weights + optimizer state): state.json
                                 lists the `training.keep_checkpoints` latest as "kept"
    checkpoint/best-STEP.weights.h5   the best weights so far
    best.weights.h5              a hard link to the best weights, for users and `nmt translate`
    averaged.weights.h5          the mean of the last kept checkpoints (`nmt average`)
    decoding.json                beam size and length penalty tuned on validation, with the grid
    decoding.ensemble.json       the same, tuned for this run in an ensemble with the runs it names
    metrics.jsonl                one JSON line per validation
    logs/                        TensorBoard
    .lock                        held by the process training this run

Crash consistency: files are written to a temporary name, fsync'd and renamed
(`metrics.jsonl` is appended and fsync'd; TensorBoard writes its own logs). A checkpoint
writes its weight files first, then `state.json` (the commit point), then publishes
`best.weights.h5` and deletes what `state.json` no longer names. `reconcile()`, run before
training resumes, finishes whatever a kill interrupted: it removes temporary and unnamed
files, cuts `metrics.jsonl` back to the lines `state.json` counts and re-publishes the best
weights. So whatever instant a kill lands, these files agree after the next start.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nmt.config import FORMAT_KEY, FORMAT_VERSION
from nmt.errors import RunDirError

CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
STATS_FILE = "data_stats.json"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
BEST_WEIGHTS = "best.weights.h5"
AVERAGED_WEIGHTS = "averaged.weights.h5"
DECODING_FILE = "decoding.json"
ENSEMBLE_DECODING_FILE = "decoding.ensemble.json"
# Which weights `nmt translate|evaluate|export|tune-decoding --weights` load.
WEIGHTS_CHOICES = ("best", "last", "averaged")
METRICS_FILE = "metrics.jsonl"
LOGS_DIR = "logs"
EVAL_DIR = "eval"
LOCK_FILE = ".lock"
# Temporary files are "tmp." + the final name (Keras wants the ".weights.h5" suffix kept).
TMP_PREFIX = "tmp."


class RunDir:
    """Paths of one run directory; the only place that knows its file names."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.tokenizer = self.path / TOKENIZER_DIR
        self.stats = self.path / STATS_FILE
        self.checkpoint = self.path / CHECKPOINT_DIR
        self.state = self.checkpoint / STATE_FILE
        self.best_weights = self.path / BEST_WEIGHTS
        self.averaged_weights = self.path / AVERAGED_WEIGHTS
        self.decoding = self.path / DECODING_FILE
        self.ensemble_decoding = self.path / ENSEMBLE_DECODING_FILE
        self.metrics = self.path / METRICS_FILE
        self.logs = self.path / LOGS_DIR
        self.eval = self.path / EVAL_DIR

    def __str__(self) -> str:
        return str(self.path)


# --------------------------------------------------------------------------- atomic writes


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Writes `data` to `path` so that a crash leaves the old file or the new one, whole."""
    path = Path(path)
    tmp = path.with_name(TMP_PREFIX + path.name)
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    _replace_durably(tmp, path)


def _replace_durably(tmp: Path, path: Path) -> None:
    """Flushes `tmp` to disk, renames it to `path` and makes the rename durable."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Makes a rename in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_weights(model, path: Path) -> None:
    """`model.save_weights` (with optimizer state), atomically."""
    tmp = path.with_name(TMP_PREFIX + path.name)
    model.save_weights(tmp)
    _replace_durably(tmp, path)


def load_weights(model, path: Path) -> None:
    """Loads weights (h5: no pickle), turning a bad file into a one-line RunDirError."""
    if not path.is_file():
        raise RunDirError(f"weights file not found: {path}")
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise RunDirError(
            f"cannot load {path}: {reason} (a truncated or corrupt file, or weights that do "
            "not match the run's config.yaml and tokenizer)"
        ) from None


# --------------------------------------------------------------------------- training state


def read_state(run: RunDir) -> dict[str, Any]:
    """The committed training state, or {} before the first checkpoint."""
    if not run.state.is_file():
        return {}
    try:
        state = json.loads(run.state.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RunDirError(f"cannot read {run.state}: {exc}") from None
    expected = {"epoch": int, "batches": int, "step": int, "weights": str, "rng": list}
    if not isinstance(state, dict) or not all(
        isinstance(state.get(k), t) for k, t in expected.items()
    ):
        if isinstance(state, dict) and FORMAT_KEY not in state:
            raise RunDirError(
                f"{run.state} was written by an older nmt, which cannot resume exactly; "
                "train in a new --run-dir (its best weights still translate)"
            )
        raise RunDirError(f"{run.state} is not an nmt training state (damaged?)")
    if state[FORMAT_KEY] > FORMAT_VERSION:
        raise RunDirError(
            f"{run.state} was written by a newer nmt ({FORMAT_KEY} {state[FORMAT_KEY]}); "
            "upgrade nmt to resume it"
        )
    return state


def commit_state(run: RunDir, state: dict[str, Any]) -> None:
    """Writes `state.json` (the commit point), then makes the other files agree with it."""
    atomic_write(run.state, json.dumps(state, indent=1))
    publish_best(run, state)
    remove_unnamed(run, state)


def publish_best(run: RunDir, state: dict[str, Any]) -> None:
    """Points `best.weights.h5` at the best weights that `state` names."""
    name = state.get("best_weights")
    if not name:
        return
    source = run.checkpoint / name
    if not source.is_file():
        raise RunDirError(
            f"{source}, the best weights {run.state} names, is missing; restore it or train "
            "in a new --run-dir"
        )
    if run.best_weights.exists() and os.path.samefile(source, run.best_weights):
        return
    link(source, run.best_weights)


def link(source: Path, dest: Path) -> None:
    """Makes `dest` a hard link to `source` (a copy where links are not supported), atomically."""
    tmp = dest.with_name(TMP_PREFIX + dest.name)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)  # no second copy of the weights on disk
    except OSError:
        shutil.copyfile(source, tmp)
    _replace_durably(tmp, dest)


def kept_checkpoints(state: dict[str, Any]) -> list[str]:
    """File names of the checkpoints `state` keeps, oldest first ([] before the first)."""
    if not state:
        return []
    # A state.json from before `training.keep_checkpoints` names only the last one.
    return state.get("kept") or [state["weights"]]


def remove_unnamed(run: RunDir, state: dict[str, Any]) -> None:
    """Deletes weight files and temporaries of checkpoints that `state` no longer names."""
    keep = {STATE_FILE, state.get("weights"), state.get("best_weights"), *kept_checkpoints(state)}
    for path in run.checkpoint.glob("*"):
        if path.name not in keep and path.is_file():
            path.unlink(missing_ok=True)
    remove_temporaries(run)


def remove_temporaries(run: RunDir) -> None:
    """Deletes what a killed write left behind, in every folder nmt writes to."""
    for folder in (run.path, run.checkpoint, run.tokenizer, run.eval):
        for path in folder.glob(TMP_PREFIX + "*"):
            if path.is_file():
                path.unlink(missing_ok=True)


def reconcile(run: RunDir) -> dict[str, Any]:
    """Makes the run directory agree with its committed state after a crash.

    Returns:
        The committed state ({} when training never checkpointed).
    """
    state = read_state(run)
    remove_unnamed(run, state)  # temporaries everywhere, then what the state does not name
    if not state:  # killed before the first checkpoint: training starts from scratch
        run.metrics.unlink(missing_ok=True)
        return state
    publish_best(run, state)
    lines = state.get("metrics_lines")
    if lines is not None and run.metrics.is_file():
        kept = run.metrics.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
        atomic_write(run.metrics, "".join(kept))
    return state


class Lock:
    """An exclusive lock on a run directory for one training process (released on exit,
    however the process ends: the kernel drops it with the file descriptor)."""

    def __init__(self, run: RunDir):
        self.run = run

    def __enter__(self) -> Lock:
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.run.path / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise RunDirError(
                f"{self.run} is being trained by another process; wait for it or stop it"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def trained_weights(run: RunDir, which: str = "best") -> Path:
    """The weights to translate with.

    Args:
        which: "best" (the best weights, else the last checkpoint), "last" (the last
            checkpoint) or "averaged" (what `nmt average` wrote).

    Raises:
        RunDirError: the run has no such weights yet.
    """
    if which == "averaged":
        if not run.averaged_weights.is_file():
            raise RunDirError(
                f"{run} has no {AVERAGED_WEIGHTS}; make it with 'nmt average {run} --last N'"
            )
        return run.averaged_weights
    if which == "best" and run.best_weights.is_file():
        return run.best_weights
    state = read_state(run)
    if state and (run.checkpoint / state["weights"]).is_file():
        return run.checkpoint / state["weights"]
    raise RunDirError(
        f"{run} has no trained model (no {BEST_WEIGHTS}); train it first with 'nmt train'"
    )


def last_checkpoints(run: RunDir, n: int) -> list[Path]:
    """The last `n` checkpoints the run keeps, oldest first.

    Raises:
        RunDirError: `n` < 1, or the run keeps fewer than `n` checkpoints.
    """
    if n < 1:
        raise RunDirError(f"the number of checkpoints to average must be at least 1, got {n}")
    kept = kept_checkpoints(read_state(run))
    if n > len(kept):
        raise RunDirError(
            f"{run} keeps {len(kept)} checkpoint(s), fewer than the {n} asked for; train with "
            f"--set training.keep_checkpoints={n} (or more) to keep them"
        )
    return [run.checkpoint / name for name in kept[-n:]]


def decoding_file(run: RunDir, ensemble: Sequence[str | Path] = ()) -> Path:
    """Where `nmt tune-decoding` stores the settings tuned for `run` alone, or for `run` as the
    first of an ensemble with the `ensemble` runs."""
    return run.ensemble_decoding if ensemble else run.decoding


def ensemble_members(run: RunDir, ensemble: Sequence[str | Path]) -> list[str]:
    """How `decoding.ensemble.json` names the other members: relative to the run, so that a
    tree of runs may move, and sorted, as the mean of their probabilities has no order."""
    base = run.path.resolve()
    return sorted(os.path.relpath(Path(path).resolve(), base) for path in ensemble)


def read_decoding(run: RunDir, ensemble: Sequence[str | Path] = ()) -> dict[str, Any]:
    """The beam size and length penalty `nmt tune-decoding` stored for `run` alone, or with
    `ensemble` for `run` together with exactly those runs, and the `weights` ("best", "last",
    "averaged"; None in files older than the key) it tuned them with; {} when it never did.

    Raises:
        RunDirError: the file is unreadable or does not hold valid settings.
    """
    path = decoding_file(run, ensemble)
    if not ensemble:
        return _checked_settings(_load_json(path), path) if path.is_file() else {}
    members = ensemble_members(run, ensemble)
    tuned = [e for e in _ensemble_entries(path) if e["ensemble_with"] == members]
    return _checked_settings(tuned[0], path) if tuned else {}


def write_decoding(run: RunDir, tuned: dict[str, Any], ensemble: Sequence[str | Path] = ()) -> Path:
    """Stores what `nmt tune-decoding` found, {"best": {"beam_size", "length_penalty"}, ...};
    returns the file written. An ensemble's joins (or replaces, for the same members) the
    ensembles tuned before: {"ensembles": [{"ensemble_with": [member, ...], "best": ...}]}."""
    path = decoding_file(run, ensemble)
    if ensemble:
        members = ensemble_members(run, ensemble)
        kept = [e for e in _ensemble_entries(path) if e["ensemble_with"] != members]
        tuned = {"ensembles": [*kept, {"ensemble_with": members, **tuned}]}
    atomic_write(path, json.dumps(tuned, indent=2) + "\n")
    return path


def _ensemble_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of a `decoding.ensemble.json` (none if it does not exist), all checked."""
    if not path.is_file():
        return []
    stored = _load_json(path)
    entries = stored.get("ensembles") if isinstance(stored, dict) else None
    if not isinstance(entries, list):
        raise _damaged(path)
    for entry in entries:
        _checked_settings(entry, path)
        if not isinstance(entry.get("ensemble_with"), list):
            raise _damaged(path)
    return entries


def _checked_settings(tuned: Any, path: Path) -> dict[str, Any]:
    """{"beam_size", "length_penalty"} of a stored tuning's "best" cell, and its "weights"."""
    try:
        beam, alpha = tuned["best"]["beam_size"], tuned["best"]["length_penalty"]
    except (KeyError, TypeError):
        raise _damaged(path) from None
    valid = type(beam) is int and beam >= 1 and type(alpha) in (int, float)
    if not (valid and math.isfinite(alpha) and alpha >= 0):
        raise _damaged(path)
    weights = tuned.get("weights")  # any name: a later kind of weights need not break this
    if weights is not None and not isinstance(weights, str):
        raise _damaged(path)
    return {"beam_size": beam, "length_penalty": float(alpha), "weights": weights}


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        raise _damaged(path) from None


def _damaged(path: Path) -> RunDirError:
    return RunDirError(
        f"{path} does not hold a beam size and length penalty (damaged?); "
        "delete it, then run 'nmt tune-decoding' again to tune anew"
    )
