"""Every Keras backend decodes alike: weights saved under one backend load under the others
and give the same logits and searches, and translating needs no TensorFlow under JAX or
PyTorch. Each backend runs in a subprocess (Keras picks its backend once per process);
there TensorFlow is made unimportable unless it is the backend."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from nmt.translator import Translator, _pad_for_jit

from .conftest import REPO, tiny_config

TORCH_MISSING = 'PyTorch is not installed (pip install "nmt[torch]"): its backend is not checked'
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason=TORCH_MISSING)
TORCH = pytest.param("torch", marks=needs_torch)

# Runs `nmt` commands given as a JSON list of argument lists, in one interpreter.
CLI_SCRIPT = """
import json, os, sys
if os.environ["NMT_BLOCK_TENSORFLOW"] == "1":
    sys.modules["tensorflow"] = None  # any import of TensorFlow now raises ImportError
from nmt import cli
for argv in json.loads(sys.argv[1]):
    if cli.main(argv):
        sys.exit(f"nmt {argv[0]} failed")
"""


def _run(backend: str, args: list[str]) -> subprocess.CompletedProcess:
    """`python ARGS` under KERAS_BACKEND=backend, TensorFlow blocked unless it is the backend."""
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "NMT_BLOCK_TENSORFLOW": "0" if backend == "tensorflow" else "1",
    }
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _nmt(backend: str, *commands: list[str]) -> subprocess.CompletedProcess:
    return _run(backend, ["-c", CLI_SCRIPT, json.dumps([[str(a) for a in c] for c in commands])])


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Ids exactly; floats within float32 round-off (-inf where the other has -inf)."""
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=what)


@pytest.fixture(scope="module")
def saved_under_jax(tmp_path_factory) -> Path:
    """Weights saved by a JAX process, and that process's own results from them."""
    work = tmp_path_factory.mktemp("weights")
    _run("jax", ["-m", "tests.backend_probe", "save,load", str(work)])
    return work


@pytest.mark.parametrize("backend", ["tensorflow", "jax", TORCH])
def test_weights_travel_and_decode_the_same(saved_under_jax, backend):
    if backend != "jax":
        _run(backend, ["-m", "tests.backend_probe", "load", str(saved_under_jax)])
    want = np.load(saved_under_jax / "out-jax.npz")
    got = np.load(saved_under_jax / f"out-{backend}.npz")
    assert set(got.files) == set(want.files)
    for key in want.files:
        assert_same(got[key], want[key], f"{key}: {backend} vs jax")
    # A cached compiled search sees weights assigned after it was compiled.
    for key in ("greedy_ids", "greedy_scores", "beam_ids", "beam_scores"):
        assert_same(got[f"changed_{key}"], got[f"fresh_{key}"], f"{key} after new weights")
    assert not np.array_equal(got["changed_beam_scores"], got["beam_scores"])
    assert (got["greedy_ids"] > 0).sum() > 10  # the searches did emit tokens


@pytest.mark.parametrize("backend", ["jax", TORCH])
def test_translate_and_evaluate_without_tensorflow(backend, tiny_run, tiny_corpus, tmp_path):
    """A run trained under this process's backend (TensorFlow by default) translates the
    same under `backend`, through the CLI, with TensorFlow unimportable."""
    lines = ["a man runs", "", "the big red dog sits on the street", "a cat", "red"]
    source = tmp_path / "in.en"
    source.write_text("\n".join(lines) + "\n")
    val_src, val_ref = tiny_corpus / "val.en", tiny_corpus / "val.de"
    _nmt(
        backend,
        [
            "translate",
            tiny_run,
            "--input",
            source,
            "--output",
            tmp_path / "out.de",
            "--beam-size",
            2,
        ],
        ["evaluate", tiny_run, "--src", val_src, "--ref", val_ref, "--output-dir", tmp_path],
    )
    translator = Translator.from_run_dir(tiny_run)
    assert (tmp_path / "out.de").read_text().splitlines() == translator.translate(
        lines, beam_size=2
    )
    val = val_src.read_text().splitlines()
    assert (tmp_path / "val.en.hyp").read_text().splitlines() == translator.translate(val)


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="exports in this process: needs TensorFlow"
)
def test_jax_trained_run_exports_and_translates_the_same(tiny_corpus, tmp_path):
    """`nmt train` and `nmt translate` under JAX without TensorFlow; then, under TensorFlow,
    the Translator and the exported SavedModel give the JAX translations."""
    import tensorflow as tf

    from nmt import cli

    config = tmp_path / "tiny.yaml"
    settings = ("model.attention=additive", "training.learning_rate=0.01", "training.epochs=4")
    config.write_text(tiny_config(tiny_corpus, *settings).to_yaml())
    lines = ["a man runs", "", "the small dog sits on the blue house", "cat"]
    source = tmp_path / "in.en"
    source.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    _nmt(
        "jax",
        ["train", config, "--run-dir", run],
        ["translate", run, "--input", source, "--output", tmp_path / "jax.de"],
    )
    under_jax = (tmp_path / "jax.de").read_text().splitlines()
    assert sum(map(bool, under_jax)) >= 2  # not a comparison of empty strings
    assert Translator.from_run_dir(run).translate(lines) == under_jax
    assert cli.main(["export", str(run), str(tmp_path / "export")]) == 0
    serve = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    exported = serve(sentences=tf.constant(lines))["translations"].numpy()
    assert [t.decode("utf-8") for t in exported] == under_jax


def test_jit_padding_bounds_the_compiled_shapes():
    src = np.array([[5, 6, 3, 0], [7, 3, 0, 0], [4, 4, 4, 3]], np.int32)
    src_len = np.array([3, 2, 4], np.int32)
    padded, lengths = _pad_for_jit(src, src_len, width=8, batch_size=64)
    assert padded.shape == (4, 8) and lengths.tolist() == [3, 2, 4, 3]
    np.testing.assert_array_equal(padded[:3, :4], src)
    assert (padded[:3, 4:] == 0).all()
    np.testing.assert_array_equal(padded[3], padded[0])  # finishes with row 0
    rows = {
        len(_pad_for_jit(src[:1].repeat(n, 0), src_len[:1].repeat(n), 8, 48)[1])
        for n in range(1, 49)
    }
    assert rows == {1, 2, 4, 8, 16, 32, 48}  # never more rows than a full batch
