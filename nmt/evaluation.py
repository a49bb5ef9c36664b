"""BLEU and chrF with sacrebleu on detokenized, cased text (BLEU lowercased as well, the
literature's Multi30k numbers are `-lc`), and a breakdown by source length."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from nmt.errors import DataError, NmtError
from nmt.rundir import atomic_write

# Source-length buckets (in words) for the breakdown: [0, 10), [10, 20), ... [50, inf).
LENGTH_EDGES = (10, 20, 30, 40, 50)
# Shuffles of the paired approximate-randomization test: sacrebleu --paired-ar's default.
AR_TRIALS = 10_000


def score(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF of `hyps` against one reference per sentence.

    Returns:
        {"bleu", "bleu_lc", "chrf", their "..._signature"s, "sentences"}; `bleu_lc` is
        sacrebleu's `-lc` (case-insensitive) BLEU.
    """
    if len(hyps) != len(refs):
        raise DataError(f"{len(hyps)} hypotheses but {len(refs)} references")
    metrics = {"bleu": BLEU(), "bleu_lc": BLEU(lowercase=True), "chrf": CHRF()}
    report = {}
    for name, metric in metrics.items():
        report[name] = round(metric.corpus_score(list(hyps), [list(refs)]).score, 2)
        report[f"{name}_signature"] = str(metric.get_signature())
    return {**report, "sentences": len(hyps)}


def bucket_label(n_words: int, edges: Sequence[int] = LENGTH_EDGES) -> str:
    lower = 0
    for edge in edges:
        if n_words < edge:
            return f"{lower}-{edge - 1}"
        lower = edge
    return f"{lower}+"


def by_source_length(
    srcs: Sequence[str],
    hyps: Sequence[str],
    refs: Sequence[str],
    edges: Sequence[int] = LENGTH_EDGES,
) -> list[dict[str, Any]]:
    """BLEU per source-length bucket (words), as in Bahdanau et al. (2015), figure 2.

    Returns:
        One dict per non-empty bucket, shortest first: {"bucket", "sentences", "bleu", "chrf"}.
    """
    groups: dict[str, tuple[list[str], list[str]]] = {}
    order: dict[str, int] = {}
    for src, hyp, ref in zip(srcs, hyps, refs, strict=True):
        n = len(src.split())
        label = bucket_label(n, edges)
        order.setdefault(label, sum(n >= e for e in edges))
        groups.setdefault(label, ([], []))
        groups[label][0].append(hyp)
        groups[label][1].append(ref)
    rows = []
    for label in sorted(groups, key=order.__getitem__):
        hs, rs = groups[label]
        result = score(hs, rs)
        rows.append(
            {"bucket": label, "sentences": len(hs), "bleu": result["bleu"], "chrf": result["chrf"]}
        )
    return rows


def load_data(
    cfg, src: str | None, ref: str | None, split: str | None
) -> tuple[list[str], list[str], str]:
    """Source and reference sentences from two files or a split of the configured corpus.

    Returns:
        (sources, references, name), name labelling the output files (e.g. "test").
    """
    from nmt import corpus, textio

    if split and (src or ref):
        raise DataError("give either --split or --src/--ref, not both")
    if split:
        pairs = list(corpus.iter_pairs(cfg.data, split))
        return [s for s, _ in pairs], [t for _, t in pairs], split
    if not (src and ref):
        raise DataError("give --src FILE and --ref FILE, or --split NAME")
    srcs, refs = list(textio.read_lines(src)), list(textio.read_lines(ref))
    if len(srcs) != len(refs):
        raise DataError(f"{src} has {len(srcs)} lines but {ref} has {len(refs)}")
    name = Path(src).name.removesuffix(".gz")
    return srcs, refs, name


def evaluate(
    translator, srcs: Sequence[str], refs: Sequence[str], decoding: dict, by_length: bool = False
) -> dict[str, Any]:
    """Translates `srcs` and scores them against `refs`.

    Returns:
        The report: scores and signatures, decoding settings, speed, the hypotheses, and a
        by-source-length breakdown when asked.
    """
    opts = translator.decoding_options(**decoding)
    start = time.perf_counter()
    from nmt.console import Progress

    progress = Progress(len(srcs))
    hyps = translator.translate(srcs, **decoding, progress=progress)
    progress.close()
    seconds = time.perf_counter() - start
    report = {
        **score(hyps, refs),
        "beam_size": opts.beam_size,
        "length_penalty": opts.length_penalty,
        "seconds": round(seconds, 2),
        "sentences_per_s": round(len(srcs) / max(seconds, 1e-9), 2),
    }
    if by_length:
        report["by_source_length"] = by_source_length(srcs, hyps, refs)
    report["hypotheses"] = hyps
    return report


def tune_decoding(
    translator,
    srcs: Sequence[str],
    refs: Sequence[str],
    beam_sizes: Sequence[int],
    length_penalties: Sequence[float],
    batch_size: int | None = None,
    baseline: tuple[int, float] | None = None,
    max_p: float = 0.05,
) -> dict[str, Any]:
    """BLEU and speed of every beam size x length penalty on `srcs`, and the pair to use.

    `baseline` (beam size, length penalty), the untuned decoding, is scored too, outside
    the product if need be. The grid's highest replaces it only where it scores higher and a
    paired test on `srcs` gives p <= `max_p` (`paired_p_value`; 1: any higher score), so
    that a gain within chance does not move the default.

    Returns:
        {"sentences", "bleu_signature", "grid": [{"beam_size", "length_penalty", "bleu",
        "sentences_per_s"}, ...] (beams, then penalties, ascending), "highest": the cell of
        the highest BLEU (of equal ones, the first: the smallest beam), "best": the cell to
        use}; with a baseline also "default" (its cell), "p_value" (None where the highest
        scores no more than the default) and "max_p".

    Raises:
        NmtError: a beam size or batch size below 1, a negative length penalty, or `max_p`
        outside (0, 1].
    """
    if min(length_penalties) < 0:
        raise NmtError(f"length penalties must be at least 0, got {min(length_penalties)}")
    if not 0 < max_p <= 1:
        raise NmtError(f"the p-value threshold (--max-p) must be in (0, 1], got {max_p:g}")
    pairs = {(k, float(a)) for k in beam_sizes for a in length_penalties}
    if baseline is not None:
        pairs.add((baseline[0], float(baseline[1])))
    grid = [{"beam_size": k, "length_penalty": a} for k, a in sorted(pairs)]
    for cell in grid:  # every option checked before the first, long, decode
        translator.decoding_options(**cell, n_best=1, batch_size=batch_size)
    hyps = []
    for cell in grid:
        report = evaluate(translator, srcs, refs, {**cell, "n_best": 1, "batch_size": batch_size})
        cell.update(bleu=report["bleu"], sentences_per_s=report["sentences_per_s"])
        hyps.append(report["hypotheses"])
    highest = max(range(len(grid)), key=lambda i: grid[i]["bleu"])
    tuned = {
        "sentences": len(srcs),
        "bleu_signature": report["bleu_signature"],
        "grid": grid,
        "highest": grid[highest],
        "best": grid[highest],
    }
    if baseline is None:
        return tuned
    default = [(c["beam_size"], c["length_penalty"]) for c in grid].index(
        (baseline[0], float(baseline[1]))
    )
    gain = grid[highest]["bleu"] > grid[default]["bleu"]  # a tie keeps the default
    p = paired_p_value(hyps[default], hyps[highest], refs) if gain else None
    if p is None or p > max_p:
        tuned["best"] = grid[default]
    return {**tuned, "default": grid[default], "p_value": p, "max_p": max_p}


def paired_p_value(
    baseline: Sequence[str],
    system: Sequence[str],
    refs: Sequence[str],
    trials: int = AR_TRIALS,
    seed: int = 12345,
) -> float:
    """How likely a BLEU difference at least as large as between `baseline` and `system`
    is on these sentences if the two were one system: the two-sided paired approximate-
    randomization test of `sacrebleu --paired-ar` (its trials, seed and shuffles), except
    that a shuffle exactly as far apart as the real pair counts against the difference.
    sacreBLEU counts only larger ones, which gives p ~ 0 to systems that differ in a single
    sentence, as the next cells of a decoding grid often do."""
    import numpy as np

    bleu = BLEU()
    stats = np.array(
        [
            [
                _bleu_statistics(bleu.corpus_score([h], [[r]]))
                for h, r in zip(hyps, refs, strict=True)
            ]
            for hyps in (baseline, system)
        ]
    )
    swap = np.random.default_rng(seed).integers(2, size=(trials, len(refs)), dtype=bool)
    totals = stats.sum(axis=1)  # (2, statistics): each system's corpus statistics
    shuffled_a = swap @ stats[0] + ~swap @ stats[1]
    shuffled_b = totals.sum(axis=0) - shuffled_a  # the sentences shuffled_a did not take
    observed = abs(_corpus_bleu(totals[0]) - _corpus_bleu(totals[1]))
    diffs = np.abs(
        [_corpus_bleu(a) - _corpus_bleu(b) for a, b in zip(shuffled_a, shuffled_b, strict=True)]
    )
    return float((np.sum(diffs >= observed) + 1) / (trials + 1))


def _bleu_statistics(one: Any) -> list[int]:
    """BLEU's sufficient statistics of one scored sentence, in sacreBLEU's order."""
    return [one.sys_len, one.ref_len, *one.counts, *one.totals]


def _corpus_bleu(stats) -> float:
    """BLEU from summed sufficient statistics, as `BLEU().corpus_score` computes it."""
    order = (len(stats) - 2) // 2  # sys_len, ref_len, then matches and totals per order
    return BLEU.compute_bleu(
        stats[2 : 2 + order], stats[2 + order :], int(stats[0]), int(stats[1]), "exp"
    ).score


def write_report(report: dict[str, Any], out_dir: Path, name: str) -> None:
    """Writes NAME.hyp (one translation per line) and NAME.json (the report without them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / f"{name}.hyp", "".join(h + "\n" for h in report["hypotheses"]))
    summary = {k: v for k, v in report.items() if k != "hypotheses"}
    atomic_write(out_dir / f"{name}.json", json.dumps(summary, indent=2) + "\n")


def validation_bleu(cfg, run_dir: str | Path):
    """A `train(validation_score=...)` function: greedy BLEU on the validation split.

    Decodes the first `training.bleu_max_sentences` validation pairs (0: all) with the
    model being trained, its tokenizers read from `run_dir` at the first call (training
    writes them before the first epoch ends).
    """
    import itertools

    from nmt import corpus, rundir, tokenizer
    from nmt.translator import Translator

    limit = cfg.training.bleu_max_sentences or None
    pairs = list(itertools.islice(corpus.iter_pairs(cfg.data, "validation"), limit))
    srcs, refs = [s for s, _ in pairs], [t for _, t in pairs]
    translators: dict[int, Translator] = {}  # one per model, so the search compiles once

    def bleu(model) -> float:
        if id(model) not in translators:
            toks = tokenizer.load_tokenizers(rundir.RunDir(run_dir).tokenizer)
            translators[id(model)] = Translator(cfg, model, *toks)
        return score(translators[id(model)].translate(srcs, beam_size=1), refs)["bleu"]

    return bleu
