"""Typed configuration: the only place where defaults live.

A config is loaded from YAML, then `--set section.key=value` overrides are applied.
Unknown sections or keys and values of the wrong type are errors that name the key
and the valid choices.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nmt.errors import ConfigError

MULTI30K_ENV = "NMT_MULTI30K_DIR"

# Special token ids shared by the tokenizer, the data pipeline, the model and search.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass
class DataConfig:
    """Where the parallel corpus comes from and how sentences are filtered."""

    # "multi30k": the bundled tfds builder; "tfds": any tfds translation dataset by name;
    # "files": text-file pairs PREFIX.SRC_LANG / PREFIX.TGT_LANG (.gz ok); "tsv": src<TAB>tgt.
    format: Literal["multi30k", "tfds", "files", "tsv"] = "multi30k"
    src_lang: str = "en"
    tgt_lang: str = "de"
    # tfds dataset name for format=tfds, e.g. "ted_hrlr_translate/pt_to_en".
    tfds_name: str = ""
    # Split names (tfds) or path prefixes (files) or paths (tsv).
    train: str = "train"
    validation: str = "validation"
    test: str = "test_2016"
    # Folder with the raw Multi30k files (train.en.gz, ...); falls back to $NMT_MULTI30K_DIR,
    # then to downloading. Relative paths are resolved against the working directory.
    multi30k_dir: str = ""
    # Where tfds keeps prepared datasets; empty means the tfds default (~/tensorflow_datasets).
    tfds_data_dir: str = ""
    # Pairs with more subword tokens than this on either side are dropped (and counted).
    max_src_len: int = 64
    max_tgt_len: int = 64


@dataclass
class TokenizerConfig:
    """SentencePiece settings. Ids: pad=0, unk=1, bos=2, eos=3."""

    model_type: Literal["unigram", "bpe"] = "unigram"
    vocab_size: int = 8000
    # One model trained on both languages (shared vocabulary) or one per language.
    joint: bool = True
    character_coverage: float = 1.0
    # At most this many sentences (per language) are sampled to train SentencePiece.
    max_training_sentences: int = 1_000_000


@dataclass
class ModelConfig:
    """The Cho et al. (2014) GRU encoder-decoder and its attention switch."""

    embedding_dim: int = 256
    encoder_units: int = 256
    encoder_layers: int = 1
    bidirectional: bool = True
    decoder_units: int = 512
    # Width of the maxout readout after pooling (pool size 2).
    maxout_units: int = 256
    dropout: float = 0.3
    # Recurrent dropout disables the fused (cuDNN) GRU kernel; keep 0 unless needed.
    recurrent_dropout: float = 0.0
    # "none" is pure Cho; "additive" (Bahdanau) and "dot"/"general" (Luong) add attention
    # over all encoder states, computed after the decoder GRU.
    attention: Literal["none", "additive", "dot", "general"] = "none"
    attention_units: int = 256
    # Share the target embedding with the output projection.
    tie_embeddings: bool = False


@dataclass
class TrainingConfig:
    """Optimisation, batching, precision, checkpoints and stopping."""

    seed: int = 1234
    epochs: int = 10
    # Stop after this many optimizer steps (0 = no limit).
    max_steps: int = 0
    # Batch by sentence count ("sentences") or by a token budget ("tokens").
    batch_by: Literal["sentences", "tokens"] = "sentences"
    batch_size: int = 64
    max_tokens: int = 2048
    # Sequence lengths are padded up to multiples of this (bucket boundaries).
    bucket_width: int = 8
    shuffle_buffer: int = 10_000
    learning_rate: float = 1e-3
    # keras.optimizers.schedules: "exponential" = ExponentialDecay(lr_decay_steps, lr_decay_rate),
    # "cosine" = CosineDecay to 0 over lr_decay_steps after warmup_steps of linear warm-up.
    lr_schedule: Literal["constant", "exponential", "cosine"] = "constant"
    lr_decay_steps: int = 1000
    lr_decay_rate: float = 0.5
    warmup_steps: int = 0
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    # "auto": mixed_float16 when a GPU is visible, float32 otherwise.
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
    # Also checkpoint every N steps within an epoch (0 = only at the end of every epoch).
    checkpoint_every: int = 0
    early_stopping_metric: Literal["loss", "bleu"] = "loss"
    # Stop after this many validations without improvement (0 = never stop early).
    patience: int = 5
    # Sentences of the validation split decoded (greedy) for validation BLEU; 0 = all.
    bleu_max_sentences: int = 500
    steps_per_execution: int = 1


@dataclass
class DecodingConfig:
    """Search settings used by translate, evaluate and export."""

    beam_size: int = 5
    # GNMT length penalty alpha: score / ((5 + len) / 6) ** alpha.
    length_penalty: float = 0.6
    n_best: int = 1
    # Output length limit: max_len_a * src_len + max_len_b tokens.
    max_len_a: float = 1.5
    max_len_b: int = 10
    batch_size: int = 64
    # Longer inputs (in subword tokens) are truncated to this with a warning.
    max_input_len: int = 256


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Checks `value` against a field's type hint, converting int -> float where harmless."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{where}: {value!r} is not a valid choice; choose one of "
                + ", ".join(repr(c) for c in choices)
            )
        return value
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept what Python accepts.
        try:
            return float(value)
        except ValueError:
            pass
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected {hint.__name__}, got a boolean {value!r}")
    if not isinstance(value, hint):
        raise ConfigError(
            f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def _build_section(cls: type, values: Any, section: str) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of keys, got {type(values).__name__}")
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown key {section}.{unknown[0]}; valid keys of {section}: " + ", ".join(types_)
        )
    kwargs = {k: _coerce(v, types_[k], f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def from_dict(raw: dict[str, Any]) -> Config:
    """Builds a validated Config from nested dicts (YAML content)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping of sections")
    sections = _field_types(Config)
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r}; valid sections: " + ", ".join(sections))
    cfg = Config(
        **{name: _build_section(cls, raw.get(name), name) for name, cls in sections.items()}
    )
    _check_values(cfg)
    return cfg


def _check_values(cfg: Config) -> None:
    positive = [
        ("tokenizer.vocab_size", cfg.tokenizer.vocab_size),
        ("model.embedding_dim", cfg.model.embedding_dim),
        ("model.encoder_units", cfg.model.encoder_units),
        ("model.encoder_layers", cfg.model.encoder_layers),
        ("model.decoder_units", cfg.model.decoder_units),
        ("model.maxout_units", cfg.model.maxout_units),
        ("training.batch_size", cfg.training.batch_size),
        ("training.max_tokens", cfg.training.max_tokens),
        ("training.bucket_width", cfg.training.bucket_width),
        ("data.max_src_len", cfg.data.max_src_len),
        ("data.max_tgt_len", cfg.data.max_tgt_len),
        ("decoding.beam_size", cfg.decoding.beam_size),
        ("decoding.n_best", cfg.decoding.n_best),
        ("decoding.batch_size", cfg.decoding.batch_size),
        ("decoding.max_input_len", cfg.decoding.max_input_len),
    ]
    for name, value in positive:
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if cfg.decoding.n_best > cfg.decoding.beam_size:
        raise ConfigError(
            f"decoding.n_best ({cfg.decoding.n_best}) cannot exceed "
            f"decoding.beam_size ({cfg.decoding.beam_size})"
        )
    for name, value in [
        ("model.dropout", cfg.model.dropout),
        ("model.recurrent_dropout", cfg.model.recurrent_dropout),
        ("training.label_smoothing", cfg.training.label_smoothing),
    ]:
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if cfg.data.format == "tfds" and not cfg.data.tfds_name:
        raise ConfigError("data.tfds_name is required when data.format is 'tfds'")


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parses 'section.key=value'; the value is read as YAML (so 3, 0.5, true, none work)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"bad override {text!r}; expected section.key=value")
    path, value = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    return section, key, yaml.safe_load(value) if value.strip() else ""


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Loads a YAML config (or the defaults when `path` is None) and applies overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: a config must be a mapping of sections")
    for text in overrides or []:
        section, key, value = parse_override(text)
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{section}: expected a mapping of keys")
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        raw[section][key] = value
    return from_dict(raw)


def multi30k_dir(cfg: DataConfig) -> str:
    """The local Multi30k folder from the config or $NMT_MULTI30K_DIR ('' = download)."""
    return cfg.multi30k_dir or os.environ.get(MULTI30K_ENV, "")
