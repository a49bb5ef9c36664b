"""Rules of the test suite itself."""

import os
import subprocess
import sys

import pytest

from .conftest import REPO


def test_in_ci_a_test_that_needs_multi30k_fails_instead_of_skipping(tmp_path):
    if not (REPO.parent / "shared").is_dir():
        pytest.skip("no ../shared beside the repository: the rule does not apply")
    env = {**os.environ, "CI": "true", "NMT_MULTI30K_DIR": str(tmp_path / "nowhere")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_multi30k.py",
            "-k",
            "test_real_multi30k",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "although ../shared exists (CI=true)" in result.stdout
