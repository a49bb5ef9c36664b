"""Training on several devices: the same global batch gives the same training as one device.

Devices are split before TensorFlow or JAX starts, so every run is a subprocess of
`nmt train` with `NMT_CPU_DEVICES` set.
"""

import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from nmt import config
from nmt.errors import ConfigError

from .conftest import REPO, tiny_config

# Token-budget batches of 18 or 9 pairs (an odd batch is padded for the replicas), with the
# default clip_norm and label smoothing: the global token mean, the padding and the clip
# after the sum are all exercised.
SETTINGS = (
    "training.max_steps=4",
    "training.epochs=1",
    "training.learning_rate=0.01",
    "training.batch_by=tokens",
    "training.max_tokens=150",
)


def _start(cfg_path, run_dir, backend, distribution, devices=None):
    """`nmt train` in a subprocess, on `devices` CPU devices."""
    env = {**os.environ, "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("NMT_CPU_DEVICES", None)
    if devices:
        env["NMT_CPU_DEVICES"] = str(devices)
    cmd = [sys.executable, "-m", "nmt.cli", "train", str(cfg_path), "--run-dir", str(run_dir)]
    cmd += ["--set", f"training.distribution={distribution}"]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _log(proc) -> str:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return err


def _checkpoint(run_dir) -> dict[str, np.ndarray]:
    """Every array of the last checkpoint (weights and optimizer state), by path."""
    (path,) = (run_dir / "checkpoint").glob("ckpt-*.weights.h5")
    arrays = {}

    def keep(name, item):
        if isinstance(item, h5py.Dataset):
            arrays[name] = item[()]

    with h5py.File(path, "r") as f:
        f.visititems(keep)
    return arrays


def _assert_same_training(one, many):
    first = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    second = [json.loads(line) for line in (many / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in first] == [m["step"] for m in second] == [4]
    # Token metrics; Keras' `loss`/`val_loss` average batches weighted by rows, padding rows
    # included, so they move a little with a padded batch (the training itself does not).
    for key in ("nll", "val_nll"):
        assert second[0][key] == pytest.approx(first[0][key], rel=1e-4, abs=1e-5), key
    a, b = _checkpoint(one), _checkpoint(many)
    assert a and a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize(
    "backend, distribution", [("tensorflow", "mirrored"), ("jax", "data_parallel")]
)
def test_two_replicas_train_like_one_device_at_the_same_global_batch(
    tmp_path, tiny_corpus, backend, distribution
):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(tiny_config(tiny_corpus, *SETTINGS).to_yaml())
    one, many = tmp_path / "one", tmp_path / "two"
    # Side by side: each mostly waits on its own start-up and compilation.
    procs = [
        _start(cfg_path, one, backend, "none"),
        _start(cfg_path, many, backend, distribution, devices=2),
    ]
    log_one, log_many = (_log(p) for p in procs)
    assert "training on 1 replica (1 worker)" in log_one
    assert "training on 2 replicas (1 worker)" in log_many
    _assert_same_training(one, many)


def test_distribution_is_a_config_choice():
    assert config.load(None, ["training.distribution=mirrored"]).training.distribution == (
        "mirrored"
    )
    with pytest.raises(ConfigError, match="training.distribution"):
        config.load(None, ["training.distribution=multi_worker"])


def test_a_distribution_of_another_backend_is_one_line(tmp_path, tiny_corpus, capsys):
    from nmt import cli

    path = tmp_path / "cfg.yaml"
    path.write_text(tiny_config(tiny_corpus, "training.distribution=data_parallel").to_yaml())
    assert cli.main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("nmt: error: training.distribution=data_parallel needs the jax backend")
    assert not (tmp_path / "run").exists()  # refused before anything is written
