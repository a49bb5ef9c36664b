import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from nmt import cli, config, rundir, tokenizer, training
from nmt.checkpointing import restore
from nmt.errors import RunDirError
from nmt.model import build_model
from nmt.rundir import RunDir

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
    # Exactly the weights state.json names: the last keep_checkpoints=3 of 4 epoch ends
    # and the best; older checkpoints are deleted once replaced.
    names = sorted(p.name for p in (tiny_run / "checkpoint").glob("*.h5"))
    assert names == sorted({*state["kept"], state["best_weights"]})
    steps = [int(name.split("-")[1].split(".")[0]) for name in state["kept"]]
    assert len(steps) == 3 and steps == sorted(steps) and steps[-1] == state["step"]
    assert state["weights"] == f"ckpt-{state['step']}.weights.h5" == state["kept"][-1]
    assert os.path.samefile(
        tiny_run / "best.weights.h5", tiny_run / "checkpoint" / state["best_weights"]
    )
    records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    assert {"step", "loss", "val_loss", "val_nll", "val_ppl", "best"} <= set(records[0])


def _write_config(tmp_path, cfg):
    path = tmp_path / "cfg.yaml"
    path.write_text(cfg.to_yaml())
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
        time.sleep(0.05)
    raise AssertionError("training made no checkpoint in time")


# Dropout on, so the dropout RNG state matters; 27 batches per epoch, a checkpoint every 5.
RESUME_SETTINGS = ("model.dropout=0.3", "training.epochs=3", "training.checkpoint_every=5")


def _collect(arrays, name, obj):
    import h5py

    if isinstance(obj, h5py.Dataset):
        arrays[name] = obj[()]
    # None: h5py's visititems stops at the first callback that returns a value.


def _final_weights(run_dir):
    """Every array of the last checkpoint (model and optimizer), by its h5 path."""
    import h5py

    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    arrays = {}
    with h5py.File(run_dir / "checkpoint" / state["weights"]) as f:
        f.visititems(lambda name, obj: _collect(arrays, name, obj))
    return arrays, state


def _assert_same_weights(run_a, run_b):
    a, state_a = _final_weights(run_a)
    b, state_b = _final_weights(run_b)
    assert a.keys() == b.keys() and len(a) > 20
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7, err_msg=name)
    assert state_a["step"] == state_b["step"] and state_a["rng"] == state_b["rng"]


def _assert_consistent(run_dir, epochs=3):
    """What a finished run directory must look like, however often it was killed."""
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
    assert state["metrics_lines"] == epochs and state["best"] == records[-1]["best"]
    best = run_dir / "checkpoint" / state["best_weights"]
    assert os.path.samefile(run_dir / "best.weights.h5", best)
    names = {p.name for p in (run_dir / "checkpoint").iterdir()}
    assert names == {"state.json", state["weights"], state["best_weights"]}
    assert not list(run_dir.rglob("tmp.*"))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_corpus):
    """An uninterrupted run with RESUME_SETTINGS, trained in this process."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    training.train(tiny_config(tiny_corpus, *RESUME_SETTINGS), run_dir)
    return run_dir


def test_two_uninterrupted_runs_agree(tmp_path, tiny_corpus, reference_run):
    training.train(tiny_config(tiny_corpus, *RESUME_SETTINGS), tmp_path / "run")
    _assert_same_weights(tmp_path / "run", reference_run)


def test_kill_9_at_a_random_step_then_resume_gives_the_uninterrupted_weights(
    tmp_path, tiny_corpus, reference_run
):
    config_path = _write_config(tmp_path, tiny_config(tiny_corpus, *RESUME_SETTINGS))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "nmt.cli", "train", str(config_path), "--run-dir", str(run_dir)]
    seed = int(np.random.SeedSequence().entropy % 10**6)  # a new moment every run, replayable
    kill_after = int(np.random.default_rng(seed).integers(5, 60))
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_step(run_dir / "checkpoint" / "state.json", kill_after, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    state = json.loads((run_dir / "checkpoint" / "state.json").read_text())
    assert 5 <= state["step"] < 81, f"killed after step {kill_after} (seed {seed})"

    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoint'}" in done.stderr
    assert f"epoch {state['epoch'] + 1} ({state['batches']} batches in), step {state['step']}" in (
        done.stderr
    )
    _assert_same_weights(run_dir, reference_run)
    _assert_consistent(run_dir)


class Killed(BaseException):
    """A simulated kill: not an Exception, so nothing on the way catches it."""


def _die_at_step(step, before=True):
    """Wraps a `rundir` function `f(run, state)` to die before or after it runs at `step`."""

    def wrap(original):
        def wrapper(run, state, *args):
            if state["step"] == step and before:
                raise Killed
            result = original(run, state, *args)
            if state["step"] == step:
                raise Killed
            return result

        return wrapper

    return wrap


def _half_written_state(step):
    def wrap(original):
        def wrapper(path, data):
            if path.name == "state.json" and f'"step": {step},' in data:
                path.with_name("tmp.state.json").write_text(data[: len(data) // 2])
                raise Killed
            return original(path, data)

        return wrapper

    return wrap


# (rundir function, how it dies): every instant of a checkpoint, mid-epoch and at epoch ends
# with a new best (steps 27, 54); 27 batches per epoch, a checkpoint every 5 steps.
CRASHES = [
    ("atomic_write", _half_written_state(10)),
    ("commit_state", _die_at_step(27)),  # weights and metrics line written, state not
    ("commit_state", _die_at_step(32, before=False)),
    ("publish_best", _die_at_step(54)),  # state committed, best.weights.h5 not yet linked
    ("remove_unnamed", _die_at_step(59)),  # old weights not yet deleted
]


def test_kills_at_every_instant_of_a_checkpoint_leave_a_consistent_run(
    tmp_path, tiny_corpus, reference_run, monkeypatch
):
    cfg = tiny_config(tiny_corpus, *RESUME_SETTINGS)
    run_dir = tmp_path / "run"
    for name, wrap in CRASHES:
        with monkeypatch.context() as patch:
            patch.setattr(rundir, name, wrap(getattr(rundir, name)))
            with pytest.raises(Killed):
                training.train(cfg, run_dir)
        state = rundir.reconcile(RunDir(run_dir))  # what the next start does first
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        assert len(lines) == state.get("metrics_lines", 0), name
        if state.get("best_weights"):
            best = run_dir / "checkpoint" / state["best_weights"]
            assert os.path.samefile(run_dir / "best.weights.h5", best), name
        assert not list(run_dir.rglob("tmp.*")), name
    training.train(cfg, run_dir)
    _assert_consistent(run_dir)
    _assert_same_weights(run_dir, reference_run)


@pytest.mark.parametrize(
    "max_steps,position,records_then",
    [
        (40, (1, 13), [(1, None, 27), (2, True, 40)]),
        # The epoch's last batch: resuming finds the epoch empty and moves on.
        (27, (0, 27), [(1, True, 27)]),
    ],
)
def test_max_steps_inside_an_epoch_records_a_partial_epoch_and_resumes_exactly(
    max_steps, position, records_then, tmp_path, tiny_corpus, reference_run
):
    run_dir = tmp_path / "run"
    cfg = tiny_config(tiny_corpus, *RESUME_SETTINGS, f"training.max_steps={max_steps}")
    state = training.train(cfg, run_dir)
    assert (state["epoch"], state["batches"], state["step"]) == (*position, max_steps)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r.get("partial"), r["step"]) for r in records] == records_then
    # Raising the limit continues inside the epoch as if it had never stopped.
    training.train(tiny_config(tiny_corpus, *RESUME_SETTINGS), run_dir)
    _assert_same_weights(run_dir, reference_run)
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if not r.get("partial")][-2:] == [2, 3]


def test_changed_batching_restarts_the_epoch_with_a_warning(tmp_path, tiny_corpus, caplog):
    run_dir = tmp_path / "run"
    training.train(tiny_config(tiny_corpus, *RESUME_SETTINGS, "training.max_steps=40"), run_dir)
    changed = tiny_config(
        tiny_corpus, *RESUME_SETTINGS, "training.max_steps=45", "training.batch_size=8"
    )
    with caplog.at_level("WARNING", logger="nmt"):
        state = training.train(changed, run_dir)
    assert "epoch 2 restarts from its first batch" in caplog.text
    assert (state["epoch"], state["batches"], state["step"]) == (1, 5, 45)


def test_the_selection_metric_cannot_change_on_resume(tmp_path, tiny_run):
    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir)
    cfg = training.config_lib.load(run_dir / "config.yaml", ["training.epochs=9"])
    cfg.training.early_stopping_metric = "bleu"
    with pytest.raises(training.ConfigError, match="selects its best weights by validation loss"):
        training.train(cfg, run_dir, validation_score=lambda model: 0.0)


def test_a_run_directory_trains_in_one_process_at_a_time(tmp_path, tiny_run, capsys):
    with rundir.Lock(RunDir(tiny_run)):
        config_path = tiny_run / "config.yaml"
        assert cli.main(["train", str(config_path), "--run-dir", str(tiny_run)]) == 2
    assert "is being trained by another process" in capsys.readouterr().err


def test_restore_loads_optimizer_state_and_refuses_another_models_rng(reference_run, tiny_corpus):
    cfg = tiny_config(tiny_corpus, *RESUME_SETTINGS)
    model = build_model(cfg.model, 48, 48)
    training.compile_model(model, cfg.training)
    state = json.loads((reference_run / "checkpoint" / "state.json").read_text())
    restore(model, RunDir(reference_run), state)
    assert state["step"] == int(model.optimizer.iterations) == 81  # no phantom iterations
    moments = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert moments and any(float(np.abs(keras.ops.convert_to_numpy(v)).max()) > 0 for v in moments)
    with pytest.raises(RunDirError, match="random-generator states but the model has"):
        restore(model, RunDir(reference_run), {**state, "rng": state["rng"][:1]})


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


def test_resuming_with_a_different_model_is_refused(tmp_path, tiny_run):
    cfg = tiny_config(tmp_path, "model.decoder_units=64")
    with pytest.raises(training.ConfigError, match="different model config"):
        training.write_config(cfg, RunDir(tiny_run))


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
    assert "done: step 60 (epoch 1 stopped by training.max_steps after 60 batches)" in result.stdout
    assert (tmp_path / "smoke" / "best.weights.h5").is_file()


def test_validation_bleu_selects_the_model(tmp_path, tiny_corpus):
    run_dir = tmp_path / "run"
    cfg = tiny_config(
        tiny_corpus,
        "training.early_stopping_metric=bleu",
        "training.epochs=4",
        "training.learning_rate=0.01",
        "training.bleu_max_sentences=40",
    )
    state = training.train(cfg, run_dir)  # the metric brings its default score function
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    bleu = [r["val_bleu"] for r in records]
    assert len(set(bleu)) > 1 and max(bleu) > 0, bleu  # the selection has something to choose
    best = int(np.argmax(bleu))
    assert state["best"] == bleu[best]
    assert state["best_weights"] == f"best-{records[best]['step']}.weights.h5"
    assert [r["best"] for r in records] == list(np.maximum.accumulate(bleu))


def test_early_stopping_after_patience(tmp_path, tiny_corpus):
    # With a zero learning rate nothing improves after the first validation.
    cfg = tiny_config(
        tiny_corpus, "training.learning_rate=0", "training.epochs=10", "training.patience=2"
    )
    state = training.train(cfg, tmp_path / "run")
    assert state["stopped_early"] and state["epoch"] == 3
    # Running the same command again does not train any further.
    assert training.train(cfg, tmp_path / "run")["step"] == state["step"]


def test_stale_tokenizer_settings_are_refused(tmp_path, tiny_corpus):
    run_dir = tmp_path / "run"
    training.prepare(tiny_config(tiny_corpus), run_dir)
    with pytest.raises(training.ConfigError, match="other tokenizer or data settings"):
        training.prepare(tiny_config(tiny_corpus, "tokenizer.vocab_size=40"), run_dir)
    # The same settings reuse the models (and print the cached counts).
    assert training.prepare(tiny_config(tiny_corpus), run_dir)["train"]["kept"] == 400
    # Deleted and retrained as the error says: the counts taken in the old pieces go too.
    run = RunDir(run_dir)
    stats = json.loads(run.stats.read_text())
    stats["counts"]["train"]["kept"] = -1
    stats["batches_per_epoch"] = {"batch_order": {}, "count": -1}
    run.stats.write_text(json.dumps(stats))
    shutil.rmtree(run.tokenizer)
    retrained = tiny_config(tiny_corpus, "tokenizer.vocab_size=40")
    assert training.prepare(retrained, run_dir)["train"]["kept"] == 400
    assert "batches_per_epoch" not in json.loads(run.stats.read_text())


def test_a_tokenizer_trained_on_other_train_files_is_refused(tmp_path, tiny_corpus):
    # Same settings, other bytes: e.g. another Multi30k folder, or distilled targets.
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, corpus)
    cfg, run_dir = tiny_config(corpus), tmp_path / "run"
    training.prepare(cfg, run_dir)
    for lang in ("en", "de"):  # one more pair
        path = corpus / f"train.{lang}"
        path.write_text(path.read_text() + "one more\n")
    with pytest.raises(training.ConfigError, match="other tokenizer or data settings"):
        training.prepare(cfg, run_dir)
    # Models from before the files were fingerprinted are kept.
    settings_file = RunDir(run_dir).tokenizer / tokenizer.SETTINGS_FILE
    record = json.loads(settings_file.read_text())
    del record["settings"]["train_sha256"]
    settings_file.write_text(json.dumps(record))
    assert training.prepare(cfg, run_dir)["train"]["total"] == 401


def test_fp16_overflow_is_skipped_by_loss_scaling_not_reported_as_divergence(
    tmp_path, tiny_corpus, monkeypatch
):
    compile_model = training.compile_model

    def with_a_huge_loss_scale(model, cfg):
        compile_model(model, cfg)
        model.optimizer.build(model.trainable_variables)
        # float16 gradients overflow until loss scaling has halved this ~20 times.
        model.optimizer.dynamic_scale.assign(2.0**40)

    monkeypatch.setattr(training, "compile_model", with_a_huge_loss_scale)
    cfg = tiny_config(tiny_corpus, "training.precision=mixed_float16", "training.epochs=1")
    try:
        state = training.train(cfg, tmp_path / "run")
        model = build_model(cfg.model, 48, 48)
        compile_model(model, cfg.training)
        restore(model, RunDir(tmp_path / "run"), state)
        applied = int(model.optimizer.iterations)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert state["step"] == 27 and 0 < applied < 27  # overflowing steps skipped, not fatal


@pytest.mark.parametrize("xla, jit_compile", [("always", True), ("never", False)])
def test_xla_setting_reaches_keras(tiny_corpus, xla, jit_compile):
    cfg = tiny_config(tiny_corpus, f"training.xla={xla}")
    model = build_model(cfg.model, 48, 48)
    training.compile_model(model, cfg.training)
    assert model.jit_compile is jit_compile


def test_cosine_over_the_whole_run_ends_with_the_last_update(tmp_path, tiny_corpus, monkeypatch):
    compiled = []
    compile_model = training.compile_model
    monkeypatch.setattr(
        training,
        "compile_model",
        lambda model, cfg: (compiled.append(cfg), compile_model(model, cfg)),
    )
    cfg = tiny_config(
        tiny_corpus, "training.lr_schedule=cosine", "training.warmup_steps=3", "training.epochs=2"
    )
    state = training.train(cfg, tmp_path / "run")
    assert cfg.training.lr_decay_steps == 0
    assert compiled[0].warmup_steps + compiled[0].lr_decay_steps == state["step"] > 3


@pytest.mark.parametrize(
    "settings, decay_steps",
    [
        ({"epochs": 4, "warmup_steps": 10}, 4 * 25 - 10),
        ({"epochs": 4, "warmup_steps": 10, "max_steps": 60}, 50),  # max_steps ends it sooner
        ({"epochs": 4, "max_steps": 1000}, 100),  # ...or the epochs do
        ({"epochs": 4, "lr_decay_steps": 7}, 7),  # set by the user
    ],
)
def test_fit_schedule_to_run(settings, decay_steps):
    cfg = config.TrainingConfig(lr_schedule="cosine", **settings)
    assert training.fit_schedule_to_run(cfg, lambda: 25).lr_decay_steps == decay_steps


def test_fit_schedule_to_run_reads_no_data_unless_needed():
    def unread() -> int:
        raise AssertionError("counted the batches")

    for cfg in (
        config.TrainingConfig(lr_schedule="exponential", lr_decay_steps=0),
        config.TrainingConfig(lr_schedule="cosine", lr_decay_steps=500),
    ):
        assert training.fit_schedule_to_run(cfg, unread) == cfg


def test_the_batch_count_is_remembered_for_its_batch_order(tmp_path):
    run, counted = RunDir(tmp_path), []

    def count() -> int:
        counted.append(1)
        return 25

    cfg = config.load(None, [])
    assert training._batches_per_epoch(cfg, run, count, write=True) == 25
    assert training._batches_per_epoch(cfg, run, count, write=True) == 25  # resumed: no pass
    assert len(counted) == 1
    bigger = config.load(None, ["training.batch_size=128"])
    training._batches_per_epoch(bigger, run, count, write=False)  # a non-chief worker
    training._batches_per_epoch(bigger, run, count, write=True)
    assert len(counted) == 3


def test_a_run_inside_the_warmup_is_trained_with_a_warning(caplog):
    cfg = config.TrainingConfig(lr_schedule="cosine", warmup_steps=200, max_steps=100)
    with caplog.at_level("WARNING", logger="nmt"):
        fitted = training.fit_schedule_to_run(cfg, lambda: 456)
    assert "warmup_steps (200) is not shorter than the run (100 updates)" in caplog.text
    assert fitted.lr_decay_steps == 1
    training.learning_rate(fitted)  # a valid schedule


def test_an_unfitted_whole_run_schedule_is_a_programming_error():
    with pytest.raises(ValueError, match="fit_schedule_to_run"):
        training.learning_rate(config.TrainingConfig(lr_schedule="cosine"))
