"""The data side of nmt works with TensorFlow unimportable: tokenizers, corpora (files, tsv,
Multi30k folders), the Grain pipeline feeding `model.fit`, and clear errors where
tensorflow_datasets is needed. Runs `tests/no_tf_data_probe.py` in a subprocess under
`KERAS_BACKEND=jax` (Keras picks its backend once per process)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason='JAX is not installed (pip install "nmt[jax]")'
)


def run_probe(*args: Path) -> None:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    env.pop("NMT_MULTI30K_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "tests.no_tf_data_probe", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


def test_data_side_without_tensorflow(tmp_path):
    run_probe(tmp_path)


def test_real_multi30k_without_tensorflow(tmp_path, multi30k_dir):
    run_probe(tmp_path, multi30k_dir)
