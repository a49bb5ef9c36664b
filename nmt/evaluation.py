"""BLEU and chrF with sacrebleu on detokenized, cased text, and a breakdown by source length."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sacrebleu.metrics import BLEU, CHRF

from nmt.errors import DataError

# Source-length buckets (in words) for the breakdown: [0, 10), [10, 20), ... [50, inf).
LENGTH_EDGES = (10, 20, 30, 40, 50)


def score(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF of `hyps` against one reference per sentence.

    Returns:
        {"bleu", "chrf", "bleu_signature", "chrf_signature", "sentences"}.
    """
    if len(hyps) != len(refs):
        raise DataError(f"{len(hyps)} hypotheses but {len(refs)} references")
    bleu, chrf = BLEU(), CHRF()
    return {
        "bleu": round(bleu.corpus_score(list(hyps), [list(refs)]).score, 2),
        "chrf": round(chrf.corpus_score(list(hyps), [list(refs)]).score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hyps),
    }


def bucket_label(n_words: int, edges: Sequence[int] = LENGTH_EDGES) -> str:
    lower = 0
    for edge in edges:
        if n_words < edge:
            return f"{lower}-{edge - 1}"
        lower = edge
    return f"{lower}+"


def by_source_length(srcs: Sequence[str], hyps: Sequence[str], refs: Sequence[str],
                     edges: Sequence[int] = LENGTH_EDGES) -> list[dict[str, Any]]:
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
        rows.append({"bucket": label, "sentences": len(hs),
                     "bleu": result["bleu"], "chrf": result["chrf"]})
    return rows
