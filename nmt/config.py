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

# The layout of configs and run directories this nmt writes; a newer one is refused, not
# misread. Bump it when a change would make an older nmt misunderstand a run directory.
FORMAT_KEY, FORMAT_VERSION = "format_version", 1

# Special token ids shared by the tokenizer, the data pipeline, the model and search.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass
class DataConfig:
    """Where the parallel corpus comes from and how sentences are filtered."""

    # "multi30k": a local folder's files, else a download by the bundled tfds builder;
    # "tfds": any tfds translation dataset by name;
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
    # Share of whole source and target tokens whose embedding is zeroed in training (word
    # dropout, Gal & Ghahramani 2016; Sennrich et al. 2016), on top of `dropout`.
    word_dropout: float = 0.0
    # Recurrent dropout disables the fused (cuDNN) GRU kernel; keep 0 unless needed.
    recurrent_dropout: float = 0.0
    # The recurrent unit of encoder and decoder: "gru" (Cho et al.) or "lstm" (four gates
    # and a memory cell; everything else stays the same, see nmt.model).
    cell: Literal["gru", "lstm"] = "gru"
    # GRU only. "reset_after" applies the reset gate after the recurrent product (the
    # cuDNN form); "reset_before" is the paper's h~ = tanh(W x + U (r * h)), which has no
    # fused kernel and one bias vector per gate instead of two.
    gru_variant: Literal["reset_after", "reset_before"] = "reset_after"
    # "none" is pure Cho; "additive" (Bahdanau) and "dot"/"general" (Luong) add attention
    # over all encoder states, computed after the decoder GRU.
    attention: Literal["none", "additive", "dot", "general"] = "none"
    attention_units: int = 256
    # Attention only: the decoder GRU (LSTM) also reads the previous step's attention context
    # (Luong et al. 2015), so teacher forcing runs step by step instead of the fused kernel.
    input_feeding: bool = False
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
    # "cosine" = CosineDecay to 0 over lr_decay_steps after warmup_steps of linear warm-up;
    # lr_decay_steps 0 (cosine only) = all the updates after warm-up, so 0 at the run's end.
    lr_schedule: Literal["constant", "exponential", "cosine"] = "constant"
    lr_decay_steps: int = 0
    lr_decay_rate: float = 0.5
    warmup_steps: int = 0
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    # "auto": mixed_float16 when a GPU is visible, float32 otherwise.
    precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
    # Also checkpoint every N steps within an epoch (0 = only at the end of every epoch).
    checkpoint_every: int = 0
    # Keep the last N checkpoints (epoch ends and checkpoint_every), for `nmt average`;
    # 1 keeps only the latest. Each holds weights and optimizer state.
    keep_checkpoints: int = 1
    early_stopping_metric: Literal["loss", "bleu"] = "loss"
    # Stop after this many validations without improvement (0 = never stop early).
    patience: int = 5
    # Sentences of the validation split decoded (greedy) for validation BLEU; 0 = all.
    bleu_max_sentences: int = 500
    steps_per_execution: int = 1
    # XLA for the training step: "auto" is Keras' choice (on for JAX and for TensorFlow with a
    # GPU, off for TensorFlow on a CPU); "always" / "never" force it (never under JAX: eager).
    xla: Literal["auto", "always", "never"] = "auto"
    # Several devices or machines, the batch above being the global batch: "mirrored"
    # (tf.distribute.MirroredStrategy over this machine's GPUs) or "multi_worker"
    # (MultiWorkerMirroredStrategy over the machines TF_CONFIG names), TensorFlow backend;
    # "data_parallel" (keras.distribution.DataParallel over all devices, of several
    # processes when KERAS_DISTRIBUTION_NUM_PROCESSES etc. are set), JAX backend.
    distribution: Literal["none", "mirrored", "multi_worker", "data_parallel"] = "none"


@dataclass
class DecodingConfig:
    """Search settings used by translate, evaluate and export (beam_size and length_penalty
    give way to what `nmt tune-decoding` stored: a run's `decoding.json`, or for an ensemble
    its first run's `decoding.ensemble.json`)."""

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

    def to_yaml(self) -> str:
        """The config as YAML, with the format version that `from_dict` checks."""
        return yaml.safe_dump({FORMAT_KEY: FORMAT_VERSION, **self.to_dict()}, sort_keys=False)


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class _Override:
    """A `--set` value: parsed as YAML, with the text as typed kept for `str` fields."""

    value: Any
    text: str


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Checks `value` against a field's type hint, converting int -> float where harmless."""
    if isinstance(value, _Override):
        # `--set data.test=2016` or `data.train=no` means the text as typed, not 2016 or False.
        if hint is str and not isinstance(value.value, (str, list, dict)):
            return value.text.strip()
        value = value.value
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
    if hint is str and not isinstance(value, (str, list, dict)):
        # In a file the text as typed is gone (`no` is already False): ask for quotes.
        raise ConfigError(
            f"{where}: expected str, got {type(value).__name__} {value!r}; "
            "quote the value in the YAML file"
        )
    if not isinstance(value, hint):
        raise ConfigError(
            f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


Prefix = typing.Callable[[str], str]


def _source_prefix(raw: dict[str, Any], source: str | None) -> Prefix:
    """A function of 'section' or 'section.key' that gives 'SOURCE: ' when the file set it
    (not a `--set` override, not a default) and '' otherwise."""

    def prefix(name: str) -> str:
        section, _, key = name.partition(".")
        values = raw.get(section)
        if source is None or section not in raw:
            return ""
        if not isinstance(values, dict):
            return f"{source}: "
        if not key:  # a section: from the file unless every key in it is an override
            overridden = values and all(isinstance(v, _Override) for v in values.values())
            return "" if overridden else f"{source}: "
        from_file = key in values and not isinstance(values[key], _Override)
        return f"{source}: " if from_file else ""

    return prefix


def _build_section(cls: type, values: Any, section: str, prefix: Prefix) -> Any:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{prefix(section)}{section}: expected a mapping of keys, got {type(values).__name__}"
        )
    types_ = _field_types(cls)
    unknown = sorted(set(values) - set(types_), key=str)
    if unknown:
        name = f"{section}.{unknown[0]}"
        raise ConfigError(
            f"{prefix(name)}unknown key {name}; valid keys of {section}: " + ", ".join(types_)
        )
    return cls(
        **{
            k: _coerce(v, types_[k], f"{prefix(f'{section}.{k}')}{section}.{k}")
            for k, v in values.items()
        }
    )


def from_dict(raw: dict[str, Any], source: str | None = None) -> Config:
    """Builds a validated Config from nested dicts (YAML content).

    Args:
        raw: {section: {key: value}}.
        source: the file `raw` was read from; errors about what it set start with 'SOURCE: '.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping of sections")
    prefix = _source_prefix(raw, source)
    raw = _check_format(raw, prefix)
    sections = _field_types(Config)
    unknown = sorted(set(raw) - set(sections), key=str)
    if unknown:
        raise ConfigError(
            f"{prefix(str(unknown[0]))}unknown section {unknown[0]!r}; valid sections: "
            + ", ".join(sections)
        )
    cfg = Config(
        **{name: _build_section(cls, raw.get(name), name, prefix) for name, cls in sections.items()}
    )
    _check_values(cfg, prefix)
    return cfg


def _check_format(raw: dict[str, Any], prefix: Prefix) -> dict[str, Any]:
    """Removes the format version from `raw`, refusing one newer than this nmt reads."""
    raw = dict(raw)
    version = raw.pop(FORMAT_KEY, FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"{prefix(FORMAT_KEY)}{FORMAT_KEY} must be a positive integer")
    if version > FORMAT_VERSION:
        raise ConfigError(
            f"{prefix(FORMAT_KEY)}written by a newer nmt ({FORMAT_KEY} {version}; this nmt "
            f"reads up to {FORMAT_VERSION}): upgrade nmt to use it"
        )
    return raw


# Predicates of _check_values, by the words its messages use.
_RULES: dict[str, typing.Callable[[float], bool]] = {
    "positive": lambda v: v > 0,
    "at least 1": lambda v: v >= 1,
    "at least 0": lambda v: v >= 0,
    "in [0, 1)": lambda v: 0 <= v < 1,
    "in (0, 1]": lambda v: 0 < v <= 1,
}


def _check_values(cfg: Config, prefix: Prefix = lambda name: "") -> None:
    """Range checks: one-line errors 'NAME must be RULE, got VALUE'."""
    d, tok, m, t, dec = cfg.data, cfg.tokenizer, cfg.model, cfg.training, cfg.decoding
    checks = [
        ("tokenizer.vocab_size", tok.vocab_size, "positive"),
        ("tokenizer.character_coverage", tok.character_coverage, "in (0, 1]"),
        ("tokenizer.max_training_sentences", tok.max_training_sentences, "at least 1"),
        ("model.embedding_dim", m.embedding_dim, "positive"),
        ("model.encoder_units", m.encoder_units, "positive"),
        ("model.encoder_layers", m.encoder_layers, "positive"),
        ("model.decoder_units", m.decoder_units, "positive"),
        ("model.maxout_units", m.maxout_units, "positive"),
        ("model.dropout", m.dropout, "in [0, 1)"),
        ("model.word_dropout", m.word_dropout, "in [0, 1)"),
        ("model.recurrent_dropout", m.recurrent_dropout, "in [0, 1)"),
        ("training.seed", t.seed, "at least 0"),
        ("training.epochs", t.epochs, "at least 1"),
        ("training.max_steps", t.max_steps, "at least 0"),
        ("training.batch_size", t.batch_size, "positive"),
        ("training.max_tokens", t.max_tokens, "positive"),
        ("training.bucket_width", t.bucket_width, "positive"),
        ("training.shuffle_buffer", t.shuffle_buffer, "at least 1"),
        ("training.learning_rate", t.learning_rate, "at least 0"),
        ("training.lr_decay_steps", t.lr_decay_steps, "at least 0"),
        ("training.lr_decay_rate", t.lr_decay_rate, "positive"),
        ("training.warmup_steps", t.warmup_steps, "at least 0"),
        ("training.clip_norm", t.clip_norm, "at least 0"),
        ("training.label_smoothing", t.label_smoothing, "in [0, 1)"),
        ("training.checkpoint_every", t.checkpoint_every, "at least 0"),
        ("training.keep_checkpoints", t.keep_checkpoints, "at least 1"),
        ("training.patience", t.patience, "at least 0"),
        ("training.bleu_max_sentences", t.bleu_max_sentences, "at least 0"),
        ("training.steps_per_execution", t.steps_per_execution, "at least 1"),
        ("data.max_src_len", d.max_src_len, "positive"),
        ("data.max_tgt_len", d.max_tgt_len, "positive"),
        ("decoding.beam_size", dec.beam_size, "positive"),
        ("decoding.length_penalty", dec.length_penalty, "at least 0"),
        ("decoding.n_best", dec.n_best, "positive"),
        ("decoding.max_len_a", dec.max_len_a, "at least 0"),
        ("decoding.max_len_b", dec.max_len_b, "at least 0"),
        ("decoding.batch_size", dec.batch_size, "positive"),
        ("decoding.max_input_len", dec.max_input_len, "positive"),
    ]
    for name, value, rule in checks:
        if not _RULES[rule](value):  # written so that NaN fails too
            raise ConfigError(f"{prefix(name)}{name} must be {rule}, got {value}")
    if dec.n_best > dec.beam_size:
        raise ConfigError(
            f"{prefix('decoding.n_best')}decoding.n_best ({dec.n_best}) cannot exceed "
            f"decoding.beam_size ({dec.beam_size})"
        )
    if t.lr_schedule == "exponential" and not t.lr_decay_steps:
        raise ConfigError(
            f"{prefix('training.lr_decay_steps')}training.lr_schedule=exponential multiplies "
            "the rate by lr_decay_rate every training.lr_decay_steps updates: set it (0, the "
            "whole run, applies to the cosine schedule)"
        )
    if m.cell != "gru" and m.gru_variant != "reset_after":
        raise ConfigError(
            f"{prefix('model.gru_variant')}model.gru_variant={m.gru_variant!r} applies to "
            f"GRUs only, but model.cell is {m.cell!r}"
        )
    if m.input_feeding and m.attention == "none":
        raise ConfigError(
            f"{prefix('model.input_feeding')}model.input_feeding feeds back the attention "
            "context, but model.attention is 'none'"
        )
    if m.input_feeding and m.recurrent_dropout > 0:
        raise ConfigError(
            f"{prefix('model.input_feeding')}model.input_feeding does not support "
            f"model.recurrent_dropout (got {m.recurrent_dropout}); set it to 0"
        )
    if d.format == "tfds" and not d.tfds_name:
        raise ConfigError(
            f"{prefix('data.format')}data.tfds_name is required when data.format is 'tfds'"
        )


def _split_override(text: str) -> tuple[str, str, str]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"bad override {text!r}; expected section.key=value")
    path, value = text.split("=", 1)
    section, key = path.strip().split(".", 1)
    return section, key, value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """The problem of a YAML error in one line, without the quoted source."""
    problem = getattr(exc, "problem", None)
    return problem or " ".join(str(exc).split())


def _parse_override_value(text: str, value: str) -> Any:
    if not value.strip():
        return ""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad override {text!r}: not valid YAML: {_yaml_problem(exc)}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parses 'section.key=value'; the value is read as YAML (so 3, 0.5, true, none work)."""
    section, key, value = _split_override(text)
    return section, key, _parse_override_value(text, value)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}: line {mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections")
    return raw


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Loads a YAML config (or the defaults when `path` is None) and applies overrides.

    An override value is read as YAML, except that a `str` field takes the text as typed
    (`--set data.test=2016` gives "2016", not an int).

    Raises:
        ConfigError: one line; errors about what the file set start with 'PATH: '.
    """
    raw: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    for text in overrides or []:
        section, key, value = _split_override(text)
        parsed = _Override(_parse_override_value(text, value), value)
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ConfigError(
                f"{path}: {section}: expected a mapping of keys, got {type(raw[section]).__name__}"
            )
        raw[section][key] = parsed
    return from_dict(raw, None if path is None else str(path))


def default_multi30k_dir(repo_root: str | Path | None = None) -> Path:
    """Where scripts, tests and notebooks look for Multi30k when not told otherwise.

    `$NMT_MULTI30K_DIR` if set, else `REPO/../shared/data/multi30k`, where REPO is `repo_root`
    or the folder holding the `nmt` package. The latter is the repository only for a source
    checkout or an editable install (`pip install -e .`, as this project is set up); for a
    regular install pass `repo_root` or set the variable.
    """
    env = os.environ.get(MULTI30K_ENV)
    if env:
        return Path(env)
    root = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[1]
    return root.resolve().parent / "shared" / "data" / "multi30k"


def multi30k_dir(cfg: DataConfig) -> str:
    """The local Multi30k folder from the config or $NMT_MULTI30K_DIR ('' = download)."""
    return cfg.multi30k_dir or os.environ.get(MULTI30K_ENV, "")
