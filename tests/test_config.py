import dataclasses
import re

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


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    cfg = config.load(path)
    if path.stem.startswith("multi30k_"):  # multi30k_SRC_TGT[_attention]: the name says it all
        src, tgt = path.stem.split("_")[1:3]
        assert (cfg.data.src_lang, cfg.data.tgt_lang) == (src, tgt)
        assert (cfg.model.attention != "none") == path.stem.endswith("_attention")


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
    with pytest.raises(ConfigError, match=r"model.word_dropout must be in \[0, 1\)"):
        config.load(None, ["model.word_dropout=1.0"])
    with pytest.raises(ConfigError, match="vocab_size must be positive"):
        config.load(None, ["tokenizer.vocab_size=0"])
    with pytest.raises(ConfigError, match="training.xla.*'auto', 'always', 'never'"):
        config.load(None, ["training.xla=true"])  # YAML's true: a bool, not a choice


def test_input_feeding_needs_attention_and_no_recurrent_dropout():
    with pytest.raises(ConfigError, match="model.input_feeding.*model.attention is 'none'"):
        config.load(None, ["model.input_feeding=true"])
    with pytest.raises(ConfigError, match="input_feeding does not support model.recurrent_dropout"):
        config.load(
            None,
            ["model.input_feeding=true", "model.attention=dot", "model.recurrent_dropout=0.1"],
        )
    assert config.load(
        None, ["model.input_feeding=true", "model.attention=dot"]
    ).model.input_feeding


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
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert config.load(tmp_path / "c.yaml") == cfg
    assert dataclasses.asdict(cfg)["model"]["attention"] == "additive"


def test_a_config_from_a_newer_nmt_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(config.load(None).to_yaml())
    assert f"format_version: {config.FORMAT_VERSION}" in path.read_text()
    path.write_text(f"format_version: {config.FORMAT_VERSION + 1}\ntraining:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml: written by a newer nmt \(format_version 2; "):
        config.load(path)
    path.write_text("format_version: soon\n")
    with pytest.raises(ConfigError, match="format_version must be a positive integer"):
        config.load(path)


def test_malformed_override_value_names_the_override():
    with pytest.raises(ConfigError, match=r"bad override 'data.train=\[abc': not valid YAML"):
        config.load(None, ["data.train=[abc"])


def test_string_fields_take_overrides_as_typed():
    cfg = config.load(None, ["data.test=2016", "data.train=no", "data.validation=~"])
    assert (cfg.data.test, cfg.data.train, cfg.data.validation) == ("2016", "no", "~")
    assert config.load(None, ["data.test=1.50"]).data.test == "1.50"
    assert config.load(None, ["data.test='a b'"]).data.test == "a b"


def test_string_field_with_a_non_string_in_a_file_asks_for_quotes(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  test: no\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == (
        f"{path}: data.test: expected str, got bool False; quote the value in the YAML file"
    )
    assert config.load(path, ["data.test=no"]).data.test == "no"


def test_errors_about_the_file_name_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  epochz: 3\n")
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(path))}: unknown key training.epochz; valid keys"
    ):
        config.load(path)
    path.write_text("training:\n  epochs: ten\n")
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(path))}: training.epochs: expected int"
    ):
        config.load(path)
    path.write_text("training:\n  epochs: 0\n")
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(path))}: training.epochs must be at least 1, got 0"
    ):
        config.load(path)
    # What an override set is named without the file.
    path.write_text("training:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match="^training.epochs must be at least 1, got 0$"):
        config.load(path, ["training.epochs=0"])
    with pytest.raises(ConfigError, match="^unknown key training.epochz"):
        config.load(path, ["training.epochz=1"])


def test_file_that_is_not_utf8_or_unreadable(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"data:\n  test: \xff\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == f"{path}: line 2: not UTF-8 text (byte 0xff)"

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "read_text", refuse)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert str(err.value) == f"{path}: cannot read: Permission denied"


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.epochs=0", "training.epochs must be at least 1, got 0"),
        ("training.seed=-1", "training.seed must be at least 0, got -1"),
        ("training.steps_per_execution=0", "training.steps_per_execution must be at least 1"),
        ("training.checkpoint_every=-1", "training.checkpoint_every must be at least 0, got -1"),
        ("training.learning_rate=-0.1", "training.learning_rate must be at least 0"),
        ("training.lr_decay_rate=0", "training.lr_decay_rate must be positive, got 0.0"),
        ("training.lr_decay_steps=-1", "training.lr_decay_steps must be at least 0, got -1"),
        (
            "training.lr_schedule=exponential",
            "training.lr_schedule=exponential multiplies the rate by lr_decay_rate every",
        ),
        ("training.shuffle_buffer=0", "training.shuffle_buffer must be at least 1"),
        ("decoding.max_len_a=-1", "decoding.max_len_a must be at least 0"),
        ("decoding.length_penalty=.nan", "decoding.length_penalty must be at least 0, got nan"),
        (
            "tokenizer.character_coverage=0",
            r"tokenizer.character_coverage must be in \(0, 1\], got 0.0",
        ),
        ("tokenizer.character_coverage=1.5", r"tokenizer.character_coverage must be in \(0, 1\]"),
    ],
)
def test_range_checks(override, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        config.load(None, [override])


def test_range_limits_are_accepted():
    cfg = config.load(
        None,
        ["training.epochs=1", "training.checkpoint_every=0", "tokenizer.character_coverage=1"],
    )
    assert cfg.training.epochs == 1 and cfg.tokenizer.character_coverage == 1.0


def test_default_multi30k_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(config.MULTI30K_ENV, raising=False)
    assert config.default_multi30k_dir() == REPO.parent / "shared" / "data" / "multi30k"
    assert config.default_multi30k_dir(tmp_path / "repo") == tmp_path / "shared/data/multi30k"
    monkeypatch.setenv(config.MULTI30K_ENV, str(tmp_path / "m"))
    assert config.default_multi30k_dir() == tmp_path / "m"


def test_gru_variant_with_an_lstm_is_an_error():
    with pytest.raises(ConfigError, match="^model.gru_variant='reset_before' applies to GRUs"):
        config.load(None, ["model.cell=lstm", "model.gru_variant=reset_before"])
    cfg = config.load(None, ["model.cell=lstm"])  # the default variant goes with any cell
    assert (cfg.model.cell, cfg.model.gru_variant) == ("lstm", "reset_after")
