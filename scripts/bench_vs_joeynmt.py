"""Benchmark: ours against the JoeyNMT peer on this machine, in one invocation: the matmul
peaks, training throughput, time to quality and decoding speed.

    .venv/bin/python scripts/bench_vs_joeynmt.py [--phases peaks train quality decode]
        [--minutes 30] [--decode-updates 1000] [--joeynmt-work /tmp/joeynmt-m30k]
        [--multi30k-dir DIR] [--out runs/bench/vs_joeynmt.json] [--plot FILE.png]

The phases run one after the other (about 90 minutes on 2 cores); run it on a quiet machine.
Each writes its part of `--out` as soon as it ends (a later invocation with other `--phases`
keeps the parts it does not redo). Ours: `--config`, by default
configs/multi30k_en_de_attention.yaml, whose sizes are the peer's (../shared/peers/joeynmt).

1. peaks (~1 min): `scripts/bench_matmul.py`, float32 and bfloat16 GFLOP/s of this CPU.
2. train (~15 min): `scripts/bench_train.py` with float32 and mixed_bfloat16 under TensorFlow
   and JAX, 30 warm-up and 200 timed steps, `--peak-tflops` from phase 1 (model FLOP
   utilisation) and `--joeynmt` (the peer's run.sh, 300 updates): target tokens/s side by
   side.
3. quality (2 x `--minutes`): ours, then JoeyNMT, each from process start for `--minutes` of
   wall clock. Ours: `nmt train` with greedy validation BLEU on the whole validation split
   after every epoch, no epoch limit (SentencePiece prepared beforehand, as run.sh prepares
   the peer's). JoeyNMT: its config, greedy validation BLEU on the same split every
   `--joeynmt-validation-freq` (200) updates, every validation checkpoint kept. Both clocks
   include start-up and validation.
   Reported: each validation's (minutes, updates, BLEU), the curves' BLEU at every 5 minutes
   (the last validation before the mark), ours / JoeyNMT at 20 minutes, a PNG plot.
4. decode (~10 min, ~30 without phase 3's checkpoint): JoeyNMT's checkpoint after
   `--decode-updates` updates (phase 3 keeps it; without it, JoeyNMT trains that many)
   against ours trained exactly as many updates (`nmt train --set training.max_steps=N`,
   same data order as phase 3), test_2016_flickr, beam 5 and greedy,
   batch 64, length penalty 1.0 (the peer's) for both. Ours: `scripts/bench_decode.py` (median
   of 3 passes after a warm-up pass). JoeyNMT: `joeynmt test` (its dev-set pass, then the test
   set; the time it logs for the test set, generation plus sacrebleu).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import joeynmt_peer as peer
from bench_pipeline import add_common_args, machine, write_json

REPO = Path(__file__).resolve().parents[1]
PHASES = ("peaks", "train", "quality", "decode")
MARKS = (5, 10, 15, 20, 25, 30)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--minutes", type=float, default=30.0, help="training time per toolkit")
    parser.add_argument("--decode-updates", type=int, default=1000)
    parser.add_argument("--config", default="configs/multi30k_en_de_attention.yaml")
    parser.add_argument(
        "--joeynmt-validation-freq", type=int, default=200, help="updates between validations"
    )
    parser.add_argument("--joeynmt-work", type=Path, default=peer.DEFAULT_WORK)
    parser.add_argument("--bench-dir", type=Path, default=Path("runs/bench"))
    parser.add_argument("--out", default="runs/bench/vs_joeynmt.json")
    parser.add_argument("--plot", default="docs/time_to_quality.png")
    args = parser.parse_args(argv)
    if args.decode_updates % args.joeynmt_validation_freq:
        parser.error("--decode-updates must be a multiple of --joeynmt-validation-freq")
    return args


def script(name: str, *arguments: str) -> None:
    """Runs scripts/NAME with this Python; a failure stops the benchmark."""
    command = [sys.executable, str(REPO / "scripts" / name), *arguments]
    print("== " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def nmt(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "nmt.cli", *arguments]


def phase_peaks(args: argparse.Namespace) -> dict:
    out = args.bench_dir / "matmul.json"
    script("bench_matmul.py", "--out", str(out))
    return json.loads(out.read_text())


def phase_train(args: argparse.Namespace, peaks: dict) -> dict:
    out = args.bench_dir / "train_vs_joeynmt.json"
    tflops = [f"float32={peaks['float32'] / 1000}", f"mixed_bfloat16={peaks['bfloat16'] / 1000}"]
    script(
        "bench_train.py",
        *("--configs", args.config, "--precisions", "float32", "mixed_bfloat16"),
        *("--backends", "tensorflow", "jax"),
        *("--warmup", "30", "--steps", "200", "--multi30k-dir", args.multi30k_dir),
        *("--peak-tflops", *tflops, "--joeynmt", "--out", str(out)),
    )
    return json.loads(out.read_text())


def fresh_run(args: argparse.Namespace, name: str, *overrides: str) -> tuple[Path, list[str]]:
    """An empty run folder with SentencePiece prepared; the `--set` list for `nmt train`."""
    run = args.bench_dir / name
    shutil.rmtree(run, ignore_errors=True)
    sets = [f"--set=data.multi30k_dir={args.multi30k_dir}", *(f"--set={o}" for o in overrides)]
    subprocess.run(nmt("prepare", args.config, "--run-dir", str(run), *sets), check=True)
    return run, sets


def ours_for(args: argparse.Namespace) -> list[dict]:
    """Trains ours for `--minutes`; its validation curve."""
    run, sets = fresh_run(
        args,
        "quality_ours",
        "training.epochs=1000",
        "training.patience=0",
        "training.early_stopping_metric=bleu",
        "training.bleu_max_sentences=0",
    )
    print(f"== nmt train {args.config} for {args.minutes} minutes", flush=True)
    start = time.time()
    process = subprocess.Popen(nmt("train", args.config, "--run-dir", str(run), *sets))
    peer.stop_process(process, start + 60 * args.minutes)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [
        {"minutes": round((r["time"] - start) / 60, 2), "step": r["step"], "bleu": r["val_bleu"]}
        for r in records
        if "val_bleu" in r
    ]


def joeynmt_for(args: argparse.Namespace) -> list[dict]:
    """Trains JoeyNMT for `--minutes`; its validation curve."""
    work = args.joeynmt_work
    peer.ensure_work(work)
    training = {
        "updates": 10**9,
        "validation_freq": args.joeynmt_validation_freq,
        "keep_best_ckpts": -1,  # every validation's checkpoint, for the decode phase
    }
    config = peer.write_config(work, "quality", training)
    print(f"== joeynmt train {config} for {args.minutes} minutes", flush=True)
    start = peer.train_for(work, config, 60 * args.minutes)
    return peer.validation_curve(work / "quality", start)


def at_marks(curve: list[dict], marks=MARKS) -> dict[int, float | None]:
    """BLEU of the last validation at or before each mark (minutes); None before the first."""
    return {
        mark: max(
            ((p["minutes"], p["bleu"]) for p in curve if p["minutes"] <= mark), default=(0, None)
        )[1]
        for mark in marks
    }


def phase_quality(args: argparse.Namespace) -> dict:
    ours = [p for p in ours_for(args) if p["minutes"] <= args.minutes]
    joey = [p for p in joeynmt_for(args) if p["minutes"] <= args.minutes]
    result = {"minutes": args.minutes, "ours": ours, "joeynmt": joey}
    marks = [m for m in MARKS if m <= args.minutes]
    result["at_minutes"] = {"ours": at_marks(ours, marks), "joeynmt": at_marks(joey, marks)}
    a, b = result["at_minutes"]["ours"].get(20), result["at_minutes"]["joeynmt"].get(20)
    result["ours_over_joeynmt_at_20"] = round(a / b, 2) if a and b else None
    plot(result, args.plot)
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6.4, 4.0))
    for key, label in (("ours", "nmt (Keras 3, TensorFlow)"), ("joeynmt", "JoeyNMT 2.3.0")):
        curve = result[key]
        axes.plot(
            [0] + [p["minutes"] for p in curve], [0] + [p["bleu"] for p in curve], "o-", label=label
        )
    axes.set_xlabel("wall-clock minutes from process start (2 CPU cores)")
    axes.set_ylabel("validation BLEU (greedy, sacreBLEU)")
    axes.set_title("Multi30k en-de, GRU + attention at the same sizes")
    axes.set_xlim(0, result["minutes"])
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def phase_decode(args: argparse.Namespace) -> dict:
    n = args.decode_updates
    run, sets = fresh_run(
        args, f"decode_ours_{n}", f"training.max_steps={n}", "training.epochs=1000"
    )
    subprocess.run(nmt("train", args.config, "--run-dir", str(run), *sets), check=True)
    out = args.bench_dir / "decode_vs_joeynmt.json"
    script(
        "bench_decode.py",
        str(run),
        "--weights",
        "last",
        "--beams",
        "1",
        "5",
        *("--set", "decoding.length_penalty=1.0", "--set", "decoding.batch_size=64"),
        *("--multi30k-dir", args.multi30k_dir, "--out", str(out)),
    )
    ours = json.loads(out.read_text())
    checkpoint = joeynmt_checkpoint(args.joeynmt_work, n)
    work = args.joeynmt_work
    joey = []
    for beam in (1, 5):
        testing = {"load_model": str(checkpoint), "beam_size": beam, "batch_size": 64}
        config = peer.write_config(work, checkpoint.parent.name, {}, testing)
        row = peer.decode_test(work, config)
        joey.append({**row, "beam_size": beam, "sentences_per_s": round(1000 / row["seconds"], 1)})
    for row in joey:
        mine = next(r for r in ours["decoding"] if r["beam_size"] == row["beam_size"])
        row["ours_over_joeynmt"] = round(mine["sentences_per_s"] / row["sentences_per_s"], 2)
    return {"updates": n, "ours": ours, "joeynmt": joey}


def joeynmt_checkpoint(work: Path, n: int) -> Path:
    """JoeyNMT's checkpoint after `n` updates: the quality phase's, or an earlier call's, else
    one trained now with the same settings (same seed and data order), stopping at `n`."""
    name = f"decode_{n}"
    for checkpoint in (work / "quality" / f"{n}.ckpt", work / name / f"{n}.ckpt"):
        if checkpoint.is_file():
            return checkpoint
    peer.ensure_work(work)
    shutil.rmtree(work / name, ignore_errors=True)
    training = {"updates": n, "validation_freq": n, "keep_best_ckpts": -1}
    config = peer.write_config(work, name, training)
    print(f"== joeynmt train {config} ({n} updates, no quality checkpoint to reuse)", flush=True)
    peer.train_for(work, config, float("inf"))
    checkpoint = work / name / f"{n}.ckpt"
    if not checkpoint.is_file():
        raise SystemExit(f"JoeyNMT left no {checkpoint}; see {work / name / 'train.log'}")
    return checkpoint


def load(path: str) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Started in the background (`nohup ... &`), we and our children would ignore SIGINT, so
    # the trainings could not be stopped at their deadline: take it back for them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(REPO)
    args.bench_dir.mkdir(parents=True, exist_ok=True)
    result = load(args.out)
    result.update(benchmark="vs_joeynmt", machine=machine())
    for phase in PHASES:
        if phase not in args.phases:
            continue
        if phase == "peaks":
            result["peaks"] = phase_peaks(args)
        elif phase == "train":
            if "peaks" not in result:
                raise SystemExit("the train phase needs the peaks phase's numbers: run it first")
            result["train"] = phase_train(args, result["peaks"]["peak_gflops"])
        elif phase == "quality":
            result["quality"] = phase_quality(args)
        else:
            result["decode"] = phase_decode(args)
        result.setdefault("phase_times", {})[phase] = time.strftime("%Y-%m-%d %H:%M:%S")
        write_json(result, args.out)
    print_summary(result)


def bleu_cell(bleu: float | None) -> str:
    return "-" if bleu is None else f"{bleu:.2f}"


def print_summary(result: dict) -> None:
    """The markdown tables docs/benchmarks.md holds."""
    if "peaks" in result:
        print("\n| matmul | shape | GFLOP/s |\n| --- | --- | --- |")
        for r in result["peaks"]["rows"]:
            print(f"| {r['dtype']} | {r['shape']} | {r['gflops']:,.1f} |")
    if "train" in result:
        print("\n| toolkit | precision | target tokens/s | model GFLOP/s | share of peak |")
        print("| --- | --- | --- | --- | --- |")
        for r in result["train"]["runs"]:
            if "error" not in r:
                rate = f"{r['target_tokens_per_s']:,.0f}"
                print(
                    f"| nmt ({r['backend']}) | {r['precision']} | {rate} | "
                    f"{1000 * r['model_tflops']:,.1f} | {100 * r.get('mfu', 0):.1f}% |"
                )
        joey = result["train"].get("joeynmt", {})
        if "target_tokens_per_s" in joey:
            print(f"| JoeyNMT | float32 | {joey['target_tokens_per_s']:,.0f} | | |")
            print(f"\nours / JoeyNMT (float32): {joey.get('ours_over_joeynmt')}")
    if "quality" in result:
        q = result["quality"]
        print("\n| minutes | nmt BLEU | JoeyNMT BLEU |\n| --- | --- | --- |")
        for mark in q["at_minutes"]["ours"]:
            a, b = q["at_minutes"]["ours"][mark], q["at_minutes"]["joeynmt"][mark]
            print(f"| {mark} | {bleu_cell(a)} | {bleu_cell(b)} |")
        print(f"\nours / JoeyNMT at 20 minutes: {q['ours_over_joeynmt_at_20']}")
    if "decode" in result:
        d = result["decode"]
        print(f"\nafter {d['updates']} updates, test_2016_flickr, batch 64:")
        print("| beam | nmt sent/s | nmt BLEU | JoeyNMT sent/s | JoeyNMT BLEU | ratio |")
        print("| --- | --- | --- | --- | --- | --- |")
        for joey in d["joeynmt"]:
            mine = next(r for r in d["ours"]["decoding"] if r["beam_size"] == joey["beam_size"])
            print(
                f"| {joey['beam_size']} | {mine['sentences_per_s']} | {mine['bleu']:.2f} | "
                f"{joey['sentences_per_s']} | {joey['bleu']:.2f} | {joey['ours_over_joeynmt']} |"
            )


if __name__ == "__main__":
    main()
