"""Benchmark: greedy and beam-search decoding speed and quality on Multi30k test_2016_flickr.

    .venv/bin/python scripts/bench_decode.py RUN_DIR [--beams 1 5] [--repeats 3]
        [--test test_2016_flickr] [--weights best|last|averaged] [--multi30k-dir DIR]
        [--set decoding.key=value ...]
        [--out runs/bench/decode.json]

Loads the run with `Translator.from_run_dir` and translates the 1000 test sentences string to
string (SentencePiece encoding, length-sorted batches, compiled search, decoding), once per
beam size with `decoding.batch_size` and `decoding.length_penalty` from the run's config (or
--set). The first pass is the warm-up and is reported on its own: every source-width bucket (one per
doubling) gets its own compiled search, so only a pass over the same batches warms them all up.
Then `--repeats` timed passes; sentences/s is their median. BLEU and chrF come from
`nmt.evaluation.score` (sacrebleu, detokenized and cased, signatures recorded) on the last
pass. Peak memory is the resident set (VmHWM, reset before each beam size's first pass).
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a trained run directory")
    add_common_args(parser)
    parser.add_argument("--test", default="test_2016_flickr", help="file stem of the test set")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--weights", default="best", help="best, last or averaged (nmt translate)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per beam size")
    parser.add_argument("--out", default="runs/bench/decode.json")
    args = parser.parse_args(argv)
    for text in args.overrides:
        if config_lib.parse_override(text)[0] != "decoding":
            parser.error(f"--set {text}: only decoding.* settings apply to a trained run")
    return args


def load_translator(args: argparse.Namespace):
    """The run's translator, its config updated with the decoding overrides."""
    from nmt import rundir
    from nmt.translator import Translator

    translator = Translator.from_run_dir(args.run_dir, weights=args.weights)
    config_path = Path(args.run_dir) / rundir.CONFIG_FILE
    translator.cfg = config_lib.load(config_path, args.overrides)
    return translator


def load_test_set(args: argparse.Namespace, data: config_lib.DataConfig) -> tuple[list, list]:
    """Source and reference sentences of `--test` in the run's language pair."""
    from nmt import corpus

    prefix = Path(args.multi30k_dir) / args.test
    pairs = list(corpus.iter_aligned(*corpus.pair_paths(prefix, data.src_lang, data.tgt_lang)))
    return [s for s, _ in pairs], [t for _, t in pairs]


def timed(translator, sources: list[str], beam: int) -> tuple[list[str], float]:
    start = time.perf_counter()
    hyps = translator.translate(sources, beam_size=beam, n_best=1)
    return hyps, time.perf_counter() - start


def bench_beam(translator, sources: list[str], refs: list[str], beam: int, repeats: int) -> dict:
    """Warm-up pass, then `repeats` timed passes; scores of the last pass."""
    from nmt import evaluation

    opts = translator.decoding_options(beam_size=beam, n_best=1)
    memory = reset_peak_rss()
    _, first = timed(translator, sources, beam)
    runs = [timed(translator, sources, beam) for _ in range(repeats)]
    seconds = statistics.median(s for _, s in runs)
    return {
        "beam_size": beam,
        "batch_size": opts.batch_size,
        "length_penalty": opts.length_penalty,
        "sentences": len(sources),
        "first_pass_seconds": round(first, 2),
        "pass_seconds_median": round(seconds, 2),
        "pass_seconds": [round(s, 2) for _, s in runs],
        "sentences_per_s": round(len(sources) / seconds, 1),
        **evaluation.score(runs[-1][0], refs),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "memory_method": memory,
    }


def print_table(rows: list[dict]) -> None:
    print(f"\n{'beam':>4}{'first pass s':>14}{'pass s':>8}{'sent/s':>8}", end="")
    print(f"{'BLEU':>7}{'chrF':>7}{'RSS MiB':>9}")
    for r in rows:
        print(
            f"{r['beam_size']:>4}{r['first_pass_seconds']:>14.1f}{r['pass_seconds_median']:>8.1f}"
            f"{r['sentences_per_s']:>8.1f}{r['bleu']:>7.2f}{r['chrf']:>7.2f}"
            f"{r['peak_rss_mb']:>9.0f}"
        )
    if rows:
        print(f"{rows[0]['sentences']} sentences, batch {rows[0]['batch_size']}, median passes")
        print(f"BLEU: {rows[0]['bleu_signature']}\nchrF: {rows[0]['chrf_signature']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    translator = load_translator(args)
    sources, refs = load_test_set(args, translator.cfg.data)
    result = {"benchmark": "decode", "machine": machine(), "run_dir": args.run_dir}
    result["weights"] = args.weights
    result.update(test=args.test, overrides=args.overrides, repeats=args.repeats)
    rows = [bench_beam(translator, sources, refs, beam, args.repeats) for beam in args.beams]
    result.update(decoding=rows, load_average_end=[round(x, 2) for x in os.getloadavg()])
    print_table(rows)
    write_json(result, args.out)


if __name__ == "__main__":
    run_main(main, __file__)
