"""Benchmark: one sentence, cold: the wall time of `nmt translate RUN_DIR "A man is riding a
bike."` (beam 5) from process start to exit, per backend, beside JoeyNMT's `translate`.

    .venv/bin/python scripts/bench_cold_start.py RUN_DIR [--repeats 5]
        [--backends auto tensorflow jax] [--joeynmt-work /tmp/joeynmt-m30k]
        [--out runs/bench/cold_start.json]

`auto` is the command as a user types it (no KERAS_BACKEND: a sentence argument decodes on
Keras' numpy backend); the others set KERAS_BACKEND. Each repeat is a fresh process, run one
after the other, backends interleaved so that a noisy moment hits all of them; the median
is reported. Files stay in the page cache after the first run, as they would for a user
translating twice.

JoeyNMT: with `--joeynmt-work` pointing at a work folder of ../shared/peers/joeynmt/run.sh
that holds a checkpoint (`model/best.ckpt`) and its `config.yaml`, the same sentence is
piped into `python -m joeynmt translate config.yaml` (beam 5 from its config).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_pipeline import machine, write_json

SENTENCE = "A man is riding a bike."
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["auto", "tensorflow", "jax"])
    parser.add_argument("--joeynmt-work", help="run.sh work folder with model/best.ckpt")
    parser.add_argument("--out", default="runs/bench/cold_start.json")
    return parser.parse_args(argv)


def commands(args: argparse.Namespace) -> dict[str, tuple[list[str], dict, str | None]]:
    """name -> (command, environment, stdin)."""
    nmt = [sys.executable, "-m", "nmt.cli", "translate", args.run_dir, "--beam-size", "5"]
    base = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    out = {}
    for backend in args.backends:
        env = base if backend == "auto" else {**base, "KERAS_BACKEND": backend}
        out[f"nmt ({backend})"] = ([*nmt, SENTENCE], env, None)
    if args.joeynmt_work:
        work = Path(args.joeynmt_work)
        joey = [str(work / "venv/bin/python"), "-m", "joeynmt", "translate"]
        out["joeynmt"] = ([*joey, str(work / "config.yaml")], base, SENTENCE + "\n")
    return out


def time_once(command: list[str], env: dict, stdin: str | None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        command, cwd=REPO, env=env, input=stdin, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return seconds, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = commands(args)
    times: dict[str, list[float]] = {name: [] for name in runs}
    outputs: dict[str, str] = {}
    for _ in range(args.repeats):
        for name, (command, env, stdin) in runs.items():
            seconds, outputs[name] = time_once(command, env, stdin)
            times[name].append(round(seconds, 2))
    rows = [
        {"what": name, "median_s": statistics.median(t), "runs_s": t, "output": outputs[name]}
        for name, t in times.items()
    ]
    for row in rows:
        print(f"{row['what']:<18} {row['median_s']:6.2f} s  {row['output']}")
    result = {"benchmark": "cold_start", "machine": machine(), "sentence": SENTENCE}
    result.update(run_dir=args.run_dir, repeats=args.repeats, rows=rows)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(result, args.out)


if __name__ == "__main__":
    main()
