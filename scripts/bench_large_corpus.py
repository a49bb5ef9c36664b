"""Benchmark: the same training on a corpus 1x, 10x and 100x Multi30k, to show that memory
does not grow with the corpus.

    .venv/bin/python scripts/bench_large_corpus.py [--scales 1 10 100]
        [--config configs/multi30k_en_de_attention.yaml] [--train-steps 100]
        [--warmup 20] [--steps 100] [--multi30k-dir ../shared/data/multi30k]
        [--work runs/bench/large] [--set section.key=value ...] [--out runs/bench/large.json]

The corpus at scale N is Multi30k's training files repeated N times (plain text, written
once into --work); validation is Multi30k's. For each scale, one after the other, each in
its own process so that peak resident memory (the child's `ru_maxrss`, from `os.wait4`)
is its alone:

- `nmt prepare`: SentencePiece on a bounded, seeded sample
  (`tokenizer.max_training_sentences`) and the filtered-pair counts, streamed. Wall time
  and peak RSS.
- `nmt train --set training.max_steps=N`: the real command from an empty run directory's
  prepared tokenizers, through model building, `--train-steps` updates, one validation
  and a checkpoint. Wall time and peak RSS.
- `scripts/bench_train.py` on the same config and run folder: steady training target
  tokens/s through the real input pipeline (median of step groups; see its docstring).

`--set` overrides go to all three, e.g. to exercise another config's pipeline on the
substitute corpus: `--config configs/wmt14_en_de.yaml --set model.encoder_units=256 ...`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_pipeline import machine, write_json

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--config", default="configs/multi30k_en_de_attention.yaml")
    parser.add_argument("--train-steps", type=int, default=100, help="updates of nmt train")
    parser.add_argument("--warmup", type=int, default=20, help="bench_train untimed steps")
    parser.add_argument("--steps", type=int, default=100, help="bench_train timed steps")
    parser.add_argument("--multi30k-dir", default="../shared/data/multi30k")
    parser.add_argument("--work", default="runs/bench/large")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default="runs/bench/large.json")
    return parser.parse_args(argv)


def write_corpus(multi30k: Path, folder: Path, scale: int, langs: tuple[str, str]) -> Path:
    """`folder/train.LANG` = Multi30k train repeated `scale` times, `folder/val.LANG` its
    validation split; returns `folder`. Written once."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        done = folder / f"train.{lang}"
        if done.exists():
            continue
        text = gzip.decompress((multi30k / f"train.{lang}.gz").read_bytes())
        tmp = done.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(scale):
                f.write(text)
        tmp.replace(done)
        (folder / f"val.{lang}").write_bytes(
            gzip.decompress((multi30k / f"val.{lang}.gz").read_bytes())
        )
    return folder


def run(command: list[str]) -> dict:
    """Runs `command`; its wall time (s) and peak RSS (MiB). Raises on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{out[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def bench_scale(args: argparse.Namespace, scale: int) -> dict:
    cfg_langs = ("en", "de")
    corpus = write_corpus(
        Path(args.multi30k_dir), Path(args.work) / f"corpus-{scale}x", scale, cfg_langs
    )
    run_dir = Path(args.work) / f"run-{scale}x"
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [
        "data.format=files",
        f"data.train={corpus / 'train'}",
        f"data.validation={corpus / 'val'}",
        f"data.test={corpus / 'val'}",
        *args.overrides,
    ]
    set_args = [a for s in sets for a in ("--set", s)]
    nmt = [sys.executable, "-m", "nmt.cli"]
    prepare = run([*nmt, "prepare", args.config, "--run-dir", str(run_dir), *set_args])
    stats = json.loads((run_dir / "data_stats.json").read_text())["counts"]["train"]
    steps = ["--set", f"training.max_steps={args.train_steps}", "--set", "training.epochs=1"]
    train = run([*nmt, "train", args.config, "--run-dir", str(run_dir), *set_args, *steps])
    out = Path(args.work) / f"bench-train-{scale}x.json"
    bench = [sys.executable, "scripts/bench_train.py", "--configs", args.config]
    bench += ["--prep-dir", str(run_dir), "--warmup", str(args.warmup), "--steps", str(args.steps)]
    run([*bench, *set_args, "--out", str(out)])
    (row,) = json.loads(out.read_text())["runs"]
    return {
        "scale": scale,
        "train_pairs": stats["total"],
        "prepare": prepare,
        "train": train,
        "target_tokens_per_s": row["target_tokens_per_s"],
        "bench_train_peak_rss_mb": row["peak_rss_mb"],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = []
    for scale in args.scales:
        rows.append(bench_scale(args, scale))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for row in rows:
        row["train_peak_rss_vs_first"] = round(
            row["train"]["peak_rss_mib"] / base["train"]["peak_rss_mib"], 3
        )
    result = {"benchmark": "large_corpus", "machine": machine(), "config": args.config}
    result.update(overrides=args.overrides, train_steps=args.train_steps, rows=rows)
    write_json(result, args.out)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
