"""`nmt export`: a string-to-string SavedModel that needs no nmt to load and matches the
Translator exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nmt import cli, export, rundir, training
from nmt import config as config_lib
from nmt.translator import Translator, step_buckets

from .conftest import SRC_WORDS, tiny_config

MAX_INPUT_LEN = 12  # small, so that a long sentence exercises truncation

SENTENCES = [
    "a man runs on the street",
    "",
    "the small dog sits",
    "   ",
    "\u3000\t",  # whitespace to Python's str.strip(), not to RE2's \s
    "a big red house",
    "xyz Ω ünknown wörds",
    " ".join(SRC_WORDS * 3),  # longer than MAX_INPUT_LEN tokens
    "cat",
    "the woman sits on the blue house",
]

# Runs in a fresh interpreter where `import nmt` fails: the SavedModel must need only
# tensorflow and tensorflow_text (which registers the SentencePiece ops). Reads a JSON list
# of batches on stdin, prints the list of translated batches.
LOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["nmt"] = None  # any import of nmt now raises ImportError
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
    out = []
    for batch in json.loads(sys.stdin.read()):
        texts = serve(sentences=tf.constant(batch, tf.string))["translations"].numpy()
        out.append([t.decode("utf-8") for t in texts])
    print(json.dumps(out))
    """
)

# The base install under JAX: TensorFlow cannot be imported. Prints what `export` says.
NO_TENSORFLOW_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["tensorflow"] = None  # any import of TensorFlow now raises ImportError
    from nmt import export
    from nmt.errors import NmtError
    said = []
    for call in (export.hide_gpus, lambda: export.export(sys.argv[1], sys.argv[2])):
        try:
            call()
        except NmtError as exc:
            said.append(str(exc))
    print(json.dumps(said))
    """
)
NO_TENSORFLOW_CLI = (
    'import sys; sys.modules["tensorflow"] = None; from nmt import cli; '
    "sys.exit(cli.main(sys.argv[1:]))"
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_corpus) -> Path:
    """A tiny attention model trained for 20 steps on the synthetic corpus."""
    cfg = tiny_config(
        tiny_corpus,
        "model.attention=additive",
        "training.max_steps=20",
        "training.learning_rate=0.01",
        f"decoding.max_input_len={MAX_INPUT_LEN}",
        # Tight per-sentence limits (1 to 4 tokens here) cut most outputs short, so
        # a wrong max_len in the graph changes the strings.
        "decoding.max_len_a=0.3",
        "decoding.max_len_b=1",
    )
    run = tmp_path_factory.mktemp("run")
    training.train(cfg, run)
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "model"
    assert cli.main(["export", str(run_dir), str(out)]) == 0
    return out


def _load_and_translate(out_dir: Path, batches: list[list[str]]) -> list[list[str]]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(out_dir)],
        input=json.dumps(batches),
        capture_output=True,
        text=True,
        env=env,
        cwd=out_dir.parent,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_savedmodel_without_nmt_matches_translator(run_dir, exported):
    # The first batch holds a truncated long sentence (source width 16), the second only
    # short ones (width 8): each runs a different compiled search of the graph.
    short = ["a dog", "", "a cat", "red"]
    batches = [SENTENCES, short, ["", " "], []]
    translator = Translator.from_run_dir(run_dir)
    assert max(len(translator.src_tok.encode(s)) for s in short) < 8  # + EOS fits width 8
    expected = [translator.translate(batch) for batch in batches]
    assert _load_and_translate(exported, batches) == expected
    assert [expected[0][i] for i in (1, 3, 4)] == ["", "", ""]
    assert sum(bool(t) for t in expected[0]) >= 3  # the comparison is not between empty strings


def test_step_buckets_cover_every_source_width():
    opts = config_lib.DecodingConfig(max_input_len=256, max_len_a=1.5, max_len_b=10)
    buckets = step_buckets(opts)
    assert [w for w, _ in buckets] == [8, 16, 32, 64, 128, 264]  # 264: 256 tokens + EOS, padded
    assert all(steps == int(1.5 * w + 10) for w, steps in buckets)


def test_weights_are_stored_once(run_dir, exported):
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(exported / "variables" / "variables"))
    shapes = reader.get_variable_to_shape_map()
    stored = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith("VARIABLE_VALUE"))
    assert stored == Translator.from_run_dir(run_dir).model.count_params()


def test_export_writes_decoding_settings(run_dir, exported):
    assert (exported / "saved_model.pb").is_file()
    settings = json.loads((exported / export.SETTINGS_FILE).read_text())
    decoding = config_lib.load(run_dir / rundir.CONFIG_FILE).decoding
    assert settings["decoding"]["beam_size"] == decoding.beam_size == 3
    assert settings["decoding"]["length_penalty"] == decoding.length_penalty
    assert settings["decoding"]["max_input_len"] == MAX_INPUT_LEN
    assert settings["decoding"]["max_len_a"] == decoding.max_len_a
    assert settings["decoding"]["max_len_b"] == decoding.max_len_b
    assert settings["weights"] == "best"


def test_beam_and_length_penalty_overrides(run_dir, tmp_path):
    import tensorflow as tf

    out = tmp_path / "greedy"
    argv = ["export", str(run_dir), str(out), "--beam-size", "1", "--length-penalty", "0"]
    assert cli.main(argv) == 0
    settings = json.loads((out / export.SETTINGS_FILE).read_text())["decoding"]
    assert (settings["beam_size"], settings["length_penalty"]) == (1, 0.0)
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    result = serve(sentences=tf.constant(SENTENCES))
    got = [t.decode("utf-8") for t in result["translations"].numpy()]
    translator = Translator.from_run_dir(run_dir)
    assert got == translator.translate(SENTENCES, beam_size=1, length_penalty=0.0)
    assert result["scores"].numpy()[1] == 0.0  # empty input, as the Translator scores it


def _error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("nmt: error: ") and "\n" not in err
    return err


def test_missing_run_dir_is_an_error(capsys, tmp_path):
    err = _error(capsys, ["export", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert f"run directory not found: {tmp_path / 'nope'}" in err
    assert not (tmp_path / "out").exists()


def test_run_dir_without_model_is_an_error(capsys, run_dir, tmp_path):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    shutil.copy(run_dir / rundir.CONFIG_FILE, untrained)
    shutil.copytree(run_dir / rundir.TOKENIZER_DIR, untrained / rundir.TOKENIZER_DIR)
    err = _error(capsys, ["export", str(untrained), str(tmp_path / "out")])
    assert "has no trained model" in err and str(untrained) in err
    assert not (tmp_path / "out").exists()


def test_non_empty_out_dir_needs_force(capsys, run_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    err = _error(capsys, ["export", str(run_dir), str(out)])
    assert f"export destination {out} exists and is not empty" in err and "--force" in err
    assert (out / "stale.txt").is_file()
    assert cli.main(["export", str(run_dir), str(out), "--force"]) == 0
    assert (out / "saved_model.pb").is_file() and not (out / "stale.txt").exists()


def test_out_dir_that_would_destroy_the_run_is_refused(capsys, run_dir):
    for target in (run_dir, run_dir.parent):
        err = _error(capsys, ["export", str(run_dir), str(target), "--force"])
        assert "would overwrite the run directory" in err
    assert (run_dir / rundir.BEST_WEIGHTS).is_file()


def test_out_dir_that_is_a_file_is_refused(capsys, run_dir, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    err = _error(capsys, ["export", str(run_dir), str(target), "--force"])
    assert "is a file" in err


def test_bad_beam_size_is_an_error(capsys, run_dir, tmp_path):
    err = _error(capsys, ["export", str(run_dir), str(tmp_path / "out"), "--beam-size", "0"])
    assert "beam size" in err


def test_out_dir_that_cannot_be_created_is_an_error(capsys, run_dir, tmp_path):
    (tmp_path / "file").write_text("x")
    err = _error(capsys, ["export", str(run_dir), str(tmp_path / "file" / "out")])
    assert f"cannot write the export to {tmp_path / 'file' / 'out'}" in err


def _without_tensorflow(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
        timeout=300,
    )


def test_export_without_tensorflow_names_the_extra(run_dir, tmp_path):
    done = _without_tensorflow(NO_TENSORFLOW_SCRIPT, run_dir, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(said) == 2 and said[0] == said[1]
    assert said[0].startswith(f"{export.TENSORFLOW_MISSING} (cannot import tensorflow")
    assert 'pip install "nmt[tensorflow]"' in said[0] and "\n" not in said[0]
    assert not (tmp_path / "out").exists()


def test_cli_export_without_tensorflow_is_one_line(run_dir, tmp_path):
    done = _without_tensorflow(NO_TENSORFLOW_CLI, "export", run_dir, tmp_path / "out")
    assert done.returncode == cli.EXIT_USER_ERROR, done.stderr[-3000:]
    assert (
        done.stderr.strip().splitlines()[-1].startswith(f"nmt: error: {export.TENSORFLOW_MISSING}")
    )
    assert "Traceback" not in done.stderr


def assert_beam2_export_translates_as_the_run(run_dir: Path, out: Path) -> None:
    """Exports `run_dir` with beam 2 (beams gather the state, and a narrow one traces fast)
    and checks the SavedModel translates SENTENCES as the run's Translator does."""
    import tensorflow as tf

    assert cli.main(["export", str(run_dir), str(out), "--beam-size", "2"]) == 0
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    got = serve(sentences=tf.constant(SENTENCES))["translations"].numpy()
    expected = Translator.from_run_dir(run_dir).translate(SENTENCES, beam_size=2)
    assert [t.decode("utf-8") for t in got] == expected
    assert sum(bool(t) for t in expected) >= 3  # the comparison is not between empty strings


def test_input_feeding_run_translates_and_exports(tiny_corpus, tmp_path):
    """An input-fed decoder trains, and its extra state (the last attention context) goes
    through beam search and the exported graph like every other leaf."""
    run_dir = tmp_path / "run"
    settings = ["model.attention=dot", "model.input_feeding=true", "training.max_steps=30"]
    training.train(tiny_config(tiny_corpus, *settings, "training.learning_rate=0.01"), run_dir)
    assert_beam2_export_translates_as_the_run(run_dir, tmp_path / "export")


def test_lstm_run_exports(tiny_lstm_run, tmp_path):
    """The LSTM's decoder state, (h, c), goes through the traced search like a GRU's (h,)
    (the run's config says beam 3)."""
    assert_beam2_export_translates_as_the_run(tiny_lstm_run, tmp_path / "lstm")
