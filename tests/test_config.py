import dataclasses

import pytest
import yaml

from nmt import config
from nmt.errors import ConfigError

from .conftest import REPO


def test_defaults_load_without_a_file():
    cfg = config.load()
    assert cfg.model.attention == "none"
    assert cfg.tokenizer.vocab_size == 8000


def test_base_yaml_documents_every_key_with_its_default():
    raw = yaml.safe_load((REPO / "configs" / "base.yaml").read_text())
    defaults = config.Config().to_dict()
    assert raw == defaults


@pytest.mark.parametrize("name", ["base", "smoke", "multi30k_en_de", "multi30k_en_de_attention"])
def test_shipped_configs_are_valid(name):
    config.load(REPO / "configs" / f"{name}.yaml")


def test_overrides_are_parsed_as_yaml_and_typed(tmp_path):
    cfg = config.load(
        None,
        [
            "training.epochs=3",
            "training.learning_rate=1e-4",
            "model.attention=dot",
            "model.bidirectional=false",
        ],
    )
    assert cfg.training.epochs == 3
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.model.attention == "dot"
    assert cfg.model.bidirectional is False


def test_int_is_accepted_for_float():
    assert config.load(None, ["training.learning_rate=1"]).training.learning_rate == 1.0


def test_unknown_key_names_key_and_valid_choices(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  atention: dot\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    msg = str(err.value)
    assert "model.atention" in msg and "attention" in msg and "decoder_units" in msg


def test_unknown_section():
    with pytest.raises(ConfigError, match="unknown section 'modle'.*model"):
        config.load(None, ["modle.units=3"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="training.epochs: expected int, got str"):
        config.load(None, ["training.epochs=ten"])
    with pytest.raises(ConfigError, match="model.bidirectional: expected bool"):
        config.load(None, ["model.bidirectional=3"])


def test_bad_choice_lists_choices():
    with pytest.raises(ConfigError, match="'luong'.*'none', 'additive', 'dot', 'general'"):
        config.load(None, ["model.attention=luong"])


def test_bad_values():
    with pytest.raises(ConfigError, match="n_best"):
        config.load(None, ["decoding.n_best=6"])
    with pytest.raises(ConfigError, match="model.dropout"):
        config.load(None, ["model.dropout=1.5"])
    with pytest.raises(ConfigError, match="vocab_size must be positive"):
        config.load(None, ["tokenizer.vocab_size=0"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        config.load(None, ["epochs=3"])
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert "\n" not in str(err.value) and "c.yaml" in str(err.value)


def test_round_trip_through_yaml(tmp_path):
    cfg = config.load(None, ["model.attention=additive"])
    cfg.save(tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg
    assert dataclasses.asdict(cfg)["model"]["attention"] == "additive"
