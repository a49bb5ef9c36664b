"""Benchmark: training throughput in target tokens/s, per config and precision, side by side.

    .venv/bin/python scripts/bench_train.py
        --configs configs/multi30k_en_de.yaml configs/multi30k_en_de_attention.yaml
        --precisions float32 mixed_bfloat16 [--warmup 30] [--steps 300] [--group 10]
        [--batch-sizes 64 128 256] [--backends tensorflow jax torch]
        [--peak-tflops float32=67 mixed_bfloat16=989]
        [--multi30k-dir DIR] [--set section.key=value ...] [--prep-dir DIR] [--synthetic]
        [--joeynmt] [--out runs/bench/train.json]

Every config x precision (x batch size) combination runs in its own subprocess, one after
the other, so the global dtype policy, compiled functions and memory (peak device memory
included) of one cannot leak into the next, while all of them share one invocation (and so
one quiet or noisy moment): compare the ratios. It runs under every Keras backend
(`KERAS_BACKEND=tensorflow|jax|torch`); JAX and PyTorch never import TensorFlow.

Method. Each subprocess builds the model and compiles it with `nmt.training.compile_model`, and
runs `model.fit` for `warmup + steps` steps on Multi30k train through the real input pipeline
(`pipeline.make_batches(..., "train", epoch=0)`, then epochs 1, 2, ... chained when more
steps are asked for than an epoch has: tf.data under TensorFlow, Grain under JAX and PyTorch;
tokenizers from a run folder, `--prep-dir` or runs/bench/prep-HASH, prepared once per
data+tokenizer config and reused). A callback reads the clock
at the end of every `group`-th step after the warm-up; throughput is the median over these groups
of (non-pad target tokens, EOS included) / seconds, which keeps a retrace for a new batch shape
or a noisy neighbour from moving the result. Keras turns the logs into Python floats after every
step once any callback watches batch ends (so does `nmt train`'s RunKeeper), so each step waits
for the device either way; timing groups rather than single steps keeps clock overhead and
jitter out. Tokens per step come from a second, identical instance of the dataset iterated
beforehand (the pipeline is seeded and deterministic), so the timed input path is the real one.
Peak RSS is the process's resident set peak during `fit` (VmHWM reset just before it). Peak
device memory: JAX `memory_stats()["peak_bytes_in_use"]` (the process's peak; one
combination per process), `torch.cuda.max_memory_allocated()` and TensorFlow's
`get_memory_info("GPU:0")["peak"]`, both reset just before `fit`; None on a CPU.

FLOPs. Every row carries `nmt.flops.train_flops_per_target_token` for its model, target
vocabulary and the mean source/target tokens per sentence of its timed batches (real tokens,
not padding), `model_tflops` = target tokens/s x that, and with `--peak-tflops` the model
FLOP utilisation `mfu = model_tflops / peak`. Give the device's dense peak for the precision:
one number for all, or `PRECISION=TFLOPS` each. NVIDIA H100 SXM (and H200): float32 ~67
without tensor cores, ~495 as TF32; float16/bfloat16 ~989 (dense, no sparsity). Each row
records `float32_math` (whether float32 matmuls may use TF32), which says which float32 peak
applies.

`--batch-sizes B1 B2 ...` sweeps `training.batch_size` (`training.max_tokens` with
`batch_by: tokens`) and reports, per config and precision, the batch size with the most
target tokens/s (`best_batch` in the JSON).

`--synthetic` feeds numpy batches instead: random ids with Multi30k-like lengths, bucketed and
padded as `make_batches` does, with no tokenizer and no corpus. `--joeynmt` then runs the
JoeyNMT peer (../shared/peers/joeynmt/run.sh, ~8 min) and reports ours/JoeyNMT for attention
+ float32.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_pipeline import (  # noqa: E402
    add_common_args,
    machine,
    peak_rss_mb,
    reset_peak_rss,
    run_main,
    write_json,
)

from nmt import config as config_lib  # noqa: E402
from nmt import flops  # noqa: E402
from nmt.errors import NmtError  # noqa: E402

JOEYNMT_LINE = re.compile(r"joeynmt target tokens/s, median of (\d+) log lines: ([\d.]+)")
# Multi30k train with the joint 8000-piece unigram tokenizer, EOS not counted: log(src tokens)
# ~ N(2.633, 0.320), log(tgt tokens / src tokens) ~ N(0.024, 0.198) (means 14.7 and 15.2).
LOG_SRC_LEN = (2.633, 0.320)
LOG_LEN_RATIO = (0.024, 0.198)
MULTI30K_TRAIN_PAIRS = 29000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["configs/multi30k_en_de.yaml", "configs/multi30k_en_de_attention.yaml"],
    )
    parser.add_argument("--precisions", nargs="+", default=["float32"])
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=["tensorflow", "jax", "torch"],
        help="KERAS_BACKEND of each run, side by side (default: this process's backend)",
    )
    add_common_args(parser)
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=300, help="timed steps")
    parser.add_argument("--group", type=int, default=10, help="steps per clock reading")
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=int,
        help="sweep training.batch_size (training.max_tokens with batch_by: tokens); the "
        "best target tokens/s per config and precision is reported",
    )
    parser.add_argument(
        "--peak-tflops",
        nargs="+",
        default=[],
        metavar="[PRECISION=]TFLOPS",
        help="the device's dense peak TFLOP/s, for model FLOP utilisation: one number, or "
        "PRECISION=NUMBER each (H100 SXM: float32 67, TF32 495, float16/bfloat16 989)",
    )
    parser.add_argument("--prep-dir", help="tokenizer run folder (default runs/bench/prep-HASH)")
    parser.add_argument("--synthetic", action="store_true", help="numpy batches, no corpus")
    parser.add_argument("--joeynmt", action="store_true", help="then run the JoeyNMT peer")
    parser.add_argument("--joeynmt-script", default="../shared/peers/joeynmt/run.sh")
    parser.add_argument("--joeynmt-updates", type=int, default=300)
    parser.add_argument("--out", default="runs/bench/train.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < args.group or args.group < 1 or args.warmup < 1:
        parser.error("need --warmup >= 1 and --steps >= --group >= 1")
    if args.batch_sizes and min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be positive")
    try:
        args.peaks = parse_peaks(args.peak_tflops)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def parse_peaks(values: list[str]) -> dict[str, float]:
    """`["67"]` -> `{"*": 67.0}`; `["float32=67", "mixed_bfloat16=989"]` -> by precision."""
    peaks = {}
    for value in values:
        precision, _, number = value.rpartition("=")
        try:
            peaks[precision or "*"] = float(number)
        except ValueError:
            raise ValueError(
                f"--peak-tflops: {value!r} is not NUMBER or PRECISION=NUMBER"
            ) from None
        if peaks[precision or "*"] <= 0:
            raise ValueError(f"--peak-tflops: {value!r} must be positive")
    return peaks


def load_config(
    path: str, precision: str, args: argparse.Namespace, batch: int | None = None
) -> config_lib.Config:
    """The config with --multi30k-dir, then the --set overrides, then the precision and the
    batch size (sentences, or the token budget with `batch_by: tokens`) applied."""
    overrides = [f"data.multi30k_dir={args.multi30k_dir}", *args.overrides]
    overrides.append(f"training.precision={precision}")
    cfg = config_lib.load(path, overrides)
    if batch is None:
        return cfg
    key = "max_tokens" if cfg.training.batch_by == "tokens" else "batch_size"
    return config_lib.load(path, [*overrides, f"training.{key}={batch}"])


# --------------------------------------------------------------------------- input


def real_input(cfg: config_lib.Config, n_steps: int, prep_dir: str | None = None):
    """The real training batches (epochs 0, 1, ... chained until `n_steps`) and
    `(sentences, target tokens, padded length, source tokens)` of each of those `n_steps`
    batches, read from an identical second instance."""
    import numpy as np

    from nmt import pipeline, rundir, tokenizer, training

    if prep_dir is None:
        key = json.dumps([cfg.to_dict()["data"], cfg.to_dict()["tokenizer"]], sort_keys=True)
        prep_dir = f"runs/bench/prep-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    training.prepare(cfg, prep_dir)  # trains SentencePiece the first time only
    src_tok, tgt_tok = tokenizer.load_tokenizers(Path(prep_dir) / rundir.TOKENIZER_DIR)

    def epoch(number: int):
        return pipeline.make_batches(
            cfg.data, cfg.training, "train", src_tok, tgt_tok, epoch=number
        )

    shapes, epochs = [], 0
    while len(shapes) < n_steps:
        before = len(shapes)
        for (x, _), y in itertools.islice(numpy_batches(epoch(epochs)), n_steps - before):
            shapes.append((y.shape[0], int(np.count_nonzero(y)), y.shape[1], count_src(x)))
        epochs += 1
        if len(shapes) == before:
            raise NmtError("the training split gives no batches")
    return chain_epochs(epoch, epochs), shapes, (src_tok.vocab_size, tgt_tok.vocab_size)


def count_src(src_ids) -> int:
    """Real source tokens of a batch (EOS included; position 0 of an empty row is padding)."""
    import numpy as np

    return int(np.count_nonzero(src_ids))


def numpy_batches(dataset):
    """Iterates a tf.data or Grain dataset of batches as numpy arrays."""
    if hasattr(dataset, "as_numpy_iterator"):
        return dataset.as_numpy_iterator()
    return iter(dataset)


def chain_epochs(make_epoch, epochs: int):
    """`make_epoch(0)`, ..., `make_epoch(epochs - 1)` as one input for `model.fit`: a
    concatenated tf.data dataset under TensorFlow, a generator over the Grain datasets (each
    with its background prefetch) under the other backends."""
    import keras

    if keras.backend.backend() == "tensorflow":
        dataset = make_epoch(0)
        for number in range(1, epochs):
            dataset = dataset.concatenate(make_epoch(number))
        return dataset
    return (batch for number in range(epochs) for batch in make_epoch(number))


def synthetic_batch(rng, x_len, y_len, length: int, vocab: int):
    """`((src, tgt_in), tgt_out)` int32 `(n, length)` with random ids, laid out as
    `make_dataset` lays them out: `x + [EOS]`, `[BOS] + y`, `y + [EOS]`, right-padded."""
    import numpy as np

    from nmt.config import BOS_ID, EOS_ID, PAD_ID

    n, pos, rows = len(x_len), np.arange(length), np.arange(len(x_len))
    src = np.where(pos < x_len[:, None], rng.integers(4, vocab, (n, length)), PAD_ID)
    src[rows, x_len] = EOS_ID
    words = rng.integers(4, vocab, (n, length))
    tgt_out = np.where(pos < y_len[:, None], words, PAD_ID)
    tgt_out[rows, y_len] = EOS_ID
    tgt_in = np.concatenate([np.full((n, 1), BOS_ID), words[:, :-1]], axis=1)
    tgt_in = np.where(pos <= y_len[:, None], tgt_in, PAD_ID)
    return (src.astype("int32"), tgt_in.astype("int32")), tgt_out.astype("int32")


def synthetic_input(cfg: config_lib.Config, n_steps: int):
    """Like `real_input`, from one Multi30k-sized epoch of synthetic pairs, bucketed by
    `max(src, tgt) + 1` padded up to `bucket_width` and batched per bucket as in
    `nmt.pipeline`, in shuffled order (cycled when more steps are asked for)."""
    import numpy as np

    rng, data, train = np.random.default_rng(cfg.training.seed), cfg.data, cfg.training
    x = np.rint(np.exp(rng.normal(*LOG_SRC_LEN, MULTI30K_TRAIN_PAIRS)))
    y = np.rint(x * np.exp(rng.normal(*LOG_LEN_RATIO, MULTI30K_TRAIN_PAIRS)))
    x = np.clip(x, 1, data.max_src_len).astype(int)
    y = np.clip(y, 1, data.max_tgt_len).astype(int)
    padded = -(-(np.maximum(x, y) + 1) // train.bucket_width) * train.bucket_width
    vocab = cfg.tokenizer.vocab_size
    batches = []
    for length in np.unique(padded):
        size = train.batch_size if train.batch_by == "sentences" else train.max_tokens // length
        size, idx = max(1, int(size)), np.flatnonzero(padded == length)
        for chunk in np.array_split(idx, range(size, len(idx), size)):
            batches.append(synthetic_batch(rng, x[chunk], y[chunk], int(length), vocab))
    batches = [batches[i] for i in rng.permutation(len(batches))]
    feed = itertools.islice(itertools.cycle(batches), n_steps)
    shapes = [
        (b[1].shape[0], int(np.count_nonzero(b[1])), b[1].shape[1], count_src(b[0][0]))
        for b in feed
    ]
    return feed_numpy(batches), shapes, (vocab, vocab)


def feed_numpy(batches: list):
    """A generator cycling over `batches`; under TensorFlow a tf.data wrapper with variable
    `(batch, len)` shapes (Keras would infer fixed shapes from the first two batches)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return (batch for batch in itertools.cycle(batches))
    import tensorflow as tf

    spec = tf.TensorSpec((None, None), tf.int32)
    return tf.data.Dataset.from_generator(
        lambda: itertools.cycle(batches), output_signature=((spec, spec), spec)
    ).prefetch(2)


# --------------------------------------------------------------------------- one combination


class GroupTimer:
    """Clock readings `(steps done, time)` at the end of the warm-up and every `group` steps.

    Keras has already turned the logs into floats when this runs, so the steps are finished.
    """

    def __init__(self, warmup: int, group: int):
        self.next_mark, self.group = warmup, group
        self.marks: list[tuple[int, float]] = []

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        done = batch + 1  # with steps_per_execution > 1, `batch` is the last step run
        if done >= self.next_mark:
            self.marks.append((done, time.perf_counter()))
            self.next_mark = done + self.group


def summarize(marks: list[tuple[int, float]], shapes: list[tuple[int, int, int]]) -> dict:
    """Median per-group rates between consecutive clock readings, plus overall means."""
    groups = []
    for (a, t0), (b, t1) in itertools.pairwise(marks):
        sentences, tokens = (sum(s[k] for s in shapes[a:b]) for k in (0, 1))
        groups.append((b - a, sentences, tokens, t1 - t0))
    timed = shapes[marks[0][0] : marks[-1][0]]
    seconds = marks[-1][1] - marks[0][1]
    return {
        "target_tokens_per_s": round(statistics.median(g[2] / g[3] for g in groups), 1),
        "sentences_per_s": round(statistics.median(g[1] / g[3] for g in groups), 1),
        "steps_per_s": round(statistics.median(g[0] / g[3] for g in groups), 3),
        "target_tokens_per_s_overall": round(sum(g[2] for g in groups) / seconds, 1),
        "timed_steps": len(timed),
        "timed_seconds": round(seconds, 2),
        "groups": len(groups),
        "target_tokens_per_sentence": round(sum(s[1] for s in timed) / sum(s[0] for s in timed), 2),
        "source_tokens_per_sentence": round(sum(s[3] for s in timed) / sum(s[0] for s in timed), 2),
        "mean_padded_len": round(statistics.mean(s[2] for s in timed), 2),
    }


def reset_device_peak() -> None:
    """Resets the peak-memory mark where the backend can (JAX cannot: one run per process)."""
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def device_peak_mb() -> float | None:
    """Peak accelerator memory in MiB, or None on a CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
    elif backend == "torch":
        import torch

        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpus else None
    return None if peak is None else round(peak / 2**20, 1)


def device_info() -> dict:
    """The device the backend trains on and whether float32 matmuls may use TF32."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        precision = jax.config.jax_default_matmul_precision
        return {
            "device": jax.local_devices()[0].device_kind,
            "float32_math": f"jax_default_matmul_precision={precision} (None: XLA's default)",
        }
    if backend == "torch":
        import torch

        gpu = torch.cuda.is_available()
        return {
            "device": torch.cuda.get_device_name(0) if gpu else "cpu",
            "float32_math": f"torch matmul {torch.get_float32_matmul_precision()}, "
            f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}",
        }
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    details = tf.config.experimental.get_device_details(gpus[0]) if gpus else {}
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    return {"device": details.get("device_name", "cpu"), "float32_math": f"tf32={tf32}"}


def flop_fields(cfg: config_lib.Config, tgt_vocab: int, summary: dict) -> dict:
    """Training FLOPs per target token (nmt.flops) at the timed batches' mean lengths and
    the model TFLOP/s they make at the measured throughput."""
    flop = flops.train_flops_per_target_token(
        cfg.model,
        tgt_vocab,
        summary["source_tokens_per_sentence"],
        summary["target_tokens_per_sentence"],
    )
    return {
        "train_flop_per_target_token": round(flop),
        "model_tflops": round(summary["target_tokens_per_s"] * flop / 1e12, 4),
    }


def add_mfu(row: dict, peaks: dict[str, float]) -> dict:
    """Adds `peak_tflops` and `mfu` (model FLOP utilisation) when a peak is known."""
    peak = peaks.get(row.get("precision"), peaks.get("*"))
    if peak and "model_tflops" in row:
        row.update(peak_tflops=peak, mfu=round(row["model_tflops"] / peak, 5))
    return row


def measure(config_path: str, precision: str, batch: int | None, args: argparse.Namespace) -> dict:
    """Trains `warmup + steps` steps of one config at one precision; returns the summary."""
    import keras

    from nmt import training
    from nmt.model import build_model

    cfg = load_config(config_path, precision, args, batch)
    keras.utils.set_random_seed(cfg.training.seed)
    policy = training.resolve_precision(cfg.training.precision)
    keras.mixed_precision.set_global_policy(policy)
    n_steps = args.warmup + args.steps
    if args.synthetic:
        feed, shapes, vocab = synthetic_input(cfg, n_steps)
    else:
        feed, shapes, vocab = real_input(cfg, n_steps, args.prep_dir)
    model = build_model(cfg.model, *vocab)
    # The measured steps are the whole run (one epoch of n_steps batches).
    one_epoch = dataclasses.replace(cfg.training, epochs=1, max_steps=0)
    training.compile_model(model, training.fit_schedule_to_run(one_epoch, lambda: n_steps))
    timer = GroupTimer(args.warmup, args.group)
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=timer.on_train_batch_end)
    memory = reset_peak_rss()
    reset_device_peak()
    model.fit(
        feed, epochs=1, steps_per_epoch=n_steps, callbacks=[callback], verbose=0, shuffle=False
    )
    summary = summarize(timer.marks, shapes)
    t = cfg.training
    return {
        "config": config_path,
        "precision": policy,
        "attention": cfg.model.attention,
        "batch_by": t.batch_by,
        "batch_size": t.max_tokens if t.batch_by == "tokens" else t.batch_size,
        "input": "synthetic" if args.synthetic else "multi30k train via make_batches",
        "backend": keras.backend.backend(),
        **device_info(),
        "parameters": model.count_params(),
        **summary,
        **flop_fields(cfg, vocab[1], summary),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device_peak_mb": device_peak_mb(),
        "memory_method": memory,
    }


# --------------------------------------------------------------------------- driver


def run_child(
    config_path: str, precision: str, batch: int | None, backend: str, args: argparse.Namespace
) -> dict:
    """Runs `measure` in a fresh Python process under `backend`; a failure becomes an `error`
    row."""
    batch_text = f", batch {batch}" if batch else ""
    print(f"== {config_path}, {precision}, {backend}{batch_text}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", "--out", str(out)]
        command += ["--configs", config_path, "--precisions", precision]
        command += ["--multi30k-dir", args.multi30k_dir, "--warmup", str(args.warmup)]
        command += ["--steps", str(args.steps), "--group", str(args.group)]
        command += ["--batch-sizes", str(batch)] if batch else []
        command += ["--prep-dir", args.prep_dir] if args.prep_dir else []
        command += ["--synthetic"] * args.synthetic
        command += [f"--set={text}" for text in args.overrides]
        env = {**os.environ, "KERAS_BACKEND": backend}
        status = subprocess.run(command, env=env, check=False).returncode
        if status != 0 or not out.is_file():
            row = {"config": config_path, "precision": precision, "backend": backend}
            row["error"] = f"exit {status}"
            return {**row, "batch_size": batch} if batch else row
        return add_mfu(json.loads(out.read_text()), args.peaks)


def best_batches(rows: list[dict]) -> list[dict]:
    """Per config, precision and backend, the row with the most target tokens/s."""
    best: dict[tuple[str, str, str], dict] = {}
    for r in rows:
        key = (r["config"], r["precision"], r.get("backend"))
        if "error" not in r and (
            key not in best or r["target_tokens_per_s"] > best[key]["target_tokens_per_s"]
        ):
            best[key] = r
    fields = ("config", "precision", "backend", "batch_size", "target_tokens_per_s")
    fields += ("device_peak_mb", "mfu")
    return [{k: r.get(k) for k in fields} for r in best.values()]


def run_joeynmt(args: argparse.Namespace, rows: list[dict]) -> dict:
    """Runs the JoeyNMT peer and compares it with our first attention + float32 row."""
    print(f"== JoeyNMT: bash {args.joeynmt_script} {args.joeynmt_updates} (~8 min)", flush=True)
    command = ["bash", args.joeynmt_script, str(args.joeynmt_updates)]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    print(proc.stdout, end="")
    match = JOEYNMT_LINE.search(proc.stdout)
    if not match:
        return {"error": f"no throughput line (exit {proc.returncode})"}
    peer = {"updates": args.joeynmt_updates, "log_lines": int(match.group(1))}
    peer["target_tokens_per_s"] = float(match.group(2))
    ours = [
        r
        for r in rows
        if r.get("attention", "none") != "none" and r["precision"] == "float32" and "error" not in r
    ]
    if ours:
        peer["compared_with"] = ours[0]["config"]
        ratio = ours[0]["target_tokens_per_s"] / peer["target_tokens_per_s"]
        peer["ours_over_joeynmt"] = round(ratio, 3)
    return peer


def print_table(rows: list[dict], peer: dict | None) -> None:
    base = next((r for r in rows if "error" not in r), None)
    print(f"\n{'config':<32}{'precision':<16}{'backend':<11}{'batch':>6}", end="")
    print(f"{'tgt tok/s':>10}{'sent/s':>8}", end="")
    print(f"{'x first':>8}{'RSS MiB':>9}{'dev MiB':>9}{'MFLOP/tok':>10}{'TFLOP/s':>9}{'MFU':>7}")
    for r in rows:
        print(f"{Path(r['config']).stem:<32}{r['precision']:<16}{r.get('backend', ''):<11}", end="")
        print(f"{r.get('batch_size') or '':>6}", end="")
        if "error" in r:
            print(f"  failed: {r['error']}")
            continue
        ratio = r["target_tokens_per_s"] / base["target_tokens_per_s"]
        device = "-" if r["device_peak_mb"] is None else f"{r['device_peak_mb']:.0f}"
        mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        print(
            f"{r['target_tokens_per_s']:>10.0f}{r['sentences_per_s']:>8.1f}{ratio:>8.2f}"
            f"{r['peak_rss_mb']:>9.0f}{device:>9}{r['train_flop_per_target_token'] / 1e6:>10.2f}"
            f"{r['model_tflops']:>9.3f}{mfu:>7}"
        )
    if base:
        print(f"median of {base['groups']} groups of steps after the warm-up; {base['input']}")
        print(f"device {base['device']}; float32 math: {base['float32_math']}")
    if len({r.get("batch_size") for r in rows}) > 1:
        for b in best_batches(rows):
            print(f"best batch for {Path(b['config']).stem}, {b['precision']}: ", end="")
            print(f"{b['batch_size']} ({b['target_tokens_per_s']:.0f} target tokens/s)")
    if peer and "ours_over_joeynmt" in peer:
        print(f"JoeyNMT: {peer['target_tokens_per_s']:.0f} target tokens/s", end="")
        print(f"; ours/JoeyNMT ({peer['compared_with']}, float32): {peer['ours_over_joeynmt']}")
    elif peer and "target_tokens_per_s" in peer:
        print(f"JoeyNMT: {peer['target_tokens_per_s']:.0f} target tokens/s; no attention config")
        print("in float32 was measured to compare with")
    elif peer:
        print(f"JoeyNMT failed: {peer['error']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    batches = args.batch_sizes or [None]
    if args.child:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        logging.getLogger("nmt").setLevel(logging.INFO)
        write_json(measure(args.configs[0], args.precisions[0], batches[0], args), args.out)
        return
    backends = args.backends or [os.environ.get("KERAS_BACKEND", "tensorflow")]
    combinations = list(itertools.product(args.configs, args.precisions, batches, backends))
    for config_path, precision, batch, _ in combinations:
        load_config(config_path, precision, args, batch)  # a bad config fails here, not later
    result = {"benchmark": "train", "machine": machine(), "overrides": args.overrides}
    result.update(warmup=args.warmup, steps=args.steps, group=args.group)
    result.update(batch_sizes=args.batch_sizes, peak_tflops=args.peaks)
    rows = [run_child(*combination, args) for combination in combinations]
    result["runs"] = rows
    if args.batch_sizes:
        result["best_batch"] = best_batches(rows)
    if args.joeynmt:
        result["joeynmt"] = run_joeynmt(args, rows)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(rows, result.get("joeynmt"))
    write_json(result, args.out)


if __name__ == "__main__":
    run_main(main, __file__)
