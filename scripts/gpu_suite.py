"""The GPU measurements of issue 8 (item 6) in one command: per backend and precision.

    python3 scripts/gpu_suite.py [--config configs/multi30k_en_de_attention.yaml]
        [--backends jax torch] [--precisions float32 mixed_float16 mixed_bfloat16]
        [--batch-sizes 64 128 256 512] [--warmup 30] [--steps 200] [--group 10]
        [--train-steps 2000] [--peak-tflops float32=67 mixed_float16=989 mixed_bfloat16=989]
        [--multi30k-dir DIR] [--set section.key=value ...] [--parts bench quality]
        [--work-dir runs/gpu] [--out runs/gpu/suite.json] [--tiny]
    python3 scripts/gpu_suite.py --report PART.json [PART.json ...] [--out MERGED.json]

Run it from the repository root; it needs Keras, Grain, sentencepiece, sacrebleu, pyyaml and
the backends' own packages (JAX with CUDA, PyTorch with CUDA), and never TensorFlow. The
subprocesses get `KERAS_BACKEND` and the repository on `PYTHONPATH`, so nmt need not be
installed. Steps, for each backend:

1. `python -m nmt.cli prepare` once into WORK/prep (SentencePiece, filtered counts), shared by
   everything below.
2. bench: scripts/bench_train.py over precisions x `--batch-sizes` on Multi30k train through
   the real input pipeline (Grain), each combination in a fresh process: target tokens/s,
   peak GPU memory, FLOPs per target token (nmt/flops.py), model TFLOP/s and model FLOP
   utilisation against `--peak-tflops` (defaults: NVIDIA H100 SXM / H200 dense peaks,
   float32 without tensor cores; each row records whether float32 may use TF32), and the
   batch size with the most tokens/s.
3. quality: per precision, `nmt train CONFIG --set training.precision=P --set
   training.max_steps=N` (with `training.epochs=1000` and `training.patience=0`, so every run
   makes exactly N updates), then `nmt evaluate RUN --split validation --beam-size 1`:
   greedy validation BLEU after the same number of updates (mixed precision must not cost
   quality), with the validation NLL and the step of the weights evaluated.

The JSON (`--out`) is rewritten after every step, so a run cut short keeps what it measured;
`--backends` and `--parts` split the work into pieces (e.g. under a time limit per command)
and `--report` merges the pieces' JSON files and prints the tables. The tables are markdown,
ready for docs/benchmarks.md.

`--tiny`: smoke-config sizes (1000 pieces, 32/64 units, sentences up to 32 tokens), a few
steps, one batch size, 10 updates: checks the whole path on a CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nmt import config as config_lib  # noqa: E402
from nmt import rundir  # noqa: E402

BENCH = REPO / "scripts" / "bench_train.py"
PRECISIONS = ["float32", "mixed_float16", "mixed_bfloat16"]
# NVIDIA H100 SXM (and H200) dense peaks, TFLOP/s: float32 on CUDA cores (TF32 tensor cores:
# ~495), float16 / bfloat16 tensor cores without sparsity.
H100_PEAKS = ["float32=67", "mixed_float16=989", "mixed_bfloat16=989"]
FULL = dict(batch_sizes=[64, 128, 256, 512], warmup=30, steps=200, group=10, train_steps=2000)
TINY = dict(batch_sizes=[32], warmup=2, steps=4, group=2, train_steps=10)
TINY_SET = [
    "tokenizer.vocab_size=1000",
    "tokenizer.max_training_sentences=5000",
    "data.max_src_len=32",
    "data.max_tgt_len=32",
    "model.embedding_dim=32",
    "model.encoder_units=32",
    "model.decoder_units=64",
    "model.maxout_units=32",
    "model.attention_units=32",
]
# Every quality run stops at exactly training.max_steps updates.
QUALITY_SET = ["training.epochs=1000", "training.patience=0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/multi30k_en_de_attention.yaml")
    parser.add_argument("--backends", nargs="+", default=["jax", "torch"])
    parser.add_argument("--precisions", nargs="+", default=PRECISIONS, choices=PRECISIONS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="bench sweep (64 128 256 512)")
    parser.add_argument("--warmup", type=int, help="untimed bench steps (30)")
    parser.add_argument("--steps", type=int, help="timed bench steps (200)")
    parser.add_argument("--group", type=int, help="bench steps per clock reading (10)")
    parser.add_argument("--train-steps", type=int, help="updates before validation BLEU (2000)")
    parser.add_argument("--peak-tflops", nargs="+", help=f"for MFU (default {H100_PEAKS})")
    parser.add_argument("--multi30k-dir", default=str(config_lib.default_multi30k_dir()))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--parts", nargs="+", default=["bench", "quality"])
    parser.add_argument("--work-dir", help="run folders (default runs/gpu, runs/gpu-tiny)")
    parser.add_argument("--out", help="the JSON (default WORK/suite.json)")
    parser.add_argument("--tiny", action="store_true", help="smoke sizes, a few steps (CPU)")
    parser.add_argument("--report", nargs="+", metavar="JSON", help="merge and print only")
    args = parser.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.peak_tflops is None:
        args.peak_tflops = [] if args.tiny else H100_PEAKS
    if not set(args.parts) <= {"bench", "quality"}:
        parser.error("--parts takes bench and/or quality")
    args.overrides = (TINY_SET if args.tiny else []) + args.overrides
    args.work_dir = Path(args.work_dir or ("runs/gpu-tiny" if args.tiny else "runs/gpu"))
    args.write_merged = args.out is not None
    args.out = Path(args.out or args.work_dir / "suite.json")
    return args


# --------------------------------------------------------------------------- environment


def environment(backend: str) -> dict[str, str]:
    """The subprocesses' environment: the backend, and this checkout importable as `nmt`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": path,
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def machine() -> dict:
    """Host, GPU (nvidia-smi) and package versions."""
    versions = {}
    for package in ("keras", "jax", "jaxlib", "torch", "grain", "sentencepiece", "sacrebleu"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    gpu = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version"]
        proc = subprocess.run([*query, "--format=csv,noheader"], capture_output=True, text=True)
        gpu = proc.stdout.strip() or None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gpu": gpu,
        "versions": versions,
        "command": " ".join(sys.argv),
    }


def run(command: list[str], backend: str) -> tuple[int, float]:
    """Runs a subprocess with the backend's environment; (exit status, seconds)."""
    print(f"\n$ KERAS_BACKEND={backend} {' '.join(command)}", flush=True)
    start = time.perf_counter()
    status = subprocess.run(command, env=environment(backend), check=False).returncode
    return status, round(time.perf_counter() - start, 1)


def nmt_command(*words: str) -> list[str]:
    return [sys.executable, "-m", "nmt.cli", *words]


def config_sets(args: argparse.Namespace) -> list[str]:
    sets = [f"data.multi30k_dir={args.multi30k_dir}", *args.overrides]
    return [f"--set={text}" for text in sets]


# --------------------------------------------------------------------------- the steps


def prepare(args: argparse.Namespace, backend: str) -> Path:
    """Tokenizers and counts in WORK/prep, made once and reused by every run."""
    prep = args.work_dir / "prep"
    status, _ = run(
        nmt_command("prepare", args.config, "--run-dir", str(prep)) + config_sets(args), backend
    )
    if status != 0:
        sys.exit(f"gpu_suite.py: error: nmt prepare failed (exit {status})")
    return prep


def bench(args: argparse.Namespace, backend: str, prep: Path) -> dict:
    """scripts/bench_train.py over precisions x batch sizes under one backend."""
    out = args.work_dir / f"bench-{backend}.json"
    command = [sys.executable, str(BENCH), "--configs", args.config]
    command += ["--precisions", *args.precisions, "--batch-sizes", *map(str, args.batch_sizes)]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    command += ["--group", str(args.group), "--multi30k-dir", args.multi30k_dir]
    command += ["--prep-dir", str(prep), "--out", str(out)]
    command += ["--peak-tflops", *args.peak_tflops] if args.peak_tflops else []
    command += config_sets(args)
    status, seconds = run(command, backend)
    if status != 0 or not out.is_file():
        return {"error": f"bench_train.py exit {status}", "seconds": seconds}
    return {**json.loads(out.read_text()), "seconds": seconds}


def fresh_run_dir(prep: Path, run_dir: Path) -> None:
    """An empty run folder holding the shared tokenizers and counts (not trained again)."""
    source, run = rundir.RunDir(prep), rundir.RunDir(run_dir)
    shutil.rmtree(run.path, ignore_errors=True)
    run.path.mkdir(parents=True)
    shutil.copytree(source.tokenizer, run.tokenizer)
    shutil.copy2(source.stats, run.stats)


def quality(args: argparse.Namespace, backend: str, precision: str, prep: Path) -> dict:
    """Trains `train_steps` updates at one precision, then greedy validation BLEU."""
    row = {"backend": backend, "precision": precision, "max_steps": args.train_steps}
    run_dir = args.work_dir / f"{backend}-{precision}"
    fresh_run_dir(prep, run_dir)
    sets = [*QUALITY_SET, f"training.precision={precision}"]
    sets.append(f"training.max_steps={args.train_steps}")
    command = nmt_command("train", args.config, "--run-dir", str(run_dir))
    command += config_sets(args) + [f"--set={text}" for text in sets]
    status, row["train_seconds"] = run(command, backend)
    if status != 0:
        return {**row, "error": f"nmt train exit {status}"}
    eval_dir = rundir.RunDir(run_dir).eval
    command = nmt_command("evaluate", str(run_dir), "--split", "validation", "--beam-size", "1")
    status, row["evaluate_seconds"] = run(command + ["--output-dir", str(eval_dir)], backend)
    if status != 0:
        return {**row, "error": f"nmt evaluate exit {status}"}
    return {**row, **run_summary(run_dir, eval_dir / "validation.json")}


def run_summary(run_dir: Path, report_path: Path) -> dict:
    """Updates made, which weights were evaluated, last validation loss, BLEU and chrF."""
    run = rundir.RunDir(run_dir)
    state = json.loads(run.state.read_text())
    lines = run.metrics.read_text().splitlines()
    last = json.loads(lines[-1]) if lines else {}
    report = json.loads(report_path.read_text())
    best = state.get("best_weights", "")
    return {
        "updates": state["step"],
        "evaluated_weights_step": int(best[5:-11]) if best.startswith("best-") else None,
        "val_nll": last.get("val_nll"),
        "val_ppl": last.get("val_ppl"),
        "bleu": report["bleu"],
        "chrf": report["chrf"],
        "sentences": report["sentences"],
        "bleu_signature": report["bleu_signature"],
    }


# --------------------------------------------------------------------------- report


def merge(parts: list[dict]) -> dict:
    """Several suite JSONs as one: bench results by backend, quality rows by (backend,
    precision), the later file winning."""
    merged = {"suite": "gpu", "parts": [p.get("machine") for p in parts], "bench": {}}
    rows = {}
    for part in parts:
        merged.setdefault("settings", part.get("settings"))
        merged["bench"].update(part.get("bench", {}))
        rows.update({(r["backend"], r["precision"]): r for r in part.get("quality", [])})
    merged["quality"] = list(rows.values())
    return merged


def fmt(value, spec: str = ".0f") -> str:
    return "-" if value is None else f"{value:{spec}}"


def bench_rows(result: dict) -> list[dict]:
    rows = []
    for backend, part in result.get("bench", {}).items():
        rows += [{"backend": backend, **r} for r in part.get("runs", [])]
    return rows


def flop_line(rows: list[dict]) -> str:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return "No bench rows: no FLOP count."
    r = ok[0]
    return (
        f"Training FLOPs per target token (nmt/flops.py, 3 x forward, matrix products only): "
        f"{r['train_flop_per_target_token'] / 1e6:.1f} MFLOP at "
        f"{r['source_tokens_per_sentence']} source / {r['target_tokens_per_sentence']} target "
        f"tokens per sentence (the timed batches; EOS counted, padding not). Device: "
        f"{r['device']}."
    )


def summary_table(result: dict) -> list[str]:
    """One line per backend and precision: throughput at the first batch size of the sweep
    and the best one, memory, MFU, and validation BLEU after the same number of updates."""
    rows = bench_rows(result)
    quality = {(q["backend"], q["precision"]): q for q in result.get("quality", [])}
    keys = list(dict.fromkeys([(r["backend"], r["precision"]) for r in rows] + list(quality)))
    steps = sorted({q.get("updates") or q["max_steps"] for q in quality.values()})
    first = (result.get("settings") or {}).get("batch_sizes", ["?"])[0]
    lines = [
        f"| backend | precision | target tokens/s at batch {first} | peak GPU MiB | "
        f"model TFLOP/s | MFU | best batch size | target tokens/s at best | val BLEU (greedy) "
        f"after {'/'.join(map(str, steps))} updates | val chrF | val NLL |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in keys:
        mine = [r for r in rows if (r["backend"], r["precision"]) == key]
        cells = [*key, *throughput_cells(mine), *quality_cells(quality.get(key, {}))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def throughput_cells(rows: list[dict]) -> list[str]:
    """Tokens/s, memory, TFLOP/s and MFU of the first row; the best row's batch, tokens/s."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        failed = f"failed: {rows[0]['error']}" if rows else "-"
        return [failed, "-", "-", "-", "-", "-"]
    first = rows[0] if rows[0] is ok[0] else {}
    best = max(ok, key=lambda r: r["target_tokens_per_s"])
    return [
        fmt(first.get("target_tokens_per_s")),
        fmt(first.get("device_peak_mb")),
        fmt(first.get("model_tflops"), ".3f"),
        fmt(first.get("mfu"), ".1%"),
        fmt(best["batch_size"], "d"),
        fmt(best["target_tokens_per_s"]),
    ]


def quality_cells(row: dict) -> list[str]:
    """BLEU, chrF and NLL; notes a failure, or weights from before the last update."""
    if row.get("error"):
        return [f"failed: {row['error']}", "-", "-"]
    bleu = fmt(row.get("bleu"), ".2f")
    step = row.get("evaluated_weights_step")
    if step is not None and step != row.get("updates"):
        bleu += f" (weights of step {step})"
    return [bleu, fmt(row.get("chrf"), ".2f"), fmt(row.get("val_nll"), ".3f")]


def sweep_table(result: dict) -> list[str]:
    lines = [
        "| backend | precision | batch size | target tokens/s | sentences/s | peak GPU MiB | "
        "model TFLOP/s | MFU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in bench_rows(result):
        if "error" in r:
            lines.append(
                f"| {r['backend']} | {r['precision']} | {r.get('batch_size')} | "
                f"failed: {r['error']} | | | | |"
            )
            continue
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['batch_size']} | "
            f"{r['target_tokens_per_s']:.0f} | {r['sentences_per_s']:.0f} | "
            f"{fmt(r['device_peak_mb'])} | {r['model_tflops']:.3f} | {fmt(r.get('mfu'), '.1%')} |"
        )
    return lines


def print_report(result: dict) -> None:
    print("\n" + flop_line(bench_rows(result)) + "\n")
    print("\n".join(summary_table(result)) + "\n")
    print("\n".join(sweep_table(result)))


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


# --------------------------------------------------------------------------- main


def check_data(args: argparse.Namespace) -> None:
    cfg = config_lib.load(args.config, [f"data.multi30k_dir={args.multi30k_dir}", *args.overrides])
    if cfg.data.format != "multi30k":
        return
    wanted = Path(args.multi30k_dir) / f"train.{cfg.data.src_lang}.gz"
    if not wanted.is_file():
        sys.exit(f"gpu_suite.py: error: {wanted} not found; give --multi30k-dir")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        result = merge([json.loads(Path(p).read_text()) for p in args.report])
        print_report(result)
        if args.write_merged:
            write(result, args.out)
        return
    check_data(args)
    settings = {k: getattr(args, k) for k in ("config", "backends", "precisions", "parts")}
    settings.update({k: getattr(args, k) for k in ("batch_sizes", "warmup", "steps", "group")})
    settings.update(train_steps=args.train_steps, overrides=args.overrides, tiny=args.tiny)
    result = {"suite": "gpu", "machine": machine(), "settings": settings, "bench": {}}
    result["quality"] = []
    prep = prepare(args, args.backends[0])
    for backend in args.backends:
        if "bench" in args.parts:
            result["bench"][backend] = bench(args, backend, prep)
            write(result, args.out)
        for precision in args.precisions if "quality" in args.parts else []:
            result["quality"].append(quality(args, backend, precision, prep))
            write(result, args.out)
    print_report(result)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
