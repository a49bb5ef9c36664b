import pytest

from nmt import evaluation
from nmt.errors import DataError

from .conftest import SRC_WORDS


def test_perfect_and_wrong_scores_with_signature():
    refs = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."]
    perfect = evaluation.score(refs, refs)
    assert perfect["bleu"] == 100.0 and perfect["chrf"] == 100.0
    assert perfect["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "chrF2" in perfect["chrf_signature"] or "nc:6" in perfect["chrf_signature"]
    wrong = evaluation.score(["Katze", "Baum"], refs)
    assert wrong["bleu"] < 5 and wrong["chrf"] < perfect["chrf"]


def test_bleu_is_cased_and_bleu_lc_is_not():
    refs = ["Ein Mann fährt Fahrrad im Park ."]
    scores = evaluation.score(["ein mann fährt fahrrad im park ."], refs)
    assert scores["bleu"] < 100 and scores["bleu_lc"] == 100.0
    assert "case:lc" in scores["bleu_lc_signature"]


def test_length_mismatch_is_an_error():
    with pytest.raises(DataError, match="2 hypotheses but 1 references"):
        evaluation.score(["a", "b"], ["a"])


def test_bucket_labels():
    assert evaluation.bucket_label(0) == "0-9"
    assert evaluation.bucket_label(9) == "0-9"
    assert evaluation.bucket_label(10) == "10-19"
    assert evaluation.bucket_label(55) == "50+"


def test_by_source_length_groups_and_orders():
    srcs = ["a " * 25, "b c", "d " * 12, "e"]
    hyps = ["x y z w", "the cat sat down", "a b c d", "q r s t"]
    rows = evaluation.by_source_length(srcs, hyps, hyps)
    assert [r["bucket"] for r in rows] == ["0-9", "10-19", "20-29"]
    assert [r["sentences"] for r in rows] == [2, 1, 1]
    assert all(r["bleu"] == 100.0 for r in rows)


def _noisy(refs, drop, seed):
    """Each reference with each word dropped at rate `drop`: a system of some quality."""
    import random

    rng = random.Random(seed)
    return [" ".join(w for w in ref.split() if rng.random() > drop) for ref in refs]


def test_paired_p_value_is_sacrebleus_approximate_randomization(monkeypatch):
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    monkeypatch.delenv("SACREBLEU_SEED", raising=False)  # sacreBLEU's seed, 12345, as ours

    words = SRC_WORDS
    refs = [" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(8)) for i in range(60)]
    for drop_b in (0.12, 0.3):  # a small difference, then a clear one
        # Every sentence differs, so that no shuffle ties the real pair (the one difference).
        a, b = _noisy(refs, 0.1, seed=1), ["x " + h for h in _noisy(refs, drop_b, seed=2)]
        test = PairedTest([("a", a), ("b", b)], {"BLEU": BLEU()}, [refs], n_samples=2000)
        expected = test()[1]["BLEU"][1].p_value
        assert evaluation.paired_p_value(a, b, refs, trials=2000) == pytest.approx(expected)
    assert expected < 0.01  # the clear difference is found


def test_a_single_changed_sentence_is_never_significant():
    refs = [f"a dog runs on the street number {i}" for i in range(50)]
    one_better = [refs[0], *_noisy(refs[1:], 0.3, seed=3)]
    baseline = [_noisy(refs[:1], 0.3, seed=4)[0], *one_better[1:]]
    # sacreBLEU's test counts only shuffles further apart than the pair: p ~ 0 here.
    assert evaluation.paired_p_value(baseline, one_better, refs) == 1.0
    assert evaluation.paired_p_value(baseline, baseline, refs) == 1.0
