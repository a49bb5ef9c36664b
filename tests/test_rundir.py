"""Broken run directories: every kind of damage is a one-line error of its own, no traceback."""

import json
import shutil
import subprocess
import sys

import pytest

from nmt import cli, rundir
from nmt.tokenizer import train_tokenizers

from .conftest import REPO


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _replace_weights(run, data):
    # best.weights.h5 is a hard link into checkpoint/: write a new file, not into the link.
    run.best_weights.unlink()
    run.best_weights.write_bytes(data)


def _other_sentencepiece_model(run):
    """A valid model of the same size, trained on other text (here: the same text reversed)."""
    from nmt import config

    other = run.path.parent / "other_tokenizer"
    corpus = run.path.parent / "corpus"
    src = [line[::-1] for line in (corpus / "train.en").read_text().splitlines()]
    tgt = [line[::-1] for line in (corpus / "train.de").read_text().splitlines()]
    train_tokenizers(src, tgt, config.TokenizerConfig(vocab_size=48), other)
    shutil.copy(other / "joint.model", run.tokenizer / "joint.model")


def _newer_config(run):
    text = run.config.read_text().replace("format_version: 1", "format_version: 99")
    run.config.write_text(text)


def _no_weights(run):
    shutil.rmtree(run.checkpoint)
    run.best_weights.unlink()


BREAKAGES = {
    "truncated weights": (
        lambda run: _replace_weights(run, run.best_weights.read_bytes()[:5000]),
        "best.weights.h5: .* truncated or corrupt file",
    ),
    "corrupt weights": (
        lambda run: _replace_weights(run, b"\x89HDF\r\n\x1a\n" + b"\x00" * 4000),
        "cannot load .*best.weights.h5",
    ),
    "missing SentencePiece model": (
        lambda run: [p.unlink() for p in run.tokenizer.glob("*.model")],
        "no SentencePiece models in .*tokenizer",
    ),
    "another SentencePiece model": (
        _other_sentencepiece_model,
        "is not the SentencePiece model this run was trained with",
    ),
    "config of a newer nmt": (_newer_config, "written by a newer nmt .format_version 99"),
    "no trained weights yet": (_no_weights, "has no trained model .no best.weights.h5."),
    "not a run directory": (lambda run: run.config.unlink(), "is not a run directory"),
    "corrupt training state": (
        lambda run: (run.best_weights.unlink(), run.state.write_text("{not json")),
        "cannot read .*state.json",
    ),
}


@pytest.mark.parametrize("damage", list(BREAKAGES))
def test_a_broken_run_directory_is_one_clear_line(damage, tiny_run, tiny_corpus, tmp_path, capsys):
    shutil.copytree(tiny_corpus, tmp_path / "corpus")
    run = rundir.RunDir(tmp_path / "run")
    shutil.copytree(tiny_run, run.path)
    breaks, message = BREAKAGES[damage]
    breaks(run)
    assert cli.main(["translate", str(run), "a dog"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nmt: error: "), err
    assert __import__("re").search(message, err[0]), err[0]


def test_broken_weights_through_the_real_command(tiny_run, tmp_path):
    run = rundir.RunDir(tmp_path / "run")
    shutil.copytree(tiny_run, run.path)
    _truncate(run.checkpoint / json.loads(run.state.read_text())["weights"])
    run.best_weights.unlink()
    result = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "translate", str(run), "a dog"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("nmt: error: cannot load")


def test_resume_cleans_up_leftover_temporary_files(tiny_run, tmp_path):
    run = rundir.RunDir(tmp_path / "run")
    shutil.copytree(tiny_run, run.path)
    leftovers = [
        run.path / "tmp.best.weights.h5",
        run.checkpoint / "tmp.ckpt-99.weights.h5",
        run.checkpoint / "ckpt-99.weights.h5",  # written, but its state.json never was
        run.path / "tmp.metrics.jsonl",
    ]
    for path in leftovers:
        path.write_bytes(b"partial")
    with open(run.metrics, "a") as f:
        f.write('{"epoch": 3, "step": 99, "val')  # a line cut off by the kill
    state = rundir.reconcile(run)
    assert not any(p.exists() for p in leftovers)
    assert len(run.metrics.read_text().splitlines()) == state["metrics_lines"] == 4
    assert run.best_weights.samefile(run.checkpoint / state["best_weights"])
