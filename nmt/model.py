"""The Cho et al. (2014) GRU encoder-decoder, with an optional attention switch.

Everything here uses `keras` and `keras.ops` only, so the same model runs under the
TensorFlow and JAX backends.

Shapes follow the paper (section 2.2 and appendix A):

- Encoder: embedding -> (bidirectional, stacked) GRU over the source. The context vector
  `c = tanh(V h_T)` summarises the sentence (`h_T`: the last valid state of the top layer;
  bidirectional: both directions' final states, concatenated).
- Decoder: `h'_0 = tanh(V' c)`; the GRU reads `[e(y_{t-1}); c]` at every step.
- Readout: `s_t = O_h h'_t + O_y e(y_{t-1}) + O_c c (+ O_a a_t)`, maxout with pool 2,
  dropout, then a float32 projection to the target vocabulary.
- Dropout (training only) on both embeddings, between stacked encoder layers and after the
  maxout; `model.word_dropout` also zeroes whole tokens of both embeddings first.

Optional attention (`additive`, `dot`, `general`) is computed *after* the decoder GRU over
all encoder states, so teacher-forced training still runs the decoder GRU over the whole
target sequence with the fused (cuDNN) kernel. `model.input_feeding` (Luong et al. 2015;
JoeyNMT's default) also feeds the previous step's attention context back into the decoder
GRU, `[e(y_{t-1}); c; a_{t-1}]`: teacher forcing then runs one step at a time.

The recurrent unit (`model.cell`) is a GRU (the paper's) or an LSTM, everything else
equal. With an LSTM the encoder's recurrent state is `(h, c)` per direction: `h_T`, the
output, makes the context vector as above, and the memory cell `c` stays inside the encoder.
The decoder's LSTM starts from `(h'_0, c'_0) = (tanh(V' c), 0)`: the same projection as the
GRU's, and an empty memory cell that fills from `[e(y); c]` read at every step. So an LSTM
model has exactly the GRU model's weights outside the recurrent layers, and 4/3 of their
recurrent weights (four gates instead of three; `reset_before` GRU biases, one per gate).
The decoder state is a tuple of tensors, `(h,)` or `(h, c)`, which search tiles and
gathers like every other leaf.

`model.gru_variant` picks the GRU form: `reset_after` (the default) applies the reset gate
after the recurrent product, `h~ = tanh(W x + b + r * (U h + b'))`, the cuDNN form;
`reset_before` is the paper's `h~ = tanh(W x + U (r * h) + b)` (Keras `reset_after=False`).

Every recurrent layer is cuDNN-eligible except a `reset_before` GRU: tanh/sigmoid,
`unroll=False`, bias on, right-padded masks and (by default) no recurrent dropout. Where the
fused kernel is not used (CPUs, `reset_before`), `GRU` and `LSTM` below run Keras' loop
with the input product of all positions taken out of it (`_InputsProjectedOnce`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import keras
from keras import ops
from keras.src import backend as keras_backend  # its `rnn`, the loop Keras' own RNNs run

from nmt.config import PAD_ID, ModelConfig
from nmt.search import SOURCE

ATTENTION_TYPES = ("none", "additive", "dot", "general")
# State tensors each recurrent cell carries, hidden state h first: GRU (h,), LSTM (h, c).
CELL_STATES = {"gru": 1, "lstm": 2}
GRU_VARIANTS = ("reset_after", "reset_before")
# Large negative score for padded source positions. Scores are float32 when masked, so this
# neither overflows in float16 nor gives NaN (no row is ever fully masked, see source_mask).
_MASK_SCORE = -1e9

Tensor = Any  # a backend tensor (tf.Tensor, jax.Array) or a KerasTensor


def source_mask(src_ids: Tensor) -> Tensor:
    """Boolean mask of real (non-padding) source positions.

    Position 0 always counts as real: a fully masked row would make the cuDNN GRU kernel
    fail and the attention softmax undefined, so an empty (all-padding) source is read as
    a single padding token instead. Sources must be right-padded.

    Args:
        src_ids: `(batch, src_len)` token ids, padded with `PAD_ID`.

    Returns:
        `(batch, src_len)` bool tensor.
    """
    first = ops.equal(ops.arange(ops.shape(src_ids)[1]), 0)
    return ops.logical_or(ops.not_equal(src_ids, PAD_ID), ops.expand_dims(first, 0))


def _warn_unfused(cfg: ModelConfig) -> None:
    reasons = []
    if cfg.recurrent_dropout > 0:
        reasons.append(f"model.recurrent_dropout={cfg.recurrent_dropout}")
    if cfg.cell == "gru" and cfg.gru_variant == "reset_before":
        reasons.append("model.gru_variant='reset_before'")
    if cfg.input_feeding:
        reasons.append("model.input_feeding")
    for reason in reasons:
        # One call site, so Python's default warning filter shows each once per process.
        warnings.warn(
            f"{reason} disables the fused (cuDNN) {cfg.cell.upper()} kernel; "
            "training will be much slower on GPU.",
            UserWarning,
            stacklevel=2,
        )


def _check_cell(cell: str, gru_variant: str) -> None:
    if cell not in CELL_STATES:
        raise ValueError(f"unknown cell {cell!r}; choose one of {tuple(CELL_STATES)}")
    if gru_variant not in GRU_VARIANTS:
        raise ValueError(f"unknown gru_variant {gru_variant!r}; choose one of {GRU_VARIANTS}")


def _word_dropout(rate: float, policy: Any) -> keras.layers.Layer:
    """Drops whole tokens: one mask value per (sentence, position), shared by all features."""
    return keras.layers.Dropout(
        rate, noise_shape=(None, None, 1), name="word_dropout", dtype=policy
    )


def _rnn(
    cell: str,
    gru_variant: str,
    units: int,
    recurrent_dropout: float,
    name: str,
    dtype: Any,
    **kwargs: Any,
) -> keras.layers.RNN:
    """A GRU or LSTM layer with every setting the fused cuDNN kernel needs spelled out.

    A `reset_before` GRU has no fused kernel; Keras then runs its generic loop.
    """
    _check_cell(cell, gru_variant)
    settings = dict(
        activation="tanh",
        recurrent_activation="sigmoid",
        use_bias=True,
        unroll=False,
        recurrent_dropout=recurrent_dropout,
        return_sequences=True,
        # cuDNN writes zeros at padded steps; the generic loop must do the same.
        zero_output_for_mask=True,
        name=name,
        dtype=dtype,
        **kwargs,
    )
    if cell == "lstm":
        return LSTM(units, **settings)
    return GRU(units, reset_after=gru_variant == "reset_after", **settings)


class _InputsProjectedOnce(keras.layers.RNN):
    """The loop `GRU` and `LSTM` below run where the fused cuDNN kernel is not used (CPUs,
    `reset_before`): Keras' loop with the input product taken out of it.

    Keras' own loop multiplies each position's input by the kernel inside the recurrence: one
    small product per step (64 x 768 @ 768 x 1536 for the attention config's decoder). Here
    the inputs of all positions are multiplied at once, a large product that runs at about
    twice the FLOP rate on our CPUs (scripts/bench_matmul.py), and only the recurrent product
    stays in the loop. The arithmetic is that of Keras' cells (implementation 2), so weights
    are the same variables as before. This class sits between keras.layers.GRU (LSTM) and
    keras.layers.RNN in the method resolution order, so the `super().inner_loop(...)` that
    those classes fall back to when cuDNN is unavailable lands here.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        if cell.dropout or (training and cell.recurrent_dropout):
            return super().inner_loop(sequences, initial_state, mask, training)  # per-step masks
        projected = ops.matmul(sequences, cell.kernel) + self._input_bias()
        states = (
            list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        )
        return keras_backend.rnn(
            self._recurrence,
            projected,
            states,
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=sequences.shape[1],
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )


@keras.saving.register_keras_serializable(package="nmt")
class GRU(keras.layers.GRU, _InputsProjectedOnce):
    """keras.layers.GRU, its input product out of the loop (`_InputsProjectedOnce`)."""

    def _input_bias(self) -> Tensor:
        return self.cell.bias[0] if self.cell.reset_after else self.cell.bias

    def _recurrence(self, x: Tensor, states: list) -> tuple[Tensor, list]:
        cell, (h,) = self.cell, states
        x_z, x_r, x_h = ops.split(x, 3, axis=-1)
        if cell.reset_after:
            inner = ops.matmul(h, cell.recurrent_kernel) + cell.bias[1]
            h_z, h_r, h_h = ops.split(inner, 3, axis=-1)
        else:
            h_z, h_r = ops.split(ops.matmul(h, cell.recurrent_kernel[:, : 2 * cell.units]), 2, -1)
        z = cell.recurrent_activation(x_z + h_z)
        r = cell.recurrent_activation(x_r + h_r)
        if cell.reset_after:
            h_h = r * h_h
        else:
            h_h = ops.matmul(r * h, cell.recurrent_kernel[:, 2 * cell.units :])
        h = z * h + (1 - z) * cell.activation(x_h + h_h)
        return h, [h]


@keras.saving.register_keras_serializable(package="nmt")
class LSTM(keras.layers.LSTM, _InputsProjectedOnce):
    """keras.layers.LSTM, its input product out of the loop (`_InputsProjectedOnce`)."""

    def _input_bias(self) -> Tensor:
        return self.cell.bias

    def _recurrence(self, x: Tensor, states: list) -> tuple[Tensor, list]:
        cell, (h, c) = self.cell, states
        z = ops.split(x + ops.matmul(h, cell.recurrent_kernel), 4, axis=-1)
        c, o = cell._compute_carry_and_output_fused(z, c)
        h = o * cell.activation(c)
        return h, [h, c]


@keras.saving.register_keras_serializable(package="nmt")
class Maxout(keras.layers.Layer):
    """Maxout over adjacent pairs of units (`s_i = max(s'_{2i-1}, s'_{2i})`, pool size 2)."""

    def call(self, inputs: Tensor) -> Tensor:
        """Maps `(..., 2 * units)` to `(..., units)`."""
        return ops.maximum(inputs[..., 0::2], inputs[..., 1::2])

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        last = input_shape[-1]
        return (*input_shape[:-1], None if last is None else last // 2)


@keras.saving.register_keras_serializable(package="nmt")
class TiedEmbedding(keras.layers.Layer):
    """An embedding that doubles as the output projection (`logits = x E^T + b`).

    The weights never autocast, so under mixed precision the lookup is cast to the compute
    dtype while the reverse projection runs entirely in float32, whether the layer is
    called inside a mixed-precision parent or directly (single decoding steps).
    """

    def __init__(self, vocab_size: int, embedding_dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim

    def build(self, input_shape: Any = None) -> None:
        self.embeddings = self.add_weight(
            shape=(self.vocab_size, self.embedding_dim),
            initializer="uniform",
            name="embeddings",
            autocast=False,
        )
        self.output_bias = self.add_weight(
            shape=(self.vocab_size,), initializer="zeros", name="output_bias", autocast=False
        )

    def call(self, inputs: Tensor, reverse: bool = False) -> Tensor:
        """Embeds or projects.

        Args:
            inputs: ids `(...)`, or with `reverse` features `(..., embedding_dim)`.
            reverse: project to the vocabulary instead of looking up.

        Returns:
            `(..., embedding_dim)` in the compute dtype, or float32 logits `(..., vocab)`.
        """
        if not reverse:
            return ops.cast(ops.take(self.embeddings, inputs, axis=0), self.compute_dtype)
        x = ops.cast(inputs, "float32")
        return ops.matmul(x, ops.transpose(self.embeddings)) + self.output_bias

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
        }


@keras.saving.register_keras_serializable(package="nmt")
class Attention(keras.layers.Layer):
    """Attention of decoder states over all encoder states, after the decoder GRU.

    - `additive` (Bahdanau): `score(h'_t, h_j) = v^T tanh(W h'_t + U h_j)`.
    - `dot` (Luong): `h'_t . h_j`, with `h_j` projected to the decoder size when they differ.
    - `general` (Luong): `h'_t^T W_a h_j`.

    Keys (`U h_j`, `W_a h_j`, ...) depend only on the source, so they are computed once per
    sentence with `keys()` and kept in the decoding state.
    """

    def __init__(self, kind: str, units: int, query_dim: int, value_dim: int, **kwargs: Any):
        super().__init__(**kwargs)
        if kind not in ATTENTION_TYPES[1:]:
            raise ValueError(f"unknown attention {kind!r}; choose one of {ATTENTION_TYPES[1:]}")
        self.kind, self.units = kind, units
        self.query_dim, self.value_dim = query_dim, value_dim
        dense = dict(use_bias=False, dtype=self.dtype_policy)
        self.key_proj = None
        self.query_proj = self.score_proj = None
        if kind == "additive":
            self.query_proj = keras.layers.Dense(units, name="query_proj", **dense)
            self.key_proj = keras.layers.Dense(units, name="key_proj", **dense)
            self.score_proj = keras.layers.Dense(1, name="score_proj", **dense)
        elif kind == "general" or value_dim != query_dim:
            self.key_proj = keras.layers.Dense(query_dim, name="key_proj", **dense)

    def build(self, input_shape: Any = None) -> None:
        """Builds the projections from the dimensions given at construction."""
        for proj, width in [
            (self.query_proj, self.query_dim),
            (self.key_proj, self.value_dim),
            (self.score_proj, self.units),
        ]:
            if proj is not None and not proj.built:  # keys() may have built key_proj
                proj.build((None, width))

    def keys(self, values: Tensor) -> Tensor:
        """Source-side part of the score: `(batch, src_len, value_dim) -> (batch, src_len, k)`."""
        return values if self.key_proj is None else self.key_proj(values)

    def call(
        self, query: Tensor, keys: Tensor, values: Tensor, src_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Attends from every decoder position to every source position.

        Args:
            query: `(batch, tgt_len, query_dim)` decoder GRU states.
            keys: `(batch, src_len, k)` from `keys()`.
            values: `(batch, src_len, value_dim)` encoder states.
            src_mask: `(batch, src_len)` bool, False on padding.

        Returns:
            The attention context `(batch, tgt_len, value_dim)` and the float32 weights
            `(batch, tgt_len, src_len)` (rows sum to 1, exactly 0 on padding).
        """
        scores = ops.cast(self._scores(query, keys), "float32")
        scores = ops.where(ops.expand_dims(src_mask, 1), scores, _MASK_SCORE)
        weights = ops.softmax(scores, axis=-1)
        context = ops.matmul(ops.cast(weights, values.dtype), values)
        return context, weights

    def _scores(self, query: Tensor, keys: Tensor) -> Tensor:
        if self.kind == "additive":
            hidden = ops.expand_dims(self.query_proj(query), 2) + ops.expand_dims(keys, 1)
            # (batch, tgt_len, src_len, units) -> (batch, tgt_len, src_len)
            return ops.squeeze(self.score_proj(ops.tanh(hidden)), -1)
        return ops.matmul(query, ops.transpose(keys, (0, 2, 1)))

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "kind": self.kind,
            "units": self.units,
            "query_dim": self.query_dim,
            "value_dim": self.value_dim,
        }


@keras.saving.register_keras_serializable(package="nmt")
class Encoder(keras.layers.Layer):
    """Source embedding -> stacked (bi)GRU or LSTM -> context vector `c = tanh(V h_T)`."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        units: int,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        cell: str = "gru",
        gru_variant: str = "reset_after",
        word_dropout: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.vocab_size, self.embedding_dim, self.units = vocab_size, embedding_dim, units
        self.num_layers, self.bidirectional = num_layers, bidirectional
        self.dropout_rate, self.recurrent_dropout = dropout, recurrent_dropout
        self.word_dropout_rate = word_dropout
        self.cell, self.gru_variant = cell, gru_variant
        policy = self.dtype_policy
        self.embedding = keras.layers.Embedding(
            vocab_size, embedding_dim, name="embedding", dtype=policy
        )
        self.dropout = keras.layers.Dropout(dropout, name="dropout", dtype=policy)
        self.word_dropout = _word_dropout(word_dropout, policy)
        self.rnns = [self._make_rnn(i) for i in range(num_layers)]
        self.context_proj = keras.layers.Dense(
            self.output_dim, activation="tanh", name="context", dtype=policy
        )

    @property
    def output_dim(self) -> int:
        """Size of each encoder state and of the context vector."""
        return self.units * (2 if self.bidirectional else 1)

    def _make_rnn(self, index: int) -> keras.layers.Layer:
        name = f"{self.cell}_{index}"
        rnn = _rnn(
            self.cell,
            self.gru_variant,
            self.units,
            self.recurrent_dropout,
            name,
            self.dtype_policy,
            return_state=True,
        )
        if not self.bidirectional:
            return rnn
        return keras.layers.Bidirectional(
            rnn, merge_mode="concat", name=f"bi{name}", dtype=self.dtype_policy
        )

    def call(self, src_ids: Tensor, training: bool = False) -> dict[str, Tensor]:
        """Encodes a right-padded batch.

        Args:
            src_ids: `(batch, src_len)` int token ids.
            training: enables dropout.

        Returns:
            `enc_states` `(batch, src_len, enc_dim)` (zeros on padding), `src_mask`
            `(batch, src_len)` bool and `context` `(batch, enc_dim)`.
        """
        mask = source_mask(src_ids)
        x = self.word_dropout(self.embedding(src_ids), training=training)
        x = self.dropout(x, training=training)
        for index, rnn in enumerate(self.rnns):
            if index > 0:
                x = self.dropout(x, training=training)
            outputs = rnn(x, mask=mask, training=training)
            x, final_states = outputs[0], list(outputs[1:])
        # Per direction the states come h first; an LSTM's memory cell c is left out.
        last_h = final_states[:: CELL_STATES[self.cell]]
        last = ops.concatenate(last_h, axis=-1) if len(last_h) > 1 else last_h[0]
        return {"enc_states": x, "src_mask": mask, "context": self.context_proj(last)}

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "num_layers": self.num_layers,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout_rate,
            "recurrent_dropout": self.recurrent_dropout,
            "cell": self.cell,
            "gru_variant": self.gru_variant,
            "word_dropout": self.word_dropout_rate,
        }


@keras.saving.register_keras_serializable(package="nmt")
class Decoder(keras.layers.Layer):
    """GRU (or LSTM) decoder reading `[e(y_{t-1}); c]` (input feeding: `[...; a_{t-1}]`),
    optional attention, maxout readout.

    `call` runs teacher forcing over a whole target sequence; `step` runs one position with
    the same weights (the recurrent layer's own cell), for search.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        units: int,
        context_dim: int,
        maxout_units: int,
        attention: str = "none",
        attention_units: int = 256,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        tie_embeddings: bool = False,
        cell: str = "gru",
        gru_variant: str = "reset_after",
        input_feeding: bool = False,
        word_dropout: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if attention not in ATTENTION_TYPES:
            raise ValueError(f"unknown attention {attention!r}; choose one of {ATTENTION_TYPES}")
        if input_feeding and attention == "none":
            raise ValueError("input_feeding needs attention")
        if input_feeding and recurrent_dropout:
            raise ValueError("input_feeding does not support recurrent_dropout")
        self.vocab_size, self.embedding_dim, self.units = vocab_size, embedding_dim, units
        self.context_dim, self.maxout_units = context_dim, maxout_units
        self.attention_type, self.attention_units = attention, attention_units
        self.dropout_rate, self.recurrent_dropout = dropout, recurrent_dropout
        self.tie_embeddings = tie_embeddings
        self.cell, self.gru_variant = cell, gru_variant
        self.input_feeding = input_feeding
        self.word_dropout_rate = word_dropout
        self._make_layers()

    @property
    def rnn(self) -> keras.layers.RNN:
        """The recurrent layer (GRU or LSTM).

        It is stored in the attribute named after the cell (`self.gru`, `self.lstm`): weights
        files address layers by attribute name, so GRU runs trained before `model.cell`
        existed keep loading. Keras saves a layer once, under the first name it visits in
        sorted order, and "gru" and "lstm" sort before "rnn".
        """
        return getattr(self, self.cell)

    def _make_layers(self) -> None:
        policy, readout = self.dtype_policy, 2 * self.maxout_units
        if self.tie_embeddings:
            self.embedding = TiedEmbedding(
                self.vocab_size, self.embedding_dim, name="embedding", dtype=policy
            )
        else:
            self.embedding = keras.layers.Embedding(
                self.vocab_size, self.embedding_dim, name="embedding", dtype=policy
            )
        self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout", dtype=policy)
        self.word_dropout = _word_dropout(self.word_dropout_rate, policy)
        self.init_proj = keras.layers.Dense(
            self.units, activation="tanh", name="init_state", dtype=policy
        )
        setattr(  # under the cell's name: see `rnn`
            self,
            self.cell,
            _rnn(
                self.cell, self.gru_variant, self.units, self.recurrent_dropout, self.cell, policy
            ),
        )
        self.attention = None
        if self.attention_type != "none":
            self.attention = Attention(
                self.attention_type,
                self.attention_units,
                self.units,
                self.context_dim,
                name="attention",
                dtype=policy,
            )
        self.readout_h = keras.layers.Dense(readout, name="readout_h", dtype=policy)
        no_bias = dict(use_bias=False, dtype=policy)
        self.readout_y = keras.layers.Dense(readout, name="readout_y", **no_bias)
        self.readout_c = keras.layers.Dense(readout, name="readout_c", **no_bias)
        self.readout_a = None
        if self.attention is not None:
            self.readout_a = keras.layers.Dense(readout, name="readout_a", **no_bias)
        self.maxout = Maxout(name="maxout", dtype=policy)
        self._make_output_layers()

    def _make_output_layers(self) -> None:
        self.tie_proj = self.output_proj = None
        if not self.tie_embeddings:
            # float32 so mixed precision keeps logits and softmax in float32.
            self.output_proj = keras.layers.Dense(self.vocab_size, name="output", dtype="float32")
        elif self.maxout_units != self.embedding_dim:
            self.tie_proj = keras.layers.Dense(
                self.embedding_dim, use_bias=False, name="tie_proj", dtype=self.dtype_policy
            )

    def build(self, input_shape: Any = None) -> None:
        """Sublayers build at their first call, except those of the input-fed loop:
        `_input_fed_rnn` reads the recurrent layer's kernels without calling the layer, and
        calls the attention inside a backend loop, where no variable should be created.
        (Without this method Keras would build by tracing `call` symbolically, which reads
        those kernels before they exist.)"""
        if self.input_feeding:
            self.rnn.build((None, None, self.embedding_dim + 2 * self.context_dim))
            self.attention.build()

    def initial_state(self, encoded: dict[str, Tensor]) -> dict[str, Tensor]:
        """Decoder state before the first target token; see `Seq2Seq.initial_state`."""
        context = encoded["context"]
        h0 = self.init_proj(context)
        # An LSTM's memory cell starts empty: the LSTM then shares every non-recurrent weight
        # (V' included) with the GRU model, and reads c at every step to fill its cell.
        dec_state = (h0,) + (ops.zeros_like(h0),) * (CELL_STATES[self.cell] - 1)
        source = {"context": context, "readout_ctx": self.readout_c(context)}
        state = {"dec_state": dec_state, SOURCE: source}
        if self.attention is not None:
            values, mask = encoded["enc_states"], encoded["src_mask"]
            source.update(enc_states=values, attn_keys=self.attention.keys(values), src_mask=mask)
            state["attn_weights"] = ops.zeros_like(mask, dtype="float32")
        if self.input_feeding:
            state["attn_context"] = ops.zeros_like(context)  # a_0: nothing attended yet
        return state

    def call(
        self,
        tgt_in_ids: Tensor,
        state: dict[str, Tensor],
        training: bool = False,
        return_attention: bool = False,
    ) -> dict[str, Tensor]:
        """Teacher forcing over a whole (right-padded) target sequence.

        Args:
            tgt_in_ids: `(batch, tgt_len)` decoder inputs (BOS, y_1, ..., y_{n-1}, PAD...).
            state: from `initial_state`.
            training: enables dropout.
            return_attention: also return the attention weights (attention models only).

        Returns:
            `logits` float32 `(batch, tgt_len, vocab)`, and with `return_attention`
            `attention` float32 `(batch, tgt_len, src_len)`.
        """
        emb = self.word_dropout(self.embedding(tgt_in_ids), training=training)
        emb = self.dropout(emb, training=training)
        source = state[SOURCE]
        outputs = {}
        attn_context = weights = None
        if self.input_feeding:
            hidden, attn_context = self._input_fed_rnn(emb, state)
            if return_attention:  # a second pass: the loop keeps only the contexts
                weights = self._attend(hidden, source)[1]
        else:
            # c is constant over time: broadcast it so one fused GRU call covers all steps.
            context_seq = ops.zeros_like(emb[..., :1]) + ops.expand_dims(source["context"], 1)
            # No target mask: positions after the end only produce ignored (finite) logits,
            # and a maskless call always qualifies for the fused kernel.
            hidden = self.rnn(
                ops.concatenate([emb, context_seq], axis=-1),
                initial_state=list(state["dec_state"]),
                training=training,
            )
            if self.attention is not None:
                attn_context, weights = self._attend(hidden, source)
        if return_attention:
            outputs["attention"] = weights
        readout_ctx = ops.expand_dims(source["readout_ctx"], 1)
        outputs["logits"] = self._logits(hidden, emb, readout_ctx, attn_context, training)
        return outputs

    def _attend(self, hidden: Tensor, source: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Attention context and weights for decoder states `(batch, tgt_len, units)`."""
        return self.attention(hidden, source["attn_keys"], source["enc_states"], source["src_mask"])

    def _attend_one(self, hidden: Tensor, source: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """`_attend` for one position: `(batch, units)` -> `(batch, ...)`."""
        context, weights = self._attend(ops.expand_dims(hidden, 1), source)
        return ops.squeeze(context, 1), ops.squeeze(weights, 1)

    def _input_fed_rnn(self, emb: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Teacher forcing with input feeding: step t reads `[e_t; c; a_{t-1}]`.

        The attention context feeds back into the recurrent input, so no fused kernel can run
        the sequence. The kernel's rows follow that order (as `step` concatenates): the
        shares of `e` (all positions at once, as in `_InputsProjectedOnce`) and of `c` (once
        per sentence) are taken outside the loop; only `a_{t-1}`'s and the recurrence stay
        in it. Returns the decoder states and the attention contexts, `(batch, tgt_len, .)`.
        """
        rnn, source, e = self.rnn, state[SOURCE], self.embedding_dim
        kernel = rnn.cell.kernel
        per_sentence = ops.matmul(source["context"], kernel[e : e + self.context_dim])
        projected = ops.matmul(emb, kernel[:e]) + ops.expand_dims(per_sentence, 1)
        projected = projected + rnn._input_bias()
        fed_kernel = kernel[e + self.context_dim :]

        def one_step(x: Tensor, states: list) -> tuple[Tensor, list]:
            *cell_states, attn_context = states
            hidden, cell_states = rnn._recurrence(
                x + ops.matmul(attn_context, fed_kernel), cell_states
            )
            attn_context = self._attend_one(hidden, source)[0]
            return ops.concatenate([hidden, attn_context], axis=-1), [*cell_states, attn_context]

        _, outputs, _ = keras_backend.rnn(
            one_step,
            projected,
            [*state["dec_state"], state["attn_context"]],
            input_length=emb.shape[1],
        )
        return outputs[..., : self.units], outputs[..., self.units :]

    def step(self, token_ids: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One decoding step; see `Seq2Seq.decode_step`."""
        emb = self.embedding(token_ids)
        source = state[SOURCE]
        fed = [state["attn_context"]] if self.input_feeding else []
        # The order `_input_fed_rnn` splits the kernel by.
        rnn_input = ops.concatenate([emb, source["context"], *fed], axis=-1)
        hidden, dec_state = self.rnn.cell(rnn_input, list(state["dec_state"]), training=False)
        # A tuple, as in `initial_state`: search loops need the same structure every step.
        new_state = dict(state, dec_state=tuple(dec_state))
        attn_context = None
        if self.attention is not None:
            attn_context, new_state["attn_weights"] = self._attend_one(hidden, source)
            if self.input_feeding:
                new_state["attn_context"] = attn_context
        logits = self._logits(hidden, emb, source["readout_ctx"], attn_context, False)
        return logits, new_state

    def _logits(
        self,
        hidden: Tensor,
        emb: Tensor,
        readout_ctx: Tensor,
        attn_context: Tensor | None,
        training: bool,
    ) -> Tensor:
        """Readout `O_h h' + O_y e + O_c c (+ O_a a)` -> maxout -> dropout -> float32 logits."""
        readout = self.readout_h(hidden) + self.readout_y(emb) + readout_ctx
        if attn_context is not None:
            readout = readout + self.readout_a(attn_context)
        features = self.dropout(self.maxout(readout), training=training)
        if self.output_proj is not None:
            return self.output_proj(features)
        if self.tie_proj is not None:
            features = self.tie_proj(features)
        return self.embedding(features, reverse=True)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim,
            "units": self.units,
            "context_dim": self.context_dim,
            "maxout_units": self.maxout_units,
            "attention": self.attention_type,
            "attention_units": self.attention_units,
            "dropout": self.dropout_rate,
            "recurrent_dropout": self.recurrent_dropout,
            "tie_embeddings": self.tie_embeddings,
            "cell": self.cell,
            "gru_variant": self.gru_variant,
            "input_feeding": self.input_feeding,
            "word_dropout": self.word_dropout_rate,
        }


@keras.saving.register_keras_serializable(package="nmt")
class Seq2Seq(keras.Model):
    """Cho et al. (2014) encoder-decoder; `call` is teacher-forced, search uses the
    `encode` / `initial_state` / `decode_step` trio.

    Args:
        model_config: a `ModelConfig` (or its dict form, as stored by `get_config`).
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size.
        **kwargs: `keras.Model` arguments (`name`, `dtype` policy, ...). Sub-layers use the
            model's dtype policy, except the float32 output projection.
    """

    def __init__(
        self,
        model_config: ModelConfig | dict,
        src_vocab_size: int,
        tgt_vocab_size: int,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        cfg = model_config if isinstance(model_config, ModelConfig) else ModelConfig(**model_config)
        if cfg.attention not in ATTENTION_TYPES:
            raise ValueError(
                f"unknown attention {cfg.attention!r}; choose one of {ATTENTION_TYPES}"
            )
        _check_cell(cfg.cell, cfg.gru_variant)
        _warn_unfused(cfg)
        self.model_config = cfg
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.encoder = Encoder(
            src_vocab_size,
            cfg.embedding_dim,
            cfg.encoder_units,
            num_layers=cfg.encoder_layers,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout,
            recurrent_dropout=cfg.recurrent_dropout,
            cell=cfg.cell,
            gru_variant=cfg.gru_variant,
            word_dropout=cfg.word_dropout,
            name="encoder",
            dtype=self.dtype_policy,
        )
        self.decoder = Decoder(
            tgt_vocab_size,
            cfg.embedding_dim,
            cfg.decoder_units,
            context_dim=self.encoder.output_dim,
            maxout_units=cfg.maxout_units,
            attention=cfg.attention,
            attention_units=cfg.attention_units,
            dropout=cfg.dropout,
            recurrent_dropout=cfg.recurrent_dropout,
            tie_embeddings=cfg.tie_embeddings,
            cell=cfg.cell,
            gru_variant=cfg.gru_variant,
            input_feeding=cfg.input_feeding,
            word_dropout=cfg.word_dropout,
            name="decoder",
            dtype=self.dtype_policy,
        )

    def build(self, input_shape: Any = None) -> None:
        """Creates every weight by running a tiny batch (shapes are not needed)."""
        src = ops.ones((1, 2), dtype="int32")
        self.decoder(src, self.decoder.initial_state(self.encoder(src)))

    def call(self, inputs: tuple[Tensor, Tensor], training: bool = False) -> Tensor:
        """Teacher-forced logits.

        Args:
            inputs: `(src_ids, tgt_in_ids)`, int `(batch, src_len)` and `(batch, tgt_len)`.
            training: enables dropout.

        Returns:
            float32 logits `(batch, tgt_len, tgt_vocab)`.
        """
        src_ids, tgt_in_ids = inputs
        return self._forward(src_ids, tgt_in_ids, training)["logits"]

    def _forward(
        self, src_ids: Tensor, tgt_in_ids: Tensor, training: bool, return_attention: bool = False
    ) -> dict:
        encoded = self.encoder(src_ids, training=training)
        state = self.decoder.initial_state(encoded)
        return self.decoder(tgt_in_ids, state, training=training, return_attention=return_attention)

    def encode(self, src_ids: Tensor, training: bool = False) -> dict[str, Tensor]:
        """Runs the encoder.

        Args:
            src_ids: `(batch, src_len)` int token ids, right-padded with `PAD_ID`.
            training: enables dropout.

        Returns:
            `enc_states` `(batch, src_len, enc_dim)`, `src_mask` `(batch, src_len)` bool,
            `context` `(batch, enc_dim)`; `enc_dim` is `encoder_units` times the number of
            directions.
        """
        return self.encoder(src_ids, training=training)

    def initial_state(self, encoded: dict[str, Tensor]) -> dict[str, Tensor]:
        """The decoder state for search: a dict, every leaf with batch leading.

        Keys: `dec_state`, a tuple of the decoder cell's states, `(h,)` for a GRU and
        `(h, c)` for an LSTM, each `(batch, decoder_units)`; with attention `attn_weights`
        `(batch, src_len)` float32 (the last step's attention; zeros before the first step);
        with input feeding `attn_context` `(batch, enc_dim)` (the last step's attention
        context, which the next step's GRU reads; zeros before the first step);
        and `source` (`nmt.search.SOURCE`: constant per sentence, so beam search never
        reorders it), a dict of `context` `(batch, enc_dim)`, `readout_ctx`
        `(batch, 2 * maxout_units)` (`O_c c`, precomputed) and, with attention,
        `enc_states` `(batch, src_len, enc_dim)`, `attn_keys` `(batch, src_len, k)` and
        `src_mask` `(batch, src_len)` bool. `decode_step` returns the same keys, shapes and
        dtypes, `source` unchanged.
        """
        return self.decoder.initial_state(encoded)

    def decode_step(
        self, token_ids: Tensor, state: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """One decoder step, with the weights of the teacher-forced path.

        Args:
            token_ids: `(batch,)` int32, the previous target token (BOS first).
            state: from `initial_state` or the previous `decode_step`.

        Returns:
            float32 logits `(batch, tgt_vocab)` and the new state.
        """
        return self.decoder.step(token_ids, state)

    def attention_weights(self, src_ids: Tensor, tgt_in_ids: Tensor) -> Tensor:
        """Teacher-forced attention weights, for plotting alignments.

        Args:
            src_ids: `(batch, src_len)` int token ids.
            tgt_in_ids: `(batch, tgt_len)` decoder inputs.

        Returns:
            float32 `(batch, tgt_len, src_len)`; rows sum to 1 over the source, 0 on padding.

        Raises:
            ValueError: the model has no attention (`model.attention: none`).
        """
        if self.decoder.attention is None:
            raise ValueError(
                "attention_weights needs a model with attention, but this model has "
                "model.attention='none'"
            )
        return self._forward(src_ids, tgt_in_ids, False, return_attention=True)["attention"]

    def encoder_gate_activations(self, src_ids: Tensor) -> dict[str, Tensor]:
        """Update and reset gates of the first (forward) encoder GRU layer.

        Runs the GRU recurrence from the layer's weights: `z = σ(x W_z + h U_z + b_z)`,
        `r = σ(x W_r + h U_r + b_r)`, `h = z ⊙ h_prev + (1 - z) ⊙ h~`, with
        `h~ = tanh(x W_h + b_h + r ⊙ (h U_h + b'_h))` (`reset_after`, two biases per gate)
        or `h~ = tanh(x W_h + (r ⊙ h) U_h + b_h)` (`reset_before`). Runs eagerly (a Python
        loop over positions); meant for notebooks.

        Args:
            src_ids: `(batch, src_len)` int token ids.

        Returns:
            `z`, `r` and `states` `(batch, src_len, units)` (gates are 0 on padding, where
            the state is carried over), and `src_mask` `(batch, src_len)`.

        Raises:
            ValueError: the model is an LSTM (`model.cell: lstm`), which has other gates.
        """
        if self.model_config.cell != "gru":
            raise ValueError(
                "encoder_gate_activations reads GRU update and reset gates, but this model "
                f"has model.cell={self.model_config.cell!r}"
            )
        rnn = self.encoder.rnns[0]
        cell = (rnn.forward_layer if self.encoder.bidirectional else rnn).cell
        inputs = ops.cast(self.encoder.embedding(src_ids), "float32")
        mask = source_mask(src_ids)
        bias = ops.convert_to_tensor(cell.bias)
        # reset_after: input and recurrent biases (2, 3 units); reset_before: one (3 units,).
        x_bias, h_bias = (bias[0], bias[1]) if cell.reset_after else (bias, 0.0)
        x_proj = ops.matmul(inputs, cell.kernel) + x_bias
        u_h = cell.recurrent_kernel[:, 2 * cell.units :]
        h = ops.zeros((ops.shape(inputs)[0], cell.units), dtype="float32")
        out: dict[str, list] = {"z": [], "r": [], "states": []}
        for t in range(ops.shape(inputs)[1]):
            x_z, x_r, x_h = ops.split(x_proj[:, t], 3, axis=-1)
            h_z, h_r, h_h = ops.split(ops.matmul(h, cell.recurrent_kernel) + h_bias, 3, axis=-1)
            z, r = ops.sigmoid(x_z + h_z), ops.sigmoid(x_r + h_r)
            h_h = r * h_h if cell.reset_after else ops.matmul(r * h, u_h)
            valid = ops.expand_dims(mask[:, t], -1)
            h = ops.where(valid, z * h + (1.0 - z) * ops.tanh(x_h + h_h), h)
            out["z"].append(ops.where(valid, z, 0.0))
            out["r"].append(ops.where(valid, r, 0.0))
            out["states"].append(h)
        result = {key: ops.stack(values, axis=1) for key, values in out.items()}
        result["src_mask"] = mask
        return result

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "model_config": dataclasses.asdict(self.model_config),
            "src_vocab_size": self.src_vocab_size,
            "tgt_vocab_size": self.tgt_vocab_size,
        }

    @classmethod
    def from_config(cls, config: dict) -> Seq2Seq:
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int) -> Seq2Seq:
    """Creates a `Seq2Seq` with all weights, under the current global dtype policy.

    Args:
        cfg: model settings.
        src_vocab_size: source vocabulary size (ids 0..size-1, PAD=0).
        tgt_vocab_size: target vocabulary size.

    Returns:
        The built model.
    """
    model = Seq2Seq(cfg, src_vocab_size, tgt_vocab_size, name="seq2seq")
    model.build()
    return model
