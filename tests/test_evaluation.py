import pytest

from nmt import evaluation
from nmt.errors import DataError


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
