import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_multi30k() -> Path | None:
    """Multi30k from $NMT_MULTI30K_DIR or ../shared/data/multi30k beside the repo, if present."""
    env = os.environ.get("NMT_MULTI30K_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "multi30k"
    return path if (path / "train.en.gz").is_file() else None


@pytest.fixture
def multi30k_dir() -> Path:
    path = shared_multi30k()
    if path is None:
        pytest.skip("Multi30k not found (set NMT_MULTI30K_DIR or place ../shared/data/multi30k)")
    return path
