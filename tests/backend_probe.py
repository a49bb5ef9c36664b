"""Run in a subprocess by tests/test_backends.py: one Keras backend's view of some weights.

    KERAS_BACKEND=jax python -m tests.backend_probe save|load|save,load WORK_DIR

`save` builds a tiny attention model and writes `WORK_DIR/model.weights.h5` (and the fixed
inputs, `inputs.npz`); `load` reads them back and writes `WORK_DIR/out-BACKEND.npz`: the
teacher-forced logits, the ids and scores of greedy and beam search through the
Translator's compiled search, and the same after the weights changed. With
`NMT_BLOCK_TENSORFLOW=1`, importing TensorFlow fails, so a backend that reaches for it on
the way shows up as an error.
"""

import os
import sys
from pathlib import Path

if os.environ.get("NMT_BLOCK_TENSORFLOW") == "1":
    sys.modules["tensorflow"] = None  # `import tensorflow` now raises ImportError

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nmt import config  # noqa: E402
from nmt.model import build_model  # noqa: E402
from nmt.translator import Translator, bucket_index, pad_batch, step_buckets  # noqa: E402

SRC_VOCAB, TGT_VOCAB = 40, 48
SEARCHES = {"greedy": (1, 1), "beam": (4, 3)}  # name: (beam size, n-best)


def tiny_config() -> config.Config:
    return config.load(
        None,
        [
            "model.embedding_dim=16",
            "model.encoder_units=16",
            "model.decoder_units=32",
            "model.maxout_units=16",
            "model.attention=additive",
            "model.attention_units=16",
            "model.dropout=0.0",
            "decoding.max_len_a=1.0",
            "decoding.max_len_b=6",
        ],
    )


def fixed_inputs() -> dict[str, np.ndarray]:
    """Sources of different lengths (ids + EOS, right-padded) and teacher-forcing inputs."""
    rng = np.random.default_rng(0)
    lengths = [3, 9, 6]
    src = pad_batch(
        [list(rng.integers(4, SRC_VOCAB, n)) + [config.EOS_ID] for n in lengths],
        multiple=8,
    )
    tgt_in = rng.integers(4, TGT_VOCAB, (3, 7)).astype(np.int32)
    tgt_in[:, 0] = config.BOS_ID
    return {"src": src, "src_len": np.array([n + 1 for n in lengths], np.int32), "tgt_in": tgt_in}


def save(work: Path) -> None:
    keras.utils.set_random_seed(7)
    model = build_model(tiny_config().model, SRC_VOCAB, TGT_VOCAB)
    # Larger weights than the initializers give: peaked distributions, no near-ties in search.
    for var in model.trainable_variables:
        var.assign(var.value * 3.0)
    model.save_weights(work / "model.weights.h5")
    np.savez(work / "inputs.npz", **fixed_inputs())


def load(work: Path) -> None:
    cfg = tiny_config()
    model = build_model(cfg.model, SRC_VOCAB, TGT_VOCAB)
    model.load_weights(work / "model.weights.h5")
    inputs = dict(np.load(work / "inputs.npz"))
    out = {"logits": keras.ops.convert_to_numpy(model((inputs["src"], inputs["tgt_in"])))}
    translator = Translator(cfg, model, None, None)
    out.update(searches(translator, inputs))
    # Weights that change after the first call (as in training) must reach the cached
    # compiled search: it has to match a Translator that compiles afresh.
    for var in model.trainable_variables:
        var.assign(var.value * 0.5)
    changed = searches(translator, inputs)
    fresh = searches(Translator(cfg, model, None, None), inputs)
    out.update({f"changed_{k}": v for k, v in changed.items()})
    out.update({f"fresh_{k}": v for k, v in fresh.items()})
    np.savez(work / f"out-{keras.backend.backend()}.npz", **out)


def searches(translator: Translator, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ids and scores of each of `SEARCHES` through the Translator's compiled search."""
    out = {}
    for name, (beam, n_best) in SEARCHES.items():
        opts = translator.decoding_options(beam_size=beam, n_best=n_best)
        bucket = step_buckets(opts)[int(bucket_index(inputs["src"].shape[1], opts))]
        search = translator._search_fn(opts, bucket)
        alpha = opts.length_penalty
        out[f"{name}_ids"], out[f"{name}_scores"] = search(inputs["src"], inputs["src_len"], alpha)
    return out


if __name__ == "__main__":
    for command in sys.argv[1].split(","):  # e.g. "save,load"
        {"save": save, "load": load}[command](Path(sys.argv[2]))
