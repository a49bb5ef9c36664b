"""Kept checkpoints, `nmt average` and `--weights best|last|averaged`."""

import json
import re
import shutil

import h5py
import keras
import numpy as np
import pytest

from nmt import cli, config, export, rundir, tokenizer
from nmt.model import build_model
from nmt.rundir import RunDir


@pytest.fixture
def run(tiny_run, tmp_path) -> RunDir:
    """A copy of the shared tiny run (4 epochs, the last 3 checkpoints kept) to write into."""
    shutil.copytree(tiny_run, tmp_path / "run")
    return RunDir(tmp_path / "run")


def _weights(run: RunDir, path) -> list[np.ndarray]:
    """The model weights in `path`, loaded into a model of the run's config."""
    cfg = config.load(run.config)
    src_tok, tgt_tok = tokenizer.load_tokenizers(run.tokenizer)
    model = build_model(cfg.model, src_tok.vocab_size, tgt_tok.vocab_size)
    rundir.load_weights(model, path)
    return [keras.ops.convert_to_numpy(w) for w in model.weights]


def _one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nmt: error: "), err
    return err[0]


def test_restart_keeps_exactly_the_kept_checkpoints(run):
    state = rundir.read_state(run)
    stale = [run.checkpoint / "ckpt-1.weights.h5", run.checkpoint / "tmp.ckpt-999.weights.h5"]
    for path in stale:  # an old checkpoint a kill left, and a half-written one
        path.write_bytes(b"old")
    rundir.reconcile(run)
    names = {p.name for p in run.checkpoint.iterdir()}
    assert names == {"state.json", *state["kept"], state["best_weights"]}
    assert len(state["kept"]) == 3


def test_average_writes_the_mean_of_the_last_n_without_optimizer_state(run, capsys):
    assert cli.main(["average", str(run.path), "--last", "2"]) == 0
    assert str(run.averaged_weights) in capsys.readouterr().out
    last_two = [run.checkpoint / name for name in rundir.read_state(run)["kept"][-2:]]
    first, second = (_weights(run, path) for path in last_two)
    averaged = _weights(run, run.averaged_weights)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    for a, b, mean in zip(first, second, averaged, strict=True):
        np.testing.assert_allclose(mean, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-7)
    with h5py.File(run.averaged_weights) as f:
        assert "optimizer" not in f  # the checkpoints hold it; the average does not
    assert not list(run.path.rglob("tmp.*"))
    assert cli.main(["translate", str(run.path), "--weights", "averaged", "a man runs"]) == 0
    assert capsys.readouterr().out.count("\n") == 1


def test_average_does_not_read_the_decoding_settings(run):
    run.decoding.write_text("{damaged")  # translate would stop on it; averaging needs none
    assert cli.main(["average", str(run.path), "--last", "2"]) == 0
    assert run.averaged_weights.is_file() and run.decoding.read_text() == "{damaged"


@pytest.mark.parametrize(
    "last, message",
    [
        ("0", "number of checkpoints to average must be at least 1, got 0"),
        ("4", "keeps 3 checkpoint.s., fewer than the 4 asked for; .*keep_checkpoints=4"),
    ],
)
def test_average_errors(last, message, tiny_run, capsys):
    err = _one_line_error(capsys, ["average", str(tiny_run), "--last", last])
    assert re.search(message, err), err
    assert not (tiny_run / rundir.AVERAGED_WEIGHTS).exists()


def test_average_of_a_missing_run_directory(tmp_path, capsys):
    err = _one_line_error(capsys, ["average", str(tmp_path / "nothing"), "--last", "2"])
    assert "run directory not found" in err


def test_weights_option_picks_the_file(run):
    state = rundir.read_state(run)
    assert rundir.trained_weights(run) == run.best_weights
    assert rundir.trained_weights(run, "last") == run.checkpoint / state["weights"]
    run.averaged_weights.write_bytes(b"")
    assert rundir.trained_weights(run, "averaged") == run.averaged_weights


@pytest.mark.parametrize(
    "argv", [["translate", "x"], ["evaluate", "--split", "validation"], ["export", "OUT"]]
)
def test_averaged_weights_missing_is_one_line(argv, tiny_run, tmp_path, capsys):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    err = _one_line_error(capsys, [argv[0], str(tiny_run), *argv[1:], "--weights", "averaged"])
    assert "has no averaged.weights.h5; make it with 'nmt average" in err


def test_export_uses_the_chosen_weights_and_tuned_decoding(run, tmp_path, monkeypatch):
    # The SavedModel itself is tested in test_export; here only what goes into it.
    monkeypatch.setattr(export, "_write", lambda *args: None)
    monkeypatch.setattr(export, "build_archive", lambda *args: None)
    tuned = {"best": {"beam_size": 2, "length_penalty": 0.9}}
    run.decoding.write_text(json.dumps(tuned))
    settings = export.export(run.path, tmp_path / "out", weights="last")
    assert settings["weights"] == "last"
    assert settings["decoding"]["beam_size"] == 2
    assert settings["decoding"]["length_penalty"] == 0.9
    settings = export.export(run.path, tmp_path / "out", beam_size=3)
    assert settings["decoding"]["beam_size"] == 3 and settings["decoding"]["length_penalty"] == 0.9
