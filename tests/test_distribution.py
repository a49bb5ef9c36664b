"""Training on several devices: the same global batch gives the same training as one device.

Devices are split before TensorFlow or JAX starts, so every run is a subprocess of
`nmt train` with `NMT_CPU_DEVICES` set.
"""

import json
import os
import socket
import subprocess
import sys

import h5py
import numpy as np
import pytest

from nmt import config
from nmt.errors import ConfigError

from .conftest import REPO, tiny_config

# Batches of 9 pairs, padded to 10 for two replicas, with the default clip_norm and label
# smoothing: the global token mean, the padding and the clip after the sum are all exercised.
# One padded width (bucket_width 32 > any tiny sentence) keeps JAX compiling few shapes.
SETTINGS = (
    "training.epochs=1",
    "training.learning_rate=0.01",
    "training.batch_size=9",
    "training.bucket_width=32",
)


def _start(cfg_path, run_dir, backend, distribution, devices=None, env=(), settings=()):
    """`nmt train` in a subprocess, on `devices` CPU devices, with more `env` variables."""
    env = {**_clean_environ(), "KERAS_BACKEND": backend, "CUDA_VISIBLE_DEVICES": "", **dict(env)}
    if devices:
        env["NMT_CPU_DEVICES"] = str(devices)
    cmd = [sys.executable, "-m", "nmt.cli", "train", str(cfg_path), "--run-dir", str(run_dir)]
    cmd += ["--set", f"training.distribution={distribution}"]
    for setting in settings:
        cmd += ["--set", setting]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _clean_environ() -> dict[str, str]:
    """This process's environment without the settings that would join a cluster."""
    cluster = ("NMT_CPU_DEVICES", "TF_CONFIG", "KERAS_DISTRIBUTION_NUM_PROCESSES")
    return {k: v for k, v in os.environ.items() if k not in cluster}


def _log(proc) -> str:
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()  # a worker whose peer died would wait for it forever
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


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_training(one, many, keys=("nll", "val_nll")):
    """The last validation and checkpoint of two runs agree."""
    first, second = _metrics(one)[-1], _metrics(many)[-1]
    assert first["step"] == second["step"]
    # Token metrics; Keras' `loss`/`val_loss` average batches weighted by rows, padding rows
    # included, so they move a little with a padded batch (the training itself does not).
    for key in keys:
        assert second[key] == pytest.approx(first[key], rel=1e-4, abs=1e-5), key
    a, b = _checkpoint(one), _checkpoint(many)
    assert a and a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (the OS picks them)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _worker_envs(backend: str) -> list[dict[str, str]]:
    """Two workers on loopback: TF_CONFIG for TensorFlow, Keras' JAX process settings."""
    ports = _free_ports(2)
    if backend == "tensorflow":
        cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
        return [
            {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            for i in range(2)
        ]
    return [
        {
            "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{ports[0]}",
            "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
            "KERAS_DISTRIBUTION_PROCESS_ID": str(i),
        }
        for i in range(2)
    ]


@pytest.mark.parametrize(
    "backend, one_machine, machines",
    [("tensorflow", "mirrored", "multi_worker"), ("jax", "data_parallel", "data_parallel")],
)
def test_two_replicas_and_two_workers_train_like_one_device(
    tmp_path, tiny_corpus, backend, one_machine, machines
):
    """2 devices of one process, and 2 worker processes (killed after 4 steps and started
    again), end with the weights and optimizer state of 1 device at the same global batch;
    only the chief writes and every worker resumes from its checkpoint."""
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(tiny_config(tiny_corpus, *SETTINGS).to_yaml())
    one, two, shared = tmp_path / "one", tmp_path / "two", tmp_path / "shared"

    def workers(max_steps):
        setting = [f"training.max_steps={max_steps}"]
        return [
            _start(cfg_path, shared, backend, machines, env=env, settings=setting)
            for env in _worker_envs(backend)
        ]

    six = ["training.max_steps=6"]
    # Side by side: each mostly waits on its own start-up and compilation.
    alone = [
        _start(cfg_path, one, backend, "none", settings=six),
        _start(cfg_path, two, backend, one_machine, devices=2, settings=six),
    ]
    chief, other = (_log(p) for p in workers(4))
    for log in (chief, other):
        assert "training on 2 replicas (2 workers)" in log
    assert "training SentencePiece" in chief and "training SentencePiece" not in other
    # Only the chief wrote: one metrics line (each worker would append its own), one
    # checkpoint, nothing left half-written.
    assert len(_metrics(shared)) == 1
    assert sorted(p.name for p in (shared / "checkpoint").iterdir()) == [
        "best-4.weights.h5",
        "ckpt-4.weights.h5",
        "state.json",
    ]
    chief, other = (_log(p) for p in workers(6))  # a restart: both resume the chief's step 4
    for log in (chief, other):
        assert "resuming from" in log and "step 4" in log
    log_one, log_two = (_log(p) for p in alone)
    assert "training on 1 replica (1 worker)" in log_one
    assert "training on 2 replicas (1 worker)" in log_two
    assert [m["step"] for m in _metrics(one)] == [m["step"] for m in _metrics(two)] == [6]
    _assert_same_training(one, two)
    assert [m["step"] for m in _metrics(shared)] == [4, 6]
    # Not the training nll: after the restart it averages steps 5-6 only.
    _assert_same_training(one, shared, keys=("val_nll",))


def test_distribution_is_a_config_choice():
    for choice in ("mirrored", "multi_worker", "data_parallel"):
        setting = f"training.distribution={choice}"
        assert config.load(None, [setting]).training.distribution == choice
    with pytest.raises(ConfigError, match="training.distribution"):
        config.load(None, ["training.distribution=parameter_server"])


def _refused_train(tmp_path, tiny_corpus, capsys, distribution: str) -> str:
    """The one line `nmt train` prints when it refuses `distribution`, having written nothing."""
    from nmt import cli

    path = tmp_path / "cfg.yaml"
    path.write_text(tiny_config(tiny_corpus, f"training.distribution={distribution}").to_yaml())
    assert cli.main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert not (tmp_path / "run").exists()  # refused before anything is written
    return err


def test_multi_worker_without_tf_config_is_one_line(tmp_path, tiny_corpus, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    err = _refused_train(tmp_path, tiny_corpus, capsys, "multi_worker")
    assert err.startswith("nmt: error: training.distribution=multi_worker needs TF_CONFIG")


def test_a_distribution_of_another_backend_is_one_line(tmp_path, tiny_corpus, capsys):
    err = _refused_train(tmp_path, tiny_corpus, capsys, "data_parallel")
    assert err.startswith("nmt: error: training.distribution=data_parallel needs the jax backend")
