"""Benchmark: peak memory of `nmt translate --input` on a short and a long file.

    .venv/bin/python scripts/bench_translate_memory.py [RUN_DIR] [--lines 1000 100000]
        [--beam-size 1] [--multi30k-dir DIR] [--set section.key=value ...]
        [--out runs/bench/translate_memory.json]

The input files repeat Multi30k's test_2016_flickr sentences in the run's source language up
to each length. Without RUN_DIR a tiny model is trained first (configs/smoke.yaml, 30 steps:
quality is not the point). Each file is translated by the real entry point, `nmt translate
RUN_DIR --input FILE --output OUT --beam-size 1`, in its own subprocess; its peak resident set
comes from the kernel (`os.wait4`'s ru_maxrss for that child). Translation streams the file a
chunk at a time, so the target is the longest file's peak within 1.2x the shortest's.
Prints the result as JSON and writes it to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_pipeline import add_common_args, machine, run_main, write_json

from nmt import config as config_lib
from nmt import textio
from nmt.errors import NmtError

TARGET_RATIO = 1.2
NMT = str(Path(sys.executable).parent / "nmt")
SMOKE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a trained run (default: train a tiny one)")
    add_common_args(parser)
    parser.add_argument("--lines", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument("--out", default="runs/bench/translate_memory.json")
    return parser.parse_args(argv)


def train_tiny_run(folder: Path, args: argparse.Namespace) -> Path:
    """`nmt train configs/smoke.yaml` for 30 steps on the Multi30k files in --multi30k-dir."""
    data = Path(args.multi30k_dir)
    overrides = [
        f"data.train={data / 'train'}",
        f"data.validation={data / 'val'}",
        f"data.test={data / 'test_2016_flickr'}",
        "training.max_steps=30",
        *args.overrides,
    ]
    run_dir = folder / "run"
    command = [NMT, "train", str(SMOKE_CONFIG), "--run-dir", str(run_dir)]
    command += [x for override in overrides for x in ("--set", override)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise NmtError("training the tiny model failed:\n" + done.stderr[-2000:])
    return run_dir


def write_input(path: Path, sentences: list[str], lines: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(s + "\n" for s in itertools.islice(itertools.cycle(sentences), lines))


def translate(run_dir: Path, src: Path, beam_size: int) -> dict:
    """Runs `nmt translate` on `src` in a subprocess; its peak RSS, time and output lines."""
    out, log = src.with_suffix(".out"), src.with_suffix(".log")
    command = [NMT, "translate", str(run_dir), "--input", str(src), "--output", str(out)]
    command += ["--beam-size", str(beam_size)]
    start = time.perf_counter()
    with open(log, "w") as err:  # a file, not a pipe: the progress bar would fill a pipe
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise NmtError(f"{' '.join(command)} failed:\n" + log.read_text()[-2000:])
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "seconds": round(seconds, 1),
        "output_lines": textio.count_lines(out),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        run_dir = Path(args.run_dir) if args.run_dir else train_tiny_run(folder, args)
        src_lang = config_lib.load(run_dir / "config.yaml").data.src_lang
        test = Path(args.multi30k_dir) / f"test_2016_flickr.{src_lang}.gz"
        sentences = list(textio.read_lines(test))
        rows = {}
        for lines in args.lines:
            write_input(folder / f"in{lines}.txt", sentences, lines)
            rows[lines] = translate(run_dir, folder / f"in{lines}.txt", args.beam_size)
            if rows[lines]["output_lines"] != lines:
                raise NmtError(f"{lines} input lines gave {rows[lines]['output_lines']}")
            print(f"{lines} lines: {rows[lines]}", file=sys.stderr)
    peaks = [rows[n]["peak_rss_mb"] for n in (min(rows), max(rows))]
    result = {
        "benchmark": "translate_memory",
        "machine": machine(),
        "run_dir": args.run_dir or "tiny model trained on the fly (configs/smoke.yaml, 30 steps)",
        "beam_size": args.beam_size,
        "runs": rows,
        "ratio": round(peaks[1] / peaks[0], 3),
        "target_ratio": TARGET_RATIO,
    }
    print(json.dumps(result, indent=2))
    write_json(result, args.out)


if __name__ == "__main__":
    run_main(main, __file__)
