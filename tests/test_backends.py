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

from .conftest import REPO

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


@pytest.mark.parametrize("backend", ["tensorflow", "jax", TORCH, "numpy"])
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


def test_a_sentence_argument_starts_on_numpy_without_tensorflow(tiny_run):
    """`nmt translate RUN "sentence"` with no KERAS_BACKEND decodes on Keras' numpy backend
    (the fastest start), never imports TensorFlow, and says what TensorFlow says."""
    sentence = "the big red dog sits on the street"
    probe = (
        "import sys; from nmt import cli; code = cli.main(sys.argv[1:]); import keras; "
        "print(keras.backend.backend(), sys.modules.get('tensorflow')); sys.exit(code)"
    )
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    args = ["translate", str(tiny_run), "--beam-size", "3", sentence]
    done = subprocess.run(
        [sys.executable, "-c", probe, *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    translation, backend = done.stdout.splitlines()
    assert backend == "numpy None"
    assert translation == Translator.from_run_dir(tiny_run).translate([sentence], beam_size=3)[0]
    assert translation  # the tiny run translates this sentence into something


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


BLOCK_TENSORFLOW = """
import sys
for name in ("tensorflow", "tensorflow_text", "tensorflow_datasets"):
    sys.modules[name] = None  # any import of them now raises ImportError
"""


def _entry_point(env, *args, stdin=None):
    """The real `nmt` command (python -m nmt.cli), as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "nmt.cli", *map(str, args)],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    return done.stdout.splitlines()


# Slow (~80 s): its parts run in the default suite (the CLI under JAX without TensorFlow,
# training under JAX, JAX-saved weights decoding alike everywhere); this is the whole path.
@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="exports in this process: needs TensorFlow"
)
def test_smoke_config_under_jax_without_tensorflow_then_exports(tmp_path, multi30k_dir):
    """The issue's user path: `nmt train configs/smoke.yaml`, `nmt translate` (argument,
    stdin, file) and `nmt evaluate` under KERAS_BACKEND=jax with TensorFlow unimportable;
    then TensorFlow translates the JAX-trained run the same and exports it."""
    import tensorflow as tf

    from nmt import cli

    (tmp_path / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(tmp_path)}
    run = tmp_path / "run"
    data = [f"data.{k}={multi30k_dir}/{v}" for k, v in [("train", "train"), ("validation", "val")]]
    _entry_point(
        env, "train", "configs/smoke.yaml", "--run-dir", run, *(f"--set={d}" for d in data)
    )
    sentence = "A man is riding a bike."
    assert len(_entry_point(env, "translate", run, "--beam-size", 2, sentence)) == 1
    lines = [sentence, "", "Two dogs play in the snow.", "   ", "A woman sings."]
    by_stdin = _entry_point(env, "translate", run, stdin="\n".join(lines) + "\n")
    source = tmp_path / "in.en"
    source.write_text("\n".join(lines) + "\n")
    _entry_point(env, "translate", run, "--input", source, "--output", tmp_path / "jax.de")
    under_jax = (tmp_path / "jax.de").read_text().splitlines()
    assert by_stdin == under_jax and len(under_jax) == 5
    assert under_jax[1] == under_jax[3] == "" and sum(map(bool, under_jax)) == 3
    refs = tmp_path / "refs.de"
    refs.write_text("\n".join(["Ein Mann fährt Fahrrad.", "", "Zwei Hunde.", "", "Frau."]) + "\n")
    report = _entry_point(env, "evaluate", run, "--src", source, "--ref", refs)
    assert report[0].startswith("BLEU ")
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


def test_default_backend_without_tensorflow_is_one_line(tmp_path, tiny_run):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["PYTHONPATH"] = str(tmp_path)
    # From stdin: a sentence argument would start on Keras' numpy backend instead.
    done = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "translate", str(tiny_run)],
        input="a dog\n",
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("nmt: error: Keras cannot load its tensorflow backend")
    assert "KERAS_BACKEND=jax|torch" in last


PRECISION_SCRIPT = (
    BLOCK_TENSORFLOW
    + """
import keras, numpy as np
from nmt import training
from nmt.config import ModelConfig, TrainingConfig
from nmt.model import build_model
# float32: every other test. Input feeding runs its own loop (keras' rnn, jax.lax.scan); each
# policy and each loop once (every pair would double a compile-bound test).
for policy, feed in [("mixed_float16", 1), ("mixed_bfloat16", 0)]:
    keras.mixed_precision.set_global_policy(policy)
    cfg = ModelConfig(embedding_dim=16, encoder_units=16, decoder_units=32, maxout_units=16,
                      attention="additive", attention_units=16, input_feeding=bool(feed))
    model = build_model(cfg, 40, 40)
    training.compile_model(model, TrainingConfig(precision=policy))
    rng = np.random.default_rng(0)
    src = rng.integers(4, 40, (8, 8)).astype("int32")
    tgt = rng.integers(4, 40, (8, 8)).astype("int32")
    losses = [model.train_on_batch((src, tgt), tgt, return_dict=True)["loss"] for _ in range(2)]
    assert all(np.isfinite(losses)), (policy, losses)
    assert keras.ops.convert_to_numpy(model((src, tgt))).dtype == np.float32, policy
    scaled = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled == (policy == "mixed_float16"), policy
    print(policy, feed, "ok")
"""
)


@pytest.mark.parametrize("backend", ["jax", TORCH])
def test_every_precision_policy_trains_on_every_backend(backend):
    done = _run(backend, ["-c", PRECISION_SCRIPT])
    expected = ["mixed_float16 1 ok", "mixed_bfloat16 0 ok"]
    assert done.stdout.splitlines() == expected, done.stderr[-3000:]
