import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from nmt import cli, training
from nmt.model import build_model

from .conftest import REPO, tiny_config


def test_run_directory_is_self_contained(tiny_run):
    for name in [
        "config.yaml",
        "data_stats.json",
        "best.weights.h5",
        "metrics.jsonl",
        "checkpoint/state.json",
        "logs",
    ]:
        assert (tiny_run / name).exists(), name
    assert list((tiny_run / "tokenizer").glob("*.model"))
    state = json.loads((tiny_run / "checkpoint" / "state.json").read_text())
    # Exactly the weights state.json names: older checkpoints are deleted once replaced.
    assert [p.name for p in (tiny_run / "checkpoint").glob("*.h5")] == [state["weights"]]
    assert state["weights"] == f"ckpt-{state['step']}.weights.h5"
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert {"step", "loss", "val_loss", "val_nll", "val_ppl", "best"} <= set(records[0])


def _write_config(tmp_path, cfg):
    path = tmp_path / "cfg.yaml"
    cfg.save(path)
    return path


def _hash(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _wait_for_step(state_file, min_step, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if state_file.exists():
            step = json.loads(state_file.read_text())["step"]
            if step >= min_step:
                return step
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    raise AssertionError("training made no checkpoint in time")


def test_resume_after_kill_9_keeps_step_count_and_optimizer_state(tmp_path, tiny_corpus):
    cfg = tiny_config(
        tiny_corpus, "training.checkpoint_every=4", "training.epochs=50", "training.max_steps=60"
    )
    config_path = _write_config(tmp_path, cfg)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "nmt.cli", "train", str(config_path), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_step(run_dir / "checkpoint" / "state.json", 8, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert 8 <= state["step"] < 60

    model = build_model(cfg.model, 48, 48)
    training.compile_model(model, cfg.training)
    restored = training.load_checkpoint(model, run_dir)
    assert int(model.optimizer.iterations) == restored["step"] == state["step"]
    moments = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert moments and any(float(np.abs(keras.ops.convert_to_numpy(v)).max()) > 0 for v in moments)

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoint'}" in done.stderr
    assert f"step {state['step']}" in done.stderr
    final = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert final["step"] == 60


def test_nan_loss_stops_without_touching_best_weights(tmp_path, tiny_corpus):
    run_dir = tmp_path / "run"
    training.train(tiny_config(tiny_corpus, "training.epochs=1"), run_dir)
    best = _hash(run_dir / "best.weights.h5")
    state = (run_dir / "checkpoint" / "state.json").read_text()
    ckpt = _hash(run_dir / "checkpoint" / json.loads(state)["weights"])
    # An absurd learning rate without clipping drives the weights, then the loss, to Inf/NaN.
    diverging = tiny_config(
        tiny_corpus,
        "training.epochs=3",
        "training.learning_rate=1e30",
        "training.clip_norm=0",
        "training.label_smoothing=0",
    )
    with pytest.raises(training.TrainingDiverged, match="NaN/Inf at step"):
        training.train(diverging, run_dir)
    assert _hash(run_dir / "best.weights.h5") == best
    assert (run_dir / "checkpoint" / "state.json").read_text() == state
    assert _hash(run_dir / "checkpoint" / json.loads(state)["weights"]) == ckpt


@pytest.mark.parametrize("policy", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_one_training_step_under_each_precision_policy(policy, tiny_corpus):
    cfg = tiny_config(tiny_corpus, f"training.precision={policy}")
    keras.mixed_precision.set_global_policy(training.resolve_precision(cfg.training.precision))
    try:
        model = build_model(cfg.model, 40, 40)
        training.compile_model(model, cfg.training)
        rng = np.random.default_rng(0)
        src = rng.integers(4, 40, (8, 8)).astype("int32")
        tgt = rng.integers(4, 40, (8, 8)).astype("int32")
        logs = model.train_on_batch((src, tgt), tgt, return_dict=True)
        assert np.isfinite(logs["loss"])
        assert keras.ops.convert_to_numpy(model((src, tgt))).dtype == np.float32
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_auto_precision_is_float32_without_gpu():
    assert training.resolve_precision("auto") == "float32"


def test_masked_loss_ignores_padding():
    loss = training.MaskedCrossEntropy()
    logits = np.random.default_rng(0).normal(size=(2, 4, 6)).astype("float32")
    y = np.array([[4, 5, 0, 0], [4, 0, 0, 0]])
    base = float(loss(y, logits))
    changed = logits.copy()
    changed[:, 2:] += 100.0  # padded positions
    changed[1, 1:] -= 50.0
    assert float(loss(y, changed)) == pytest.approx(base, rel=1e-6)


def test_label_smoothing_raises_loss_of_confident_prediction():
    logits = np.full((1, 1, 5), -10.0, "float32")
    logits[0, 0, 4] = 10.0
    y = np.array([[4]])
    assert (
        float(training.MaskedCrossEntropy(0.1)(y, logits))
        > float(training.MaskedCrossEntropy(0.0)(y, logits)) + 0.5
    )


def test_resuming_with_a_different_model_is_refused(tmp_path, tiny_run):
    cfg = tiny_config(tmp_path, "model.decoder_units=64")
    with pytest.raises(training.ConfigError, match="different model config"):
        training.write_config(cfg, tiny_run)


def test_cli_config_errors_are_one_line(tmp_path, capsys, tiny_corpus):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochz: 3\n")
    assert cli.main(["train", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"nmt: error: {bad}: unknown key training.epochz; valid keys of training: "
        + ", ".join(training.TrainingConfig.__dataclass_fields__)
    ]
    assert cli.main(["prepare", str(tmp_path / "missing.yaml"), "--run-dir", "x"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_missing_corpus_file_is_one_line(tmp_path, capsys):
    path = _write_config(tmp_path, tiny_config(tmp_path / "nowhere"))
    assert cli.main(["prepare", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("nmt: error: file not found:") and "Traceback" not in err


def test_smoke_config_trains_end_to_end(tmp_path, multi30k_dir):
    env = {**os.environ, "NMT_MULTI30K_DIR": str(multi30k_dir)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nmt.cli",
            "train",
            "configs/smoke.yaml",
            "--run-dir",
            str(tmp_path / "smoke"),
            "--set",
            f"data.train={multi30k_dir}/train",
            "--set",
            f"data.validation={multi30k_dir}/val",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: epoch 1, step 60" in result.stdout
    assert (tmp_path / "smoke" / "best.weights.h5").is_file()


def test_validation_bleu_selects_the_model(tmp_path, tiny_corpus):
    run_dir = tmp_path / "run"
    cfg = tiny_config(
        tiny_corpus,
        "training.early_stopping_metric=bleu",
        "training.epochs=2",
        "training.bleu_max_sentences=20",
    )
    state = training.train(cfg, run_dir)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["val_bleu"] <= 100.0 for r in records)
    assert state["best"] == max(r["val_bleu"] for r in records)


def test_early_stopping_after_patience(tmp_path, tiny_corpus):
    # With a zero learning rate nothing improves after the first validation.
    cfg = tiny_config(
        tiny_corpus, "training.learning_rate=0", "training.epochs=10", "training.patience=2"
    )
    state = training.train(cfg, tmp_path / "run")
    assert state["stopped_early"] and state["epoch"] == 3
    # Running the same command again does not train any further.
    assert training.train(cfg, tmp_path / "run")["step"] == state["step"]


def test_token_nll_weighs_batches_by_their_tokens():
    rng = np.random.default_rng(0)
    metric = training.TokenNLL()
    batches = [
        (np.array([[4, 5, 6, 0]]), rng.normal(size=(1, 4, 8)).astype("float32")),
        (np.array([[7, 0, 0, 0], [0, 0, 0, 0]]), rng.normal(size=(2, 4, 8)).astype("float32")),
    ]
    per_token = []
    for y, logits in batches:
        metric.update_state(y, logits)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        per_token += [-log_probs[b, t, y[b, t]] for b, t in zip(*np.nonzero(y), strict=True)]
    assert float(metric.result()) == pytest.approx(np.mean(per_token), rel=1e-5)


def test_stale_tokenizer_settings_are_refused(tmp_path, tiny_corpus):
    run_dir = tmp_path / "run"
    training.prepare(tiny_config(tiny_corpus), run_dir)
    with pytest.raises(training.ConfigError, match="other tokenizer or data settings"):
        training.prepare(tiny_config(tiny_corpus, "tokenizer.vocab_size=40"), run_dir)
    # The same settings reuse the models (and print the cached counts).
    assert training.prepare(tiny_config(tiny_corpus), run_dir)["train"]["kept"] == 400
