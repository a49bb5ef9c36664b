import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """One JAX compilation cache for the whole test run, made before xdist starts its workers
    so that they, and every `nmt` subprocess they start, inherit it: the JAX subprocesses
    compile the same small programs again and again (a third of a tiny `nmt train`). A hit
    runs the executable that compiling the same program gives. JAX writes entries without a
    lock: a read racing a write gets a warning and compiles afresh."""
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    config.jax_cache = tempfile.mkdtemp(prefix="nmt-tests-jax-cache-")
    settings = {
        "JAX_COMPILATION_CACHE_DIR": config.jax_cache,
        # By default JAX keeps only compilations over 1 s; the tests' are mostly far shorter.
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    config.env_before_jax_cache = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)


def pytest_unconfigure(config):
    if not getattr(config, "jax_cache", None):
        return
    for name, value in config.env_before_jax_cache.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(config.jax_cache, ignore_errors=True)


def shared_multi30k() -> Path | None:
    """Multi30k from $NMT_MULTI30K_DIR or ../shared/data/multi30k beside the repo, if present."""
    from nmt.config import default_multi30k_dir

    path = default_multi30k_dir(REPO)
    return path if (path / "train.en.gz").is_file() else None


@pytest.fixture
def multi30k_dir() -> Path:
    path = shared_multi30k()
    if path is None:
        missing = "Multi30k not found (set NMT_MULTI30K_DIR or place ../shared/data/multi30k)"
        # In CI, ../shared is there: a test that skips would hide a broken data path.
        if os.environ.get("CI") == "true" and (REPO.parent / "shared").is_dir():
            pytest.fail(missing + " although ../shared exists (CI=true)")
        pytest.skip(missing)
    return path


SRC_WORDS = [
    "a",
    "man",
    "woman",
    "dog",
    "cat",
    "runs",
    "sits",
    "on",
    "the",
    "red",
    "blue",
    "green",
    "big",
    "small",
    "house",
    "street",
]
# A deterministic "translation": each word maps to one target word and the order is reversed,
# so a model has something learnable and attention has something to align.
TGT_WORDS = "ein mann frau hund katze rennt sitzt auf das rot blau grün groß klein haus straße"
WORD_MAP = dict(zip(SRC_WORDS, TGT_WORDS.split(), strict=True))


def write_tiny_corpus(folder: Path, n_train: int = 400, n_val: int = 40, seed: int = 0) -> Path:
    """Writes train/val text-file pairs (PREFIX.en / PREFIX.de) of a synthetic language pair."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in [("train", n_train), ("val", n_val)]:
        src = [" ".join(rng.choice(SRC_WORDS) for _ in range(rng.randint(2, 7))) for _ in range(n)]
        tgt = [" ".join(WORD_MAP[w] for w in reversed(s.split())) for s in src]
        (folder / f"{split}.en").write_text("\n".join(src) + "\n")
        (folder / f"{split}.de").write_text("\n".join(tgt) + "\n")
    return folder


def tiny_config(corpus: Path, *overrides: str):
    """A config that trains in seconds on the tiny corpus (CPU, float32)."""
    from nmt import config

    return config.load(
        None,
        [
            "data.format=files",
            f"data.train={corpus / 'train'}",
            f"data.validation={corpus / 'val'}",
            f"data.test={corpus / 'val'}",
            "tokenizer.vocab_size=48",
            "model.embedding_dim=16",
            "model.encoder_units=16",
            "model.decoder_units=32",
            "model.maxout_units=16",
            "model.attention_units=16",
            "model.dropout=0.0",
            "training.batch_size=16",
            "training.epochs=2",
            "training.precision=float32",
            "training.patience=0",
            "decoding.beam_size=3",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("tiny_corpus"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_corpus) -> Path:
    """A trained run directory (tiny attention model), shared by the tests that only read it.

    Trained until different inputs get different translations, so that tests of ordering
    and n-best lists can tell outputs apart. It keeps its last 3 checkpoints (of 4) for
    the checkpoint-averaging tests."""
    return _train_tiny(
        tmp_path_factory.mktemp("tiny_run"),
        tiny_corpus,
        "model.attention=additive",
        "training.learning_rate=0.01",
        "training.epochs=4",
        "training.keep_checkpoints=3",
    )


@pytest.fixture(scope="session")
def tiny_lstm_run(tmp_path_factory, tiny_corpus) -> Path:
    """A second trained run, as unlike `tiny_run` as an ensemble member may be: an LSTM Cho
    model (no attention), another seed, briefly trained. Its SentencePiece model is
    `tiny_run`'s (same data and tokenizer settings). A small `max_input_len` keeps its
    exported graph to two source-width buckets."""
    return _train_tiny(
        tmp_path_factory.mktemp("tiny_lstm_run"),
        tiny_corpus,
        "model.cell=lstm",
        "training.seed=7",
        "training.max_steps=30",
        "training.learning_rate=0.01",
        "decoding.max_input_len=12",
    )


def _train_tiny(run_dir: Path, corpus: Path, *settings: str) -> Path:
    """`run_dir` trained on the tiny corpus with `tiny_config` plus `settings`."""
    from nmt import training

    training.train(tiny_config(corpus, *settings), run_dir)
    return run_dir
