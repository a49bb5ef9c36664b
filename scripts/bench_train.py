"""Benchmark: training throughput in target tokens/s, per config and precision, side by side.

    .venv/bin/python scripts/bench_train.py
        --configs configs/multi30k_en_de.yaml configs/multi30k_en_de_attention.yaml
        --precisions float32 mixed_bfloat16 [--warmup 30] [--steps 300] [--group 10]
        [--multi30k-dir DIR] [--set section.key=value ...] [--synthetic] [--joeynmt]
        [--out runs/bench/train.json]

Every config x precision combination runs in its own subprocess, one after the other, so the
global dtype policy, compiled functions and memory of one cannot leak into the next, while all
of them share one invocation (and so one quiet or noisy moment): compare the ratios.

Method. Each subprocess builds the model and compiles it with `nmt.training.compile_model`, and
runs `model.fit` for `warmup + steps` steps on Multi30k train through the real input pipeline
(`corpus.load_pairs` -> `pipeline.make_dataset(epoch=0)`, tokenizers from a run folder
under runs/bench/ prepared once per data+tokenizer config and reused). A callback reads the clock
at the end of every `group`-th step after the warm-up; throughput is the median over these groups
of (non-pad target tokens, EOS included) / seconds, which keeps a retrace for a new batch shape
or a noisy neighbour from moving the result. Keras turns the logs into Python floats after every
step once any callback watches batch ends (so does `nmt train`'s RunKeeper), so each step waits
for the device either way; timing groups rather than single steps keeps clock overhead and
jitter out. Tokens per step come from a second, identical instance of the dataset iterated
beforehand (the pipeline is seeded and deterministic), so the timed input path is the real one.
Peak RSS is the process's resident set peak during `fit` (VmHWM reset just before it).

`--synthetic` feeds numpy batches instead: random ids with Multi30k-like lengths, bucketed and
padded as `make_dataset` does, with no tf.data and no tokenizer, so the script also runs under
KERAS_BACKEND=jax on a machine without TensorFlow. `--joeynmt` then runs the JoeyNMT peer
(../shared/peers/joeynmt/run.sh, ~8 min) and reports ours/JoeyNMT for attention + float32.
"""

from __future__ import annotations

import argparse
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
    add_common_args(parser)
    parser.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=300, help="timed steps")
    parser.add_argument("--group", type=int, default=10, help="steps per clock reading")
    parser.add_argument("--synthetic", action="store_true", help="numpy batches, no tf.data")
    parser.add_argument("--joeynmt", action="store_true", help="then run the JoeyNMT peer")
    parser.add_argument("--joeynmt-script", default="../shared/peers/joeynmt/run.sh")
    parser.add_argument("--joeynmt-updates", type=int, default=300)
    parser.add_argument("--out", default="runs/bench/train.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < args.group or args.group < 1 or args.warmup < 1:
        parser.error("need --warmup >= 1 and --steps >= --group >= 1")
    return args


def load_config(path: str, precision: str, args: argparse.Namespace) -> config_lib.Config:
    """The config with --multi30k-dir, then the --set overrides, then the precision applied."""
    overrides = [f"data.multi30k_dir={args.multi30k_dir}", *args.overrides]
    return config_lib.load(path, [*overrides, f"training.precision={precision}"])


# --------------------------------------------------------------------------- input


def real_input(cfg: config_lib.Config, n_steps: int):
    """The real training dataset (repeated) and `(sentences, target tokens, padded length)`
    of its first `n_steps` batches, read from an identical second instance."""
    import numpy as np

    from nmt import corpus, pipeline, rundir, tokenizer, training

    key = json.dumps([cfg.to_dict()["data"], cfg.to_dict()["tokenizer"]], sort_keys=True)
    prep_dir = Path("runs/bench") / f"prep-{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    training.prepare(cfg, prep_dir)  # trains SentencePiece the first time only
    src_tok, tgt_tok = tokenizer.load_tokenizers(prep_dir / rundir.TOKENIZER_DIR)

    def make():
        pairs = corpus.load_pairs(cfg.data, "train")
        ds = pipeline.make_dataset(pairs, src_tok, tgt_tok, cfg.data, cfg.training, epoch=0)
        return ds.repeat()

    shapes = [
        (y.shape[0], int(np.count_nonzero(y)), y.shape[1])
        for _, y in make().take(n_steps).as_numpy_iterator()
    ]
    return make(), shapes, (src_tok.vocab_size, tgt_tok.vocab_size)


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
    shapes = [(b[1].shape[0], int(np.count_nonzero(b[1])), b[1].shape[1]) for b in feed]
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
        "mean_padded_len": round(statistics.mean(s[2] for s in timed), 2),
    }


def device_peak_mb() -> float | None:
    """Peak accelerator memory in MiB, or None on a CPU."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] if gpus else None
    return None if peak is None else round(peak / 2**20, 1)


def measure(config_path: str, precision: str, args: argparse.Namespace) -> dict:
    """Trains `warmup + steps` steps of one config at one precision; returns the summary."""
    import keras

    from nmt import training
    from nmt.model import build_model

    cfg = load_config(config_path, precision, args)
    keras.utils.set_random_seed(cfg.training.seed)
    policy = training.resolve_precision(cfg.training.precision)
    keras.mixed_precision.set_global_policy(policy)
    n_steps = args.warmup + args.steps
    feed, shapes, vocab = (synthetic_input if args.synthetic else real_input)(cfg, n_steps)
    model = build_model(cfg.model, *vocab)
    training.compile_model(model, cfg.training)
    timer = GroupTimer(args.warmup, args.group)
    callback = keras.callbacks.LambdaCallback(on_train_batch_end=timer.on_train_batch_end)
    memory = reset_peak_rss()
    model.fit(
        feed, epochs=1, steps_per_epoch=n_steps, callbacks=[callback], verbose=0, shuffle=False
    )
    return {
        "config": config_path,
        "precision": policy,
        "attention": cfg.model.attention,
        "input": "synthetic" if args.synthetic else "multi30k train via make_dataset",
        "backend": keras.backend.backend(),
        "parameters": model.count_params(),
        **summarize(timer.marks, shapes),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device_peak_mb": device_peak_mb(),
        "memory_method": memory,
    }


# --------------------------------------------------------------------------- driver


def run_child(config_path: str, precision: str, args: argparse.Namespace) -> dict:
    """Runs `measure` in a fresh Python process; a failure becomes an `error` row."""
    print(f"== {config_path}, {precision}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--child", "--out", str(out)]
        command += ["--configs", config_path, "--precisions", precision]
        command += ["--multi30k-dir", args.multi30k_dir, "--warmup", str(args.warmup)]
        command += ["--steps", str(args.steps), "--group", str(args.group)]
        command += ["--synthetic"] * args.synthetic
        command += [f"--set={text}" for text in args.overrides]
        status = subprocess.run(command, check=False).returncode
        if status != 0 or not out.is_file():
            return {"config": config_path, "precision": precision, "error": f"exit {status}"}
        return json.loads(out.read_text())


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
    print(f"\n{'config':<36}{'precision':<16}{'tgt tok/s':>10}{'sent/s':>8}{'x first':>8}", end="")
    print(f"{'RSS MiB':>9}{'dev MiB':>9}")
    for r in rows:
        print(f"{Path(r['config']).stem:<36}{r['precision']:<16}", end="")
        if "error" in r:
            print(f"  failed: {r['error']}")
            continue
        ratio = r["target_tokens_per_s"] / base["target_tokens_per_s"]
        device = "-" if r["device_peak_mb"] is None else f"{r['device_peak_mb']:.0f}"
        print(
            f"{r['target_tokens_per_s']:>10.0f}{r['sentences_per_s']:>8.1f}{ratio:>8.2f}"
            f"{r['peak_rss_mb']:>9.0f}{device:>9}"
        )
    if base:
        print(f"median of {base['groups']} groups of steps after the warm-up; {base['input']}")
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
    if args.child:
        logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
        logging.getLogger("nmt").setLevel(logging.INFO)
        write_json(measure(args.configs[0], args.precisions[0], args), args.out)
        return
    for config_path, precision in itertools.product(args.configs, args.precisions):
        load_config(config_path, precision, args)  # a bad config fails here, not in a child
    result = {"benchmark": "train", "machine": machine(), "overrides": args.overrides}
    result.update(warmup=args.warmup, steps=args.steps, group=args.group)
    rows = [run_child(c, p, args) for c in args.configs for p in args.precisions]
    result["runs"] = rows
    if args.joeynmt:
        result["joeynmt"] = run_joeynmt(args, rows)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print_table(rows, result.get("joeynmt"))
    write_json(result, args.out)


if __name__ == "__main__":
    run_main(main, __file__)
