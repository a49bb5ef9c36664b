"""The analytic FLOP count (nmt.flops) against hand counts and the model's own weights."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from nmt import config, flops
from nmt.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(
    embedding_dim=4,  # E
    encoder_units=2,  # H; bidirectional, so C = 4
    decoder_units=6,  # H'
    maxout_units=3,  # M; R = 6
    attention="additive",
    attention_units=5,  # A
)


def test_hand_count_additive_attention():
    # V = 10, S = 3 source tokens, T = 2 target tokens per sentence.
    # encoder: S * D * 3 * (E H + H H) = 3 * 2 * 3 * (8 + 4) = 216
    # once: C C + C H' + C R + keys S C A = 16 + 24 + 24 + 60 = 124
    # per target position: GRU 3 ((E + C) H' + H' H') = 3 (48 + 36) = 252;
    #   attention H' A + S A + S C = 30 + 15 + 12 = 57;
    #   readout H' R + E R + C R = 36 + 24 + 24 = 84; output M V = 30  -> 423
    # per target token: (216 + 124) / 2 + 423 = 593 MACs; training: 6 * 593 = 3558 FLOPs
    assert flops.train_flops_per_target_token(TINY, 10, 3, 2) == pytest.approx(3558)
    parts = flops.forward_macs(TINY, 10, 3, 2)
    assert parts == pytest.approx(
        {
            "encoder": 216,
            "sentence": 124,
            "decoder_rnn": 2 * 252,
            "attention": 2 * 57,
            "readout": 2 * 84,
            "output": 2 * 30,
        }
    )
    assert sum(flops.breakdown(TINY, 10, 3, 2).values()) == pytest.approx(3558)


def test_hand_count_without_attention():
    # encoder 216; once 16 + 24 + 24 = 64; per position 252 + (36 + 24) + 30 = 342
    # per target token: (216 + 64) / 2 + 342 = 482 MACs -> 2892 FLOPs
    cho = dataclasses.replace(TINY, attention="none")
    assert flops.train_flops_per_target_token(cho, 10, 3, 2) == pytest.approx(2892)


def test_hand_count_lstm():
    # Four gates instead of three in every recurrent product, nothing else changes:
    # encoder S * D * 4 * (E H + H H) = 3 * 2 * 4 * 12 = 288; once 124 (as for the GRU);
    # per target position: LSTM 4 ((E + C) H' + H' H') = 4 * 84 = 336, attention 57,
    # readout 84, output 30 -> 507. Per target token: (288 + 124) / 2 + 507 = 713 MACs.
    lstm = dataclasses.replace(TINY, cell="lstm")
    assert flops.train_flops_per_target_token(lstm, 10, 3, 2) == pytest.approx(6 * 713)
    # The paper's GRU form costs what the cuDNN form costs: U (r * h) vs r * (U h).
    paper = dataclasses.replace(TINY, gru_variant="reset_before")
    assert flops.train_flops_per_target_token(paper, 10, 3, 2) == pytest.approx(3558)


@pytest.mark.parametrize("kind", ["additive", "dot", "general"])
def test_attention_costs_more(kind):
    with_attention = dataclasses.replace(TINY, attention=kind)
    cho = dataclasses.replace(TINY, attention="none")
    assert flops.train_flops_per_target_token(
        with_attention, 10, 3, 2
    ) > flops.train_flops_per_target_token(cho, 10, 3, 2)


def test_deeper_encoder_and_tied_output():
    # A second encoder layer reads C = 4: S * D * 3 * (C H + H H) = 3 * 2 * 3 * (8 + 4) more.
    cho = dataclasses.replace(TINY, attention="none")
    deeper = dataclasses.replace(cho, encoder_layers=2)
    assert flops.forward_macs(deeper, 10, 3, 2)["encoder"] == 216 + 216
    # Tied: E V plus the M -> E projection, per position: 4 * 10 + 3 * 4 = 52.
    tied = dataclasses.replace(cho, tie_embeddings=True)
    assert flops.forward_macs(tied, 10, 3, 2)["output"] == 2 * 52


@pytest.mark.parametrize(
    ("kind", "extra", "cell", "feed"),
    [
        ("none", lambda c, h: 0, "gru", False),
        ("additive", lambda c, h: c, "gru", False),
        ("general", lambda c, h: h + c, "gru", False),
        ("additive", lambda c, h: c, "lstm", False),
        ("additive", lambda c, h: c, "gru", True),
    ],
)
def test_one_token_sentences_cost_the_model_kernels(kind, extra, cell, feed):
    """With S = T = 1 every weight matrix is used once per sentence, so the forward MACs
    are the model's kernel sizes, plus the weight-free score and context products."""
    from nmt.model import build_model

    cfg = dataclasses.replace(TINY, attention=kind, cell=cell, input_feeding=feed)
    model = build_model(cfg, 7, 10)
    kernels = sum(math.prod(v.shape) for v in model.weights if v.path.endswith("kernel"))
    macs = sum(flops.forward_macs(cfg, 10, 1, 1).values())
    assert macs == kernels + extra(4, 6)


def test_attention_config_count():
    cfg = config.load(REPO / "configs/multi30k_en_de_attention.yaml")
    # Multi30k train, 8000 pieces: 15.7 source and 16.2 target tokens per sentence with EOS.
    count = flops.train_flops_per_target_token(cfg.model, 8000, 15.7, 16.2)
    assert cfg.model.input_feeding  # a_{t-1} (C = 512) into 3 gates of H' = 512: 6 * 3 * C H'
    assert count == pytest.approx(34.5e6 + 6 * 3 * 512 * 512, rel=0.01)
    without = dataclasses.replace(cfg.model, input_feeding=False)
    assert flops.train_flops_per_target_token(without, 8000, 15.7, 16.2) == pytest.approx(
        34.5e6, rel=0.01
    )


def test_rejects_empty_targets():
    with pytest.raises(ValueError, match="tgt_len"):
        flops.train_flops_per_target_token(TINY, 10, 3, 0)
