"""The benchmark scripts' own logic: reading JoeyNMT's logs, the time-to-quality marks, the
CPU description and the matmul peak (timings are never asserted, only their shape)."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_matmul  # noqa: E402
import bench_pipeline  # noqa: E402
import bench_vs_joeynmt  # noqa: E402
import joeynmt_peer  # noqa: E402

TRAIN_LOG = """\
2026-11-22 11:16:39,345 - INFO - joeynmt.training - Epoch   1, Step:  200, Batch Loss: 5.6
2026-11-22 11:16:50,448 - INFO - joeynmt.prediction - Evaluation result (greedy): bleu:   4.18, \
chrf:   0.24, loss:   5.63, ppl: 279.29, acc:   0.13, 0.1873[sec]
2026-11-22 11:20:01,000 - INFO - joeynmt.prediction - Generation took 17.7954[sec].
2026-11-22 11:20:02,500 - INFO - joeynmt.prediction - Evaluation result (beam search): bleu:  \
12.50, chrf:   0.41, 0.3352[sec]
"""
VALIDATIONS = (
    "Steps: 200\tloss: 5.63226\tacc: 0.13477\tppl: 279.29247\tbleu: 4.18254\tchrf: 0.24\t"
    "LR: 0.00099900\t*\n"
    "Steps: 400\tloss: 4.9\tacc: 0.2\tppl: 130.0\tbleu: 9.5\tchrf: 0.33\tLR: 0.00099800\t*\n"
)


def test_joeynmt_evaluation_lines_are_read_with_their_local_time():
    rows = joeynmt_peer.evaluations(TRAIN_LOG)
    assert [r["decoding"] for r in rows] == ["greedy", "beam search"]
    assert rows[0]["bleu"] == 4.18 and rows[1]["chrf"] == 0.41
    assert rows[1]["time"] - rows[0]["time"] == pytest.approx(192.052)
    expected = time.mktime(time.strptime("2026-11-22 11:16:50", "%Y-%m-%d %H:%M:%S")) + 0.448
    assert rows[0]["time"] == pytest.approx(expected)


def test_joeynmt_validation_curve_pairs_reports_with_log_times(tmp_path):
    (tmp_path / "validations.txt").write_text(VALIDATIONS)
    (tmp_path / "train.log").write_text(TRAIN_LOG)
    start = joeynmt_peer.evaluations(TRAIN_LOG)[0]["time"] - 90
    curve = joeynmt_peer.validation_curve(tmp_path, start)
    # Two reports, two evaluation lines: the second is a test-time line here, which is fine
    # for pairing by order; each point gets the time of its own line.
    assert curve[0] == {"minutes": 1.5, "step": 200, "bleu": 4.18254}
    assert [p["step"] for p in curve] == [200, 400]


def test_time_to_quality_marks_take_the_last_validation_before_each_mark():
    curve = [
        {"minutes": 3.0, "bleu": 5.0},
        {"minutes": 9.9, "bleu": 12.0},
        {"minutes": 10.1, "bleu": 14.0},
    ]
    assert bench_vs_joeynmt.at_marks(curve, (2, 5, 10, 15)) == {2: None, 5: 5.0, 10: 12.0, 15: 14.0}


def test_cpu_description_lists_only_known_matmul_flags():
    info = bench_pipeline.cpu()
    assert set(info["cpu_flags"]) <= set(bench_pipeline.MATMUL_FLAGS)
    if Path("/proc/cpuinfo").is_file():
        assert info["cpu_model"]


def test_matmul_peak_is_the_best_square_per_dtype():
    result = bench_matmul.measure([32, 64], ["float32"], repeats=1)
    squares = [r["gflops"] for r in result["rows"] if r["shape"].startswith("square")]
    assert len(result["rows"]) == 2 + len(bench_matmul.MODEL_SHAPES)
    assert result["peak_gflops"] == {"float32": max(squares)} and max(squares) > 0


def test_bench_train_measures_a_whole_run_cosine_config():
    """The shipped configs' cosine schedule spans the run (`lr_decay_steps: 0`): the
    throughput benchmark fits it to its own steps instead of failing to compile."""
    import argparse

    import bench_train

    sizes = ["model.embedding_dim=16", "model.encoder_units=16", "model.decoder_units=32"]
    args = argparse.Namespace(
        multi30k_dir="unused", overrides=sizes, warmup=2, steps=4, group=2, synthetic=True
    )
    config = str(Path(__file__).resolve().parents[1] / "configs/multi30k_en_de.yaml")
    row = bench_train.measure(config, "float32", None, args)
    assert row["precision"] == "float32"
