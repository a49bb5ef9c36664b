"""Tests for nmt.model: shapes, masks, step/teacher-forcing equality, saving, overfitting."""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np
import pytest

from nmt import model as model_lib
from nmt.config import BOS_ID, EOS_ID, PAD_ID, ModelConfig
from nmt.model import Seq2Seq, build_model

ATTENTIONS = ["none", "additive", "dot", "general"]
# (model.cell, model.gru_variant) besides the default GRU.
OTHER_CELLS = [("lstm", "reset_after"), ("gru", "reset_before")]
SRC_VOCAB, TGT_VOCAB = 13, 11

# Tiny sizes keep the suite fast; encoder 8 (x2 directions) != decoder 24 exercises the
# projections in dot attention and the tie projection (maxout 8 != embedding 16).
TINY = ModelConfig(
    embedding_dim=16,
    encoder_units=8,
    encoder_layers=1,
    bidirectional=True,
    decoder_units=24,
    maxout_units=8,
    dropout=0.1,
    attention_units=8,
)


def tiny(**overrides) -> ModelConfig:
    return dataclasses.replace(TINY, **overrides)


def make(cfg: ModelConfig, seed: int = 0) -> Seq2Seq:
    keras.utils.set_random_seed(seed)
    return build_model(cfg, SRC_VOCAB, TGT_VOCAB)


# Right-padded batch: lengths 5, 2, 1 (source) and 4, 3, 2 (target inputs).
SRC = np.array([[5, 6, 7, 8, 9], [4, 10, 0, 0, 0], [12, 0, 0, 0, 0]], dtype="int32")
TGT_IN = np.array([[BOS_ID, 4, 5, 6], [BOS_ID, 7, 8, 0], [BOS_ID, 9, 0, 0]], dtype="int32")
SRC_LEN = (SRC != PAD_ID).sum(axis=1)


def pad(ids: np.ndarray, extra: int) -> np.ndarray:
    return np.pad(ids, ((0, 0), (0, extra)), constant_values=PAD_ID)


def np_(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def step_logits(model: Seq2Seq, src: np.ndarray, tgt_in: np.ndarray) -> np.ndarray:
    """Feeds the gold target inputs one step at a time: (batch, tgt_len, vocab)."""
    state = model.initial_state(model.encode(src))
    logits = []
    for t in range(tgt_in.shape[1]):
        step, state = model.decode_step(tgt_in[:, t], state)
        logits.append(np_(step))
    return np.stack(logits, axis=1)


def greedy(model: Seq2Seq, src: np.ndarray, max_len: int) -> np.ndarray:
    """Greedy decoding with decode_step: (batch, max_len) ids, no early stop."""
    state = model.initial_state(model.encode(src))
    token = np.full((src.shape[0],), BOS_ID, dtype="int32")
    out = []
    for _ in range(max_len):
        logits, state = model.decode_step(token, state)
        token = np_(logits).argmax(axis=-1).astype("int32")
        out.append(token)
    return np.stack(out, axis=1)


@pytest.mark.parametrize(
    "attention,bidirectional,layers,tie,cell",
    [
        ("none", True, 1, False, "gru"),
        ("none", False, 2, True, "gru"),
        ("additive", True, 2, False, "gru"),
        ("additive", False, 1, True, "gru"),
        ("dot", True, 1, True, "gru"),
        ("dot", False, 2, False, "gru"),
        ("general", True, 2, True, "gru"),
        ("general", False, 1, False, "gru"),
        ("additive", False, 2, True, "lstm"),
    ],
)
def test_shapes_and_dtypes(attention, bidirectional, layers, tie, cell):
    cfg = tiny(
        attention=attention,
        bidirectional=bidirectional,
        encoder_layers=layers,
        tie_embeddings=tie,
        cell=cell,
    )
    model = make(cfg)
    logits = model((SRC, TGT_IN))
    assert tuple(logits.shape) == (3, 4, TGT_VOCAB)
    assert logits.dtype == "float32"
    enc_dim = 8 * (2 if bidirectional else 1)
    encoded = model.encode(SRC)
    assert tuple(encoded["enc_states"].shape) == (3, 5, enc_dim)
    assert tuple(encoded["context"].shape) == (3, enc_dim)
    assert tuple(encoded["src_mask"].shape) == (3, 5)
    state = model.initial_state(encoded)
    keys, source_keys = {"dec_state", "source"}, {"context", "readout_ctx"}
    if attention != "none":
        keys, source_keys = (
            keys | {"attn_weights"},
            source_keys | {"enc_states", "attn_keys", "src_mask"},
        )
    assert set(state) == keys and set(state["source"]) == source_keys
    assert all(v.shape[0] == 3 for v in keras.tree.flatten(state))
    # (h,) for a GRU, (h, c) for an LSTM: a tuple either way, so search sees one structure.
    assert isinstance(state["dec_state"], tuple)
    assert [tuple(v.shape) for v in state["dec_state"]] == [(3, 24)] * (1 + (cell == "lstm"))
    step, new_state = model.decode_step(TGT_IN[:, 0], state)
    assert tuple(step.shape) == (3, TGT_VOCAB) and step.dtype == "float32"
    keras.tree.assert_same_structure(new_state, state)
    for old, new in zip(keras.tree.flatten(state), keras.tree.flatten(new_state), strict=True):
        assert tuple(new.shape) == tuple(old.shape) and new.dtype == old.dtype
    # Beam search never reorders `source` (nmt.search.SOURCE): a step must leave it as it is.
    assert new_state["source"] is state["source"]


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_extra_padding_changes_nothing(attention):
    model = make(tiny(attention=attention, encoder_layers=2))
    logits = np_(model((SRC, TGT_IN)))
    assert np.isfinite(logits).all()
    more_src = np_(model((pad(SRC, 3), TGT_IN)))
    np.testing.assert_allclose(more_src, logits, atol=1e-5)
    more_tgt = np_(model((SRC, pad(TGT_IN, 2))))
    assert np.isfinite(more_tgt).all()
    np.testing.assert_allclose(more_tgt[:, :4], logits, atol=1e-5)
    encoded = model.encode(pad(SRC, 3))
    np.testing.assert_allclose(
        np_(encoded["context"]), np_(model.encode(SRC)["context"]), atol=1e-5
    )


def test_all_padding_source_gives_finite_logits():
    model = make(tiny(attention="additive"))
    logits = np_(model((np.zeros((2, 4), "int32"), TGT_IN[:2])))
    assert np.isfinite(logits).all()


@pytest.mark.parametrize(
    "attention,bidirectional,tie,cell,variant",
    [
        *((a, bi, tie, "gru", "reset_after") for a in ATTENTIONS for bi, tie in [(1, 0), (0, 1)]),
        ("additive", 1, 0, *OTHER_CELLS[0]),
        ("none", 0, 1, *OTHER_CELLS[1]),
    ],
)
def test_decode_step_matches_teacher_forcing(attention, bidirectional, tie, cell, variant):
    cfg = tiny(
        attention=attention,
        bidirectional=bool(bidirectional),
        encoder_layers=2,
        tie_embeddings=bool(tie),
        cell=cell,
        gru_variant=variant,
    )
    model = make(cfg)
    teacher = np_(model((SRC, TGT_IN)))
    np.testing.assert_allclose(step_logits(model, SRC, TGT_IN), teacher, atol=1e-5)


@pytest.mark.parametrize(
    "attention,cell,variant",
    [
        ("additive", "gru", "reset_after"),
        ("general", "gru", "reset_before"),
        ("dot", "lstm", "reset_after"),
    ],
)
def test_input_feeding_decode_step_matches_teacher_forcing(tmp_path, attention, cell, variant):
    cfg = tiny(attention=attention, cell=cell, gru_variant=variant, input_feeding=True)
    model = make(cfg)
    state = model.initial_state(model.encode(SRC))
    np.testing.assert_array_equal(np_(state["attn_context"]), np.zeros((3, 16)))  # a_0
    teacher = np_(model((SRC, TGT_IN)))
    np.testing.assert_allclose(step_logits(model, SRC, TGT_IN), teacher, atol=1e-5)
    # The GRU reads [e(y); c; a]: a 16-wide context more than without input feeding.
    assert model.decoder.rnn.cell.kernel.shape[0] == 16 + 16 + 16
    path = tmp_path / "model.keras"
    model.save(path)
    np.testing.assert_array_equal(np_(keras.saving.load_model(path)((SRC, TGT_IN))), teacher)


def test_word_dropout_drops_whole_tokens_in_training_only():
    model = make(tiny(dropout=0.0, word_dropout=0.5))
    ids = np.full((64, 32), 5, dtype="int32")
    for layer in (model.encoder, model.decoder):
        embedded = np_(layer.embedding(ids))
        dropped = np_(layer.word_dropout(embedded, training=True))
        zeroed = (dropped == 0).all(axis=-1)
        # Every token is either gone entirely or kept whole, scaled by 1 / (1 - rate).
        np.testing.assert_allclose(dropped[~zeroed], 2 * embedded[~zeroed], rtol=1e-6)
        assert 0.4 < zeroed.mean() < 0.6
    # No weights of its own and no effect at inference: the same logits as without it.
    plain = make(tiny(dropout=0.0))
    plain.set_weights(model.get_weights())
    np.testing.assert_array_equal(np_(model((SRC, TGT_IN))), np_(plain((SRC, TGT_IN))))
    # In training both sides drop: freezing either leaves the logits different still.
    for side, other in ((model.encoder, model.decoder), (model.decoder, model.encoder)):
        other.word_dropout.rate = 0.0
        side.word_dropout.rate = 0.5
        trained = np_(model((SRC, TGT_IN), training=True))
        assert not np.allclose(trained, np_(plain((SRC, TGT_IN), training=True)))


def test_input_feeding_without_attention_or_with_recurrent_dropout_is_rejected():
    with pytest.raises(ValueError, match="input_feeding needs attention"):
        make(tiny(attention="none", input_feeding=True))
    with pytest.raises(ValueError, match="input_feeding does not support recurrent_dropout"):
        make(tiny(attention="dot", input_feeding=True, recurrent_dropout=0.1))


@pytest.mark.parametrize(
    "attention,feed", [("additive", False), ("dot", False), ("general", False), ("additive", True)]
)
def test_attention_weights_are_a_distribution_over_real_source(attention, feed):
    model = make(tiny(attention=attention, input_feeding=feed))
    weights = np_(model.attention_weights(SRC, TGT_IN))
    assert weights.shape == (3, 4, 5) and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
    for row, length in enumerate(SRC_LEN):
        assert (weights[row, :, length:] == 0).all()
    # The step path exposes the same alignments for search, at every position.
    state = model.initial_state(model.encode(SRC))
    for t in range(TGT_IN.shape[1]):
        _, state = model.decode_step(TGT_IN[:, t], state)
        np.testing.assert_allclose(np_(state["attn_weights"]), weights[:, t], atol=1e-5)


def test_attention_weights_without_attention_is_a_clear_error():
    with pytest.raises(ValueError, match="attention='none'"):
        make(tiny(attention="none")).attention_weights(SRC, TGT_IN)


@pytest.mark.parametrize(
    "field,value", [("attention", "bogus"), ("cell", "rnn"), ("gru_variant", "reset_never")]
)
def test_unknown_choices_are_rejected(field, value):
    with pytest.raises(ValueError, match=f"unknown {field} '{value}'"):
        build_model(tiny(**{field: value}), SRC_VOCAB, TGT_VOCAB)


@pytest.mark.parametrize(
    "attention,tie,cell",
    [("none", False, "gru"), ("general", True, "gru"), ("additive", False, "lstm")],
)
def test_save_and_reload_gives_identical_outputs(tmp_path, attention, tie, cell):
    cfg = tiny(attention=attention, encoder_layers=2, tie_embeddings=tie, cell=cell)
    model = make(cfg)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Seq2Seq)
    assert loaded.model_config == cfg
    np.testing.assert_array_equal(np_(loaded((SRC, TGT_IN))), np_(model((SRC, TGT_IN))))
    np.testing.assert_array_equal(
        step_logits(loaded, SRC, TGT_IN[:, :2]), step_logits(model, SRC, TGT_IN[:, :2])
    )


@pytest.mark.parametrize(
    "cell,layer_type", [("gru", keras.layers.GRU), ("lstm", keras.layers.LSTM)]
)
def test_every_recurrent_layer_is_cudnn_eligible(cell, layer_type):
    model = make(tiny(attention="dot", encoder_layers=2, cell=cell))
    rnns = [g for rnn in model.encoder.rnns for g in (rnn.forward_layer, rnn.backward_layer)]
    rnns.append(model.decoder.rnn)
    for rnn in rnns:
        assert isinstance(rnn, layer_type)
        assert rnn.cell.activation is keras.activations.tanh
        assert rnn.cell.recurrent_activation is keras.activations.sigmoid
        assert rnn.cell.use_bias and not rnn.unroll
        assert getattr(rnn.cell, "reset_after", True)  # GRUs only; LSTMs have no such flag
        assert rnn.cell.recurrent_dropout == 0 and rnn.use_cudnn == "auto"


def test_gru_variant_reset_before_is_the_papers_gru():
    model = make(tiny(gru_variant="reset_before", encoder_layers=2))
    rnns = [g for rnn in model.encoder.rnns for g in (rnn.forward_layer, rnn.backward_layer)]
    assert not any(rnn.cell.reset_after for rnn in [*rnns, model.decoder.rnn])


@pytest.mark.parametrize(
    "overrides,setting",
    [
        ({"recurrent_dropout": 0.2}, "model.recurrent_dropout=0.2"),
        ({"gru_variant": "reset_before"}, "model.gru_variant='reset_before'"),
        ({"attention": "dot", "input_feeding": True}, "model.input_feeding"),
    ],
)
def test_settings_without_a_fused_kernel_warn(overrides, setting):
    with pytest.warns(UserWarning, match=f"{re.escape(setting)} disables the fused"):
        model = make(tiny(**overrides))
    assert model.decoder.rnn.cell.recurrent_dropout == overrides.get("recurrent_dropout", 0)


def recurrent_weights(cell: str, variant: str, inputs: int, units: int) -> int:
    """Weights of one recurrent layer (one direction): kernels and biases of every gate."""
    gates = 4 if cell == "lstm" else 3
    extra_bias = gates * units if (cell, variant) == ("gru", "reset_after") else 0
    return gates * (inputs * units + units * units + units) + extra_bias


def count_recurrent(model: Seq2Seq) -> int:
    return sum(layer.count_params() for layer in [*model.encoder.rnns, model.decoder.rnn])


def test_parameter_counts_follow_the_formula():
    e, h, d = TINY.embedding_dim, TINY.encoder_units, TINY.decoder_units
    layers = [(e, h), (2 * h, h)] * 2 + [(e + 2 * h, d)]  # 2 layers x 2 directions, decoder
    recurrent, others = {}, set()
    for cell, variant in [("gru", "reset_after"), *OTHER_CELLS]:
        model = make(tiny(attention="additive", encoder_layers=2, cell=cell, gru_variant=variant))
        recurrent[cell, variant] = count_recurrent(model)
        expected = sum(recurrent_weights(cell, variant, i, units) for i, units in layers)
        assert recurrent[cell, variant] == expected, (cell, variant)
        others.add(model.count_params() - expected)
    assert len(others) == 1  # everything outside the recurrent layers is the same
    # An LSTM has 4/3 of the recurrent weights of the paper's GRU (one bias per gate).
    assert 3 * recurrent["lstm", "reset_after"] == 4 * recurrent["gru", "reset_before"]


# The weights file of a default (GRU) model, as runs trained before model.cell existed wrote
# it (Keras addresses weights by attribute path): it must keep loading.
CHO_WEIGHTS_LAYOUT = {
    "decoder/embedding/vars/0": (11, 16),
    "decoder/gru/cell/vars/0": (32, 72),
    "decoder/gru/cell/vars/1": (24, 72),
    "decoder/gru/cell/vars/2": (2, 72),
    "decoder/init_proj/vars/0": (16, 24),
    "decoder/init_proj/vars/1": (24,),
    "decoder/output_proj/vars/0": (8, 11),
    "decoder/output_proj/vars/1": (11,),
    "decoder/readout_c/vars/0": (16, 16),
    "decoder/readout_h/vars/0": (24, 16),
    "decoder/readout_h/vars/1": (16,),
    "decoder/readout_y/vars/0": (16, 16),
    "encoder/context_proj/vars/0": (16, 16),
    "encoder/context_proj/vars/1": (16,),
    "encoder/embedding/vars/0": (13, 16),
    **{
        f"encoder/rnns/bidirectional/{direction}_layer/cell/vars/{i}": shape
        for direction in ("forward", "backward")
        for i, shape in enumerate([(16, 24), (8, 24), (2, 24)])
    },
}


def test_default_model_keeps_the_weights_file_layout(tmp_path):
    import h5py

    path = tmp_path / "cho.weights.h5"
    make(tiny(attention="none", dropout=0.0)).save_weights(path)
    found = {}

    def add(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj.shape

    with h5py.File(path, "r") as f:
        f.visititems(add)
    assert found == CHO_WEIGHTS_LAYOUT


@pytest.mark.parametrize(
    "bidirectional,variant", [(True, "reset_after"), (False, "reset_after"), (True, "reset_before")]
)
def test_encoder_gates_reproduce_gru_states(bidirectional, variant):
    model = make(tiny(bidirectional=bidirectional, gru_variant=variant))
    gates = model.encoder_gate_activations(SRC)
    z, r = np_(gates["z"]), np_(gates["r"])
    assert z.shape == r.shape == (3, 5, 8)
    rnn = model.encoder.rnns[0]
    cell = (rnn.forward_layer if bidirectional else rnn).cell
    kernel, recurrent, bias = (np_(w) for w in (cell.kernel, cell.recurrent_kernel, cell.bias))
    # The candidate state's part of each weight: the last third.
    x = np_(model.encoder.embedding(SRC)) @ kernel[:, 16:] + bias[..., 16:].reshape(-1, 8)[0]
    expected = np_(model.encode(SRC)["enc_states"])[..., :8]
    h = np.zeros((3, 8), "float32")
    for t in range(5):
        if variant == "reset_after":
            candidate = np.tanh(x[:, t] + r[:, t] * (h @ recurrent[:, 16:] + bias[1, 16:]))
        else:  # the paper's form
            candidate = np.tanh(x[:, t] + (r[:, t] * h) @ recurrent[:, 16:])
        h_new = z[:, t] * h + (1 - z[:, t]) * candidate
        h = np.where((t < SRC_LEN)[:, None], h_new, h)
        valid = t < SRC_LEN
        np.testing.assert_allclose(h[valid], expected[valid, t], atol=1e-5)
    np.testing.assert_allclose(np_(gates["states"])[:, -1], h, atol=1e-6)


def test_encoder_gates_of_an_lstm_is_a_clear_error():
    with pytest.raises(ValueError, match="model.cell='lstm'"):
        make(tiny(cell="lstm")).encoder_gate_activations(SRC)


@pytest.fixture
def bfloat16_policy():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("tie,feed", [(False, False), (True, False), (False, True)])
def test_mixed_bfloat16_keeps_logits_float32(bfloat16_policy, tie, feed):
    cfg = tiny(attention="additive", tie_embeddings=tie, input_feeding=feed)
    model = make(cfg)
    assert model.decoder.rnn.compute_dtype == "bfloat16"
    logits = model((SRC, TGT_IN))
    assert logits.dtype == "float32" and np.isfinite(np_(logits)).all()
    state = model.initial_state(model.encode(SRC))
    step, new_state = model.decode_step(TGT_IN[:, 0], state)
    assert step.dtype == "float32"
    assert all(
        new.dtype == old.dtype
        for old, new in zip(keras.tree.flatten(state), keras.tree.flatten(new_state), strict=True)
    )
    assert model.attention_weights(SRC, TGT_IN).dtype == "float32"


REVERSAL_VOCAB = 12


def reversal_data(n: int, seed: int = 0, max_len: int = 6):
    """Random sequences over ids 4..11 (length 3..max_len) and their reversals + EOS."""
    rng = np.random.default_rng(seed)
    src = np.zeros((n, max_len), "int32")
    tgt_in = np.zeros((n, max_len + 1), "int32")
    tgt_out = np.zeros((n, max_len + 1), "int32")
    for i in range(n):
        length = rng.integers(3, max_len + 1)
        seq = rng.integers(4, REVERSAL_VOCAB, length)
        src[i, :length] = seq
        tgt_in[i, 0], tgt_in[i, 1 : length + 1] = BOS_ID, seq[::-1]
        tgt_out[i, :length], tgt_out[i, length] = seq[::-1], EOS_ID
    return src, tgt_in, tgt_out


def compiled(attention: str, lr: float, **overrides) -> Seq2Seq:
    cfg = ModelConfig(
        embedding_dim=16,
        encoder_units=32,
        decoder_units=64,
        maxout_units=32,
        attention=attention,
        attention_units=32,
        dropout=0.0,
        **overrides,
    )
    keras.utils.set_random_seed(0)
    model = build_model(cfg, REVERSAL_VOCAB, REVERSAL_VOCAB)
    model.compile(
        optimizer=keras.optimizers.Adam(lr, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD_ID),
        # XLA compilation costs more than it saves on these tiny TF runs; JAX needs jit.
        jit_compile=keras.backend.backend() != "tensorflow",
    )
    return model


def test_attention_model_learns_to_reverse_exactly():
    src, tgt_in, tgt_out = reversal_data(2000)
    model = compiled("dot", 5e-3)
    for _ in range(15):  # usually exact after 5-7 epochs
        model.fit((src, tgt_in), tgt_out, batch_size=64, epochs=1, verbose=0)
        pred = greedy(model, src, tgt_out.shape[1])
        exact = ((pred == tgt_out) | (tgt_out == PAD_ID)).all(axis=1)
        if exact.all():
            break
    assert exact.all(), f"greedy exact on {exact.mean():.1%} of training examples"


def test_cho_model_without_attention_reduces_loss():
    src, tgt_in, tgt_out = reversal_data(1000)
    model = compiled("none", 1e-2)
    if keras.backend.backend() == "tensorflow":
        # The training pipeline feeds ((src_ids, tgt_in_ids), tgt_out_ids) from tf.data.
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices(((src, tgt_in), tgt_out)).batch(64)
        history = model.fit(data, epochs=6, shuffle=False, verbose=0)
    else:
        history = model.fit((src, tgt_in), tgt_out, batch_size=64, epochs=6, verbose=0)
    losses = history.history["loss"]
    # Uniform guessing costs ln(12) ~ 2.5 nats per token.
    assert losses[-1] < 0.6 and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("setting", [{"gru_variant": "reset_before"}, {"input_feeding": True}])
def test_step_by_step_decoders_train(setting):
    """The default GRU trains in the tests above, the LSTM in the `tiny_lstm_run` fixture."""
    src, tgt_in, tgt_out = reversal_data(256)
    model = compiled("additive", 1e-2, **setting)
    history = model.fit((src, tgt_in), tgt_out, batch_size=32, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize(
    "ours, theirs, settings",
    [
        (model_lib.GRU, keras.layers.GRU, {"reset_after": True}),
        (model_lib.GRU, keras.layers.GRU, {"reset_after": False}),
        (model_lib.LSTM, keras.layers.LSTM, {}),
    ],
)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_rnn_with_inputs_projected_once_matches_keras(
    monkeypatch, ours, theirs, settings, go_backwards
):
    steps = []
    recurrence = ours._recurrence
    monkeypatch.setattr(ours, "_recurrence", lambda *a: (steps.append(1), recurrence(*a))[1])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 6, 5)).astype("float32")
    mask = np.arange(6)[None, :] < np.array([[6], [4], [1]])
    kwargs = dict(return_sequences=True, return_state=True, zero_output_for_mask=True, **settings)
    a, b = (
        ours(4, go_backwards=go_backwards, **kwargs),
        theirs(4, go_backwards=go_backwards, **kwargs),
    )
    a.build(x.shape)
    b.build(x.shape)
    b.set_weights([w + rng.normal(scale=0.3, size=w.shape) for w in a.get_weights()])
    a.set_weights(b.get_weights())
    for p, q in zip(a(x, mask=mask), b(x, mask=mask), strict=True):
        np.testing.assert_allclose(np_(p), np_(q), atol=1e-5)
    assert steps, "the projected loop did not run"
