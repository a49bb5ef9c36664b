"""scripts/tune.py: a KerasTuner search over short nmt trainings, on the tiny corpus."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import yaml

from nmt.errors import ConfigError

from .conftest import tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import tune  # noqa: E402


def tiny_files(tmp_path: Path, corpus: Path, space: dict) -> list[str]:
    """The config and space files of a tiny search; the arguments naming them."""
    config, space_file = tmp_path / "tiny.yaml", tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump(dataclasses.asdict(tiny_config(corpus))))
    space_file.write_text(yaml.safe_dump(space))
    return [str(config), "--space", str(space_file), "--out-dir", str(tmp_path / "tune")]


def test_search_trains_each_trial_and_keeps_the_best(tmp_path, tiny_corpus):
    space = {"training.learning_rate": [0.0001, 0.02], "model.dropout": [0.0]}
    tune.main([*tiny_files(tmp_path, tiny_corpus, space), "--trials", "2", "--max-steps", "30"])

    out = tmp_path / "tune"
    trials = json.loads((out / "results.json").read_text())["trials"]
    assert sorted(t["values"]["training.learning_rate"] for t in trials) == [0.0001, 0.02]
    assert trials[0]["val_bleu"] >= trials[1]["val_bleu"]
    for trial in trials:
        run = out / f"trial_{trial['trial']}"
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == 30  # --max-steps, validated at the last update too
        assert trial["val_bleu"] == round(max(r["val_bleu"] for r in records if "val_bleu" in r), 2)
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best == {
        "training": {"learning_rate": trials[0]["values"]["training.learning_rate"]},
        "model": {"dropout": 0.0},
    }


def test_a_bad_space_fails_before_any_trial(tmp_path, tiny_corpus):
    space = {"model.dropout": [0.1], "model.no_such_knob": [1]}
    with pytest.raises(ConfigError, match="no_such_knob"):
        tune.main([*tiny_files(tmp_path, tiny_corpus, space), "--trials", "1"])
    space = {"model.dropout": [0.1, 1.5]}
    with pytest.raises(ConfigError, match="dropout"):
        tune.main([*tiny_files(tmp_path, tiny_corpus, space), "--trials", "1"])
    assert not (tmp_path / "tune").exists()


def test_a_space_must_map_keys_to_lists(tmp_path, tiny_corpus, capsys):
    with pytest.raises(SystemExit):
        tune.main(tiny_files(tmp_path, tiny_corpus, {"model.dropout": 0.1}))
    assert "non-empty lists" in capsys.readouterr().err


@pytest.mark.parametrize("choices", [[False, True], [True]])
def test_booleans_stay_booleans(choices):
    import keras_tuner

    value = tune.choose(keras_tuner.HyperParameters(), "model.tie_embeddings", choices)
    assert type(value) is bool and value in choices
