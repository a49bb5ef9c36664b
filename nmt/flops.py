"""Analytic training FLOPs per target token of the GRU encoder-decoder (`nmt.model`).

Used to turn measured target tokens/s into model FLOP/s and model FLOP utilisation (MFU).
Only matrix products count (one multiply-accumulate, MAC, = 2 FLOPs); embedding lookups,
biases, gate nonlinearities, maxout, masking and the softmax are left out, as is usual for
MFU. Names: `E` embedding_dim, `H` encoder_units, `D` directions (2 when bidirectional),
`C = D * H` encoder state and context size, `L` encoder_layers, `H'` decoder_units,
`R = 2 * maxout_units` readout width before maxout, `M` maxout_units, `A` attention_units,
`V` target vocabulary size, `S` source and `T` target tokens per sentence (EOS included;
the decoder runs over `T` positions, BOS + y), `G` gates of the recurrent cell: 3 for a GRU
(both `gru_variant`s: `r ⊙ (U h)` and `U (r ⊙ h)` cost the same product), 4 for an LSTM.

Forward MACs of one sentence:

- encoder, per source token and direction, layer `l` with input `in_l` (`E`, then `C`):
  `G (in_l H + H H)` (G gates, input and recurrent products) -> `S D sum_l G (in_l H + H^2)`;
- once per sentence: context `c = tanh(V h_T)`: `C C`; decoder init `tanh(V' c)`: `C H'`;
  `O_c c`: `C R`; attention keys over the source: additive `S C A`, general (or dot with
  `C != H'`) `S C H'`, dot otherwise 0;
- per target position: decoder GRU/LSTM over `[e(y); c]`: `G ((E + C) H' + H' H')` (input
  feeding reads `[e(y); c; a_{t-1}]`: `G ((E + 2 C) H' + H' H')`); readout
  `O_h h' + O_y e(y)`: `(H' + E) R`; output projection: `M V` (tied embeddings:
  `E V`, plus `M E` when `M != E`);
- per target position with attention: scores over the `S` source positions (additive:
  query `H' A` plus `v^T tanh(.)` `S A`; dot/general: `S H'`), context `S C`, and `O_a a`:
  `C R`.

Per target token: `forward = (encoder + once) / T + per_position`, training FLOPs
`= 3 * 2 * forward` (the backward pass costs twice the forward). For
configs/multi30k_en_de_attention.yaml (8000-piece vocabulary, Multi30k train with EOS:
`S` ~ 15.7, `T` ~ 16.2) this is ~34.5 MFLOP per target token; the output projection is
about 36% of it.
"""

from __future__ import annotations

from nmt.config import ModelConfig

FLOPS_PER_MAC = 2
TRAINING_OVER_FORWARD = 3  # forward + backward (gradients of inputs and of weights)


def forward_macs(
    cfg: ModelConfig, tgt_vocab_size: int, src_len: float, tgt_len: float
) -> dict[str, float]:
    """Forward multiply-accumulates of one sentence, by part (see the module docstring).

    Args:
        cfg: the model settings.
        tgt_vocab_size: target vocabulary size (the source one costs nothing: a lookup).
        src_len: source tokens per sentence (mean; EOS included).
        tgt_len: target tokens per sentence (mean; EOS included).

    Returns:
        `{"encoder", "sentence", "decoder_rnn", "attention", "readout", "output"}` MACs per
        sentence; their sum is the forward cost of the sentence.
    """
    e, h, d_units = cfg.embedding_dim, cfg.encoder_units, cfg.decoder_units
    gates = 4 if cfg.cell == "lstm" else 3
    directions = 2 if cfg.bidirectional else 1
    c, r, m = directions * h, 2 * cfg.maxout_units, cfg.maxout_units
    inputs = [e] + [c] * (cfg.encoder_layers - 1)
    encoder = src_len * directions * sum(gates * (i * h + h * h) for i in inputs)
    sentence = c * c + c * d_units + c * r
    attention = readout_a = 0.0
    if cfg.attention == "additive":
        sentence += src_len * c * cfg.attention_units
        a = cfg.attention_units
        attention = tgt_len * (d_units * a + src_len * a + src_len * c)
    elif cfg.attention != "none":
        if cfg.attention == "general" or c != d_units:
            sentence += src_len * c * d_units
        attention = tgt_len * (src_len * d_units + src_len * c)
    if cfg.attention != "none":
        readout_a = c * r
    if cfg.tie_embeddings:
        output = e * tgt_vocab_size + (m * e if m != e else 0)
    else:
        output = m * tgt_vocab_size
    rnn_inputs = e + c + (c if cfg.input_feeding else 0)  # [e(y); c (; a_{t-1})]
    return {
        "encoder": encoder,
        "sentence": sentence,
        "decoder_rnn": tgt_len * gates * (rnn_inputs * d_units + d_units * d_units),
        "attention": attention,
        "readout": tgt_len * ((d_units + e) * r + readout_a),
        "output": tgt_len * output,
    }


def train_flops_per_target_token(
    cfg: ModelConfig, tgt_vocab_size: int, src_len: float, tgt_len: float
) -> float:
    """Training FLOPs (forward + backward) per target token: `6 * forward MACs / tgt_len`.

    Args:
        cfg: the model settings.
        tgt_vocab_size: target vocabulary size.
        src_len: source tokens per sentence (mean; EOS included).
        tgt_len: target tokens per sentence (mean; EOS included); must be positive.

    Returns:
        FLOPs per target token, a float.
    """
    if tgt_len <= 0:
        raise ValueError(f"tgt_len must be positive, got {tgt_len}")
    macs = sum(forward_macs(cfg, tgt_vocab_size, src_len, tgt_len).values())
    return TRAINING_OVER_FORWARD * FLOPS_PER_MAC * macs / tgt_len


def breakdown(
    cfg: ModelConfig, tgt_vocab_size: int, src_len: float, tgt_len: float
) -> dict[str, float]:
    """Training FLOPs per target token by part (the parts of `forward_macs`)."""
    scale = TRAINING_OVER_FORWARD * FLOPS_PER_MAC / tgt_len
    parts = forward_macs(cfg, tgt_vocab_size, src_len, tgt_len)
    return {name: value * scale for name, value in parts.items()}
