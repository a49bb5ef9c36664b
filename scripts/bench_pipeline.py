"""Benchmark: SentencePiece training time and tf.data pipeline throughput on Multi30k train.

    .venv/bin/python scripts/bench_pipeline.py configs/multi30k_en_de.yaml
        [--repeats 3] [--spm-repeats 3]
        [--multi30k-dir DIR] [--set section.key=value ...] [--out runs/bench/pipeline.json]

1. SentencePiece: trains the configured model(s) (a joint 8000-piece unigram model in the
   Multi30k configs) on the train split with `nmt.tokenizer.train_tokenizers` into a temporary
   folder; the time includes streaming both .gz files through Python, as `nmt prepare` does.
2. Pipeline: with that tokenizer, times full passes of `make_dataset(epoch=0)` over train
   (reading the .gz files with tf.data.TextLineDataset, as both the `files` format and a local
   Multi30k folder are read, in-graph tokenization, length filter, shuffle, bucketing,
   padding). Reports sentences/s and target tokens/s (non-pad `tgt_out` ids, EOS included) as
   the median of `--repeats` passes.

Peak memory is the resident set: Linux's VmHWM, reset through /proc/self/clear_refs just before
the measured work, so it is the peak of that work (plus what the process already held); where
that reset is impossible, `ru_maxrss`, the peak since the process started. The JSON says which.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nmt import config as config_lib  # noqa: E402
from nmt.errors import NmtError  # noqa: E402


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """`--set` overrides and `--multi30k-dir`, shared by the benchmark scripts."""
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--multi30k-dir",
        default=str(config_lib.default_multi30k_dir()),
        help="folder with the Multi30k .gz files (default: $NMT_MULTI30K_DIR or "
        "REPO/../shared/data/multi30k)",
    )


def run_main(main, script: str) -> None:
    """Runs a benchmark's main; a user mistake (NmtError) exits with one line, no traceback."""
    try:
        main()
    except NmtError as exc:
        sys.exit(f"{Path(script).name}: error: {exc}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="YAML config (data and tokenizer sections are used)")
    add_common_args(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed pipeline passes (median)")
    parser.add_argument("--spm-repeats", type=int, default=3, help="SentencePiece trainings")
    parser.add_argument("--out", default="runs/bench/pipeline.json")
    return parser.parse_args(argv)


def reset_peak_rss() -> str:
    """Resets the kernel's peak-RSS mark; returns how `peak_rss_mb` will measure."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return "VmHWM, reset before the measured work"
    except OSError:
        return "ru_maxrss, peak since the process started"


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (see `reset_peak_rss`)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def rss_mb() -> float:
    """Current resident set size in MiB (0 where /proc is missing)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# The /proc/cpuinfo flags that decide a CPU's matrix-multiply rate; our machines differ in them.
MATMUL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu() -> dict:
    """The CPU model and its matmul-relevant flags (Linux; empty elsewhere)."""
    info = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in info.read_text().splitlines() if info.is_file() else []:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    flags = set(fields.get("flags", "").split())
    return {
        "cpu_model": fields.get("model name", ""),
        "cpu_flags": [flag for flag in MATMUL_FLAGS if flag in flags],
    }


def machine() -> dict:
    """Where and when the numbers were taken; the load average hints at noise."""
    versions = {}
    for package in ("tensorflow", "keras", "jax", "tensorflow-text", "sentencepiece"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **cpu(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "command": " ".join(sys.argv),
    }


def write_json(result: dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def time_sentencepiece(cfg: config_lib.Config, folder: Path, out: Path, repeats: int) -> dict:
    """Trains the tokenizer(s) into `out` `repeats` times (each run replaces the models)."""
    from nmt import corpus, tokenizer

    files = files_config(cfg, folder)
    seconds = []
    for _ in range(repeats):
        method = reset_peak_rss()
        start = time.perf_counter()
        src = (s for s, _ in corpus.iter_pairs(files, "train"))
        tgt = (t for _, t in corpus.iter_pairs(files, "train"))
        tokenizer.train_tokenizers(src, tgt, cfg.tokenizer, out, seed=cfg.training.seed)
        seconds.append(time.perf_counter() - start)
    return {
        "model_type": cfg.tokenizer.model_type,
        "vocab_size": cfg.tokenizer.vocab_size,
        "joint": cfg.tokenizer.joint,
        "seconds_median": round(statistics.median(seconds), 2),
        "seconds": [round(s, 2) for s in seconds],
        "peak_rss_mb_last": round(peak_rss_mb(), 1),
        "memory_method": method,
    }


def one_pass(dataset) -> tuple[int, int, float]:
    """Iterates a dataset of `((src, tgt_in), tgt_out)` once: (sentences, target tokens, s)."""
    import numpy as np

    sentences = tokens = 0
    start = time.perf_counter()
    for _, tgt_out in dataset.as_numpy_iterator():
        sentences += tgt_out.shape[0]
        tokens += int(np.count_nonzero(tgt_out))
    return sentences, tokens, time.perf_counter() - start


def files_config(cfg: config_lib.Config, folder: Path) -> config_lib.DataConfig:
    """The data config reading the train files of the Multi30k folder `folder`."""
    return dataclasses.replace(cfg.data, format="files", train=str(folder / "train"))


def time_pipeline(cfg: config_lib.Config, folder: Path, tok_dir: Path, repeats: int):
    """Median throughput of `repeats` full passes; peak memory of the first pass."""
    from nmt import corpus, pipeline, tokenizer

    src_tok, tgt_tok = tokenizer.load_tokenizers(tok_dir)
    data_cfg = files_config(cfg, folder)
    pairs = corpus.load_pairs(data_cfg, "train")  # validates the files: not timed
    dataset = pipeline.make_dataset(pairs, src_tok, tgt_tok, data_cfg, cfg.training, epoch=0)
    before, method = rss_mb(), reset_peak_rss()
    passes = [one_pass(dataset)]
    peak = peak_rss_mb()
    passes += [one_pass(dataset) for _ in range(repeats - 1)]
    sentences, tokens, _ = passes[0]
    seconds = statistics.median(s for _, _, s in passes)
    return {
        "format": "files",
        "sentences": sentences,
        "target_tokens": tokens,
        "pass_seconds_median": round(seconds, 3),
        "pass_seconds": [round(s, 3) for _, _, s in passes],
        "sentences_per_s": round(sentences / seconds, 1),
        "target_tokens_per_s": round(tokens / seconds, 1),
        "peak_rss_mb_first_pass": round(peak, 1),
        "rss_mb_before": round(before, 1),
        "memory_method": method,
    }


def print_table(spm: dict, rows: list[dict]) -> None:
    print(
        f"\nSentencePiece ({spm['model_type']}, {spm['vocab_size']}, joint={spm['joint']}): "
        f"median {spm['seconds_median']} s of {len(spm['seconds'])}, "
        f"peak RSS {spm['peak_rss_mb_last']:.0f} MiB"
    )
    print(f"{'format':<10}{'sentences':>10}{'sent/s':>10}{'tgt tok/s':>11}{'pass s':>8}", end="")
    print(f"{'peak RSS MiB':>14}{'before':>8}")
    for r in rows:
        print(
            f"{r['format']:<10}{r['sentences']:>10}{r['sentences_per_s']:>10.0f}"
            f"{r['target_tokens_per_s']:>11.0f}{r['pass_seconds_median']:>8.2f}"
            f"{r['peak_rss_mb_first_pass']:>14.0f}{r['rss_mb_before']:>8.0f}"
        )
    print(f"memory: {rows[0]['memory_method'] if rows else spm['memory_method']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = config_lib.load(args.config, args.overrides)
    folder = Path(args.multi30k_dir)
    result = {"benchmark": "pipeline", "machine": machine(), "config": args.config}
    result["overrides"] = args.overrides
    with tempfile.TemporaryDirectory(prefix="nmt-bench-spm-") as tok_dir:
        spm = time_sentencepiece(cfg, folder, Path(tok_dir), args.spm_repeats)
        rows = [time_pipeline(cfg, folder, Path(tok_dir), args.repeats)]
    result.update(
        sentencepiece=spm, pipeline=rows, load_average_end=[round(x, 2) for x in os.getloadavg()]
    )
    print_table(spm, rows)
    write_json(result, args.out)


if __name__ == "__main__":
    run_main(main, __file__)
