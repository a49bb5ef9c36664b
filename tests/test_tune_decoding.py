"""`nmt tune-decoding`: the grid, the stored best and the defaults it gives other commands."""

import contextlib
import io
import json
import re
import shutil

import pytest

from nmt import cli, evaluation, rundir
from nmt.rundir import RunDir
from nmt.translator import Translator

GRID = ["--beam-sizes", "2", "1", "--length-penalties", "1.0", "0", "--max-sentences", "8"]
# The fixture stores the grid's highest whatever its margin; the guard has tests of its own.
ANY_GAIN = ["--max-p", "1"]


@pytest.fixture(scope="module")
def tuned(tiny_run, tmp_path_factory) -> tuple[RunDir, str]:
    """A copy of the tiny run after `nmt tune-decoding` (the shared run stays untuned), and
    what the command printed."""
    run = RunDir(tmp_path_factory.mktemp("tuned") / "run")
    shutil.copytree(tiny_run, run.path)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli.main(["tune-decoding", str(run.path), *GRID, *ANY_GAIN]) == 0
    return run, out.getvalue()


def test_table_has_every_cell_and_the_stored_best_is_the_arg_max(tuned):
    run, printed = tuned
    stored = json.loads(run.decoding.read_text())
    cells = [(c["beam_size"], c["length_penalty"]) for c in stored["grid"]]
    # The grid, and the tiny run's configured beam 3, length penalty 0.6 as a cell of its own.
    assert cells == [(1, 0.0), (1, 1.0), (2, 0.0), (2, 1.0), (3, 0.6)]
    assert stored["sentences"] == 8 and stored["weights"] == "best"
    best = max(stored["grid"], key=lambda c: c["bleu"])
    assert stored["highest"] == best and stored["max_p"] == 1
    assert stored["default"] == stored["grid"][-1]
    # --max-p 1 stores the highest, except where the config's pair ties it.
    assert stored["best"] == (
        stored["default"] if stored["default"]["bleu"] == best["bleu"] else best
    )
    best = stored["best"]
    row = r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*(\*?)(c?)$"
    rows = re.findall(row, printed, re.M)
    assert [(int(k), float(a)) for k, a, *_ in rows] == cells
    assert [float(r[2]) for r in rows] == [c["bleu"] for c in stored["grid"]]
    assert [bool(r[4]) for r in rows] == [c == best for c in stored["grid"]]
    assert [bool(r[5]) for r in rows] == [False] * 4 + [True]
    expected = f"stored beam {best['beam_size']}, length penalty {best['length_penalty']:g}"
    assert expected in printed and str(run.decoding) in printed


def test_grid_bleu_is_what_evaluate_gives(tuned):
    run, _ = tuned
    cell = json.loads(run.decoding.read_text())["grid"][-1]
    translator = Translator.from_run_dir(run.path)
    srcs, refs, _ = evaluation.load_data(translator.cfg, None, None, "validation")
    options = {"beam_size": cell["beam_size"], "length_penalty": cell["length_penalty"]}
    assert evaluation.evaluate(translator, srcs[:8], refs[:8], options)["bleu"] == cell["bleu"]


def test_commands_default_to_the_tuned_settings_and_options_win(tuned, tmp_path, capsys):
    run, _ = tuned
    best = json.loads(run.decoding.read_text())["best"]
    opts = Translator.from_run_dir(run.path).decoding_options()
    assert (opts.beam_size, opts.length_penalty) == (best["beam_size"], best["length_penalty"])
    base = ["evaluate", str(run.path), "--split", "validation", "--output-dir", str(tmp_path)]
    for extra, beam, alpha in [
        ([], best["beam_size"], best["length_penalty"]),
        (["--beam-size", "3", "--length-penalty", "0.3"], 3, 0.3),
    ]:
        assert cli.main([*base, *extra]) == 0
        report = json.loads((tmp_path / "validation.json").read_text())
        assert (report["beam_size"], report["length_penalty"]) == (beam, alpha)
    assert cli.main(["translate", str(run.path), "a man runs"]) == 0
    assert "decoding defaults from" in capsys.readouterr().err


def test_settings_tuned_with_other_weights_are_used_with_a_warning(tuned, tmp_path, capsys):
    tuned_run, _ = tuned  # tuned with --weights best
    run = RunDir(tmp_path / "run")  # a copy: `nmt average` below writes into it
    shutil.copytree(tuned_run.path, run.path)
    best = json.loads(run.decoding.read_text())["best"]
    opts = Translator.from_run_dir(run.path, "last").decoding_options()
    assert (opts.beam_size, opts.length_penalty) == (best["beam_size"], best["length_penalty"])

    def warned(*argv) -> bool:
        assert cli.main(list(argv)) == 0
        return "were tuned with" in capsys.readouterr().err

    assert cli.main(["translate", str(run.path), "a man runs", "--weights", "last"]) == 0
    err = capsys.readouterr().err
    assert f"from {run.decoding} were tuned with --weights best; used with the last" in err
    assert f"(to tune for these: nmt tune-decoding {run.path} --weights last, replacing" in err
    assert not warned("translate", str(run.path), "a man runs")
    # Not when the options give both values, nor where nothing decodes with the defaults.
    options = ["--beam-size", "2", "--length-penalty", "0.5"]
    assert not warned("translate", str(run.path), "a man runs", "--weights", "last", *options)
    assert not warned("average", str(run.path), "--last", "2")
    assert warned("translate", str(run.path), "a man runs", "--weights", "averaged")
    assert not warned("tune-decoding", str(run.path), *GRID, "--weights", "averaged")
    # A file from before the "weights" key was stored warns of nothing.
    stored = json.loads(run.decoding.read_text())
    run.decoding.write_text(json.dumps({k: v for k, v in stored.items() if k != "weights"}))
    assert not warned("translate", str(run.path), "a man runs", "--weights", "last")


def test_best_is_the_first_of_the_highest(monkeypatch):
    """The arg-max over a grid whose scores the test chooses, ties to the smaller beam; the
    baseline cell joins the grid."""
    scores = {(1, 0.0): 10.0, (1, 0.5): 30.0, (4, 0.0): 20.0, (4, 0.5): 30.0}

    def fake_evaluate(translator, srcs, refs, decoding):
        bleu = scores[(decoding["beam_size"], decoding["length_penalty"])]
        return {"bleu": bleu, "sentences_per_s": 1.0, "bleu_signature": "sig", "hypotheses": []}

    class FakeTranslator:
        def decoding_options(self, **options):
            pass

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluation, "paired_p_value", lambda *args: 0.5)
    tuned = evaluation.tune_decoding(FakeTranslator(), ["a"], ["b"], [4, 1], [0.5, 0.0], max_p=1)
    assert [c["bleu"] for c in tuned["grid"]] == [10.0, 30.0, 20.0, 30.0]
    assert (tuned["best"]["beam_size"], tuned["best"]["length_penalty"]) == (1, 0.5)

    scores[(5, 0.6)] = 31.0  # the baseline, outside the product, scored and chosen
    tuned = evaluation.tune_decoding(
        FakeTranslator(), ["a"], ["b"], [4, 1], [0.5, 0.0], None, (5, 0.6)
    )
    assert [c["bleu"] for c in tuned["grid"]] == [10.0, 30.0, 20.0, 30.0, 31.0]
    assert (tuned["best"]["beam_size"], tuned["best"]["length_penalty"]) == (5, 0.6)
    tuned = evaluation.tune_decoding(
        FakeTranslator(), ["a"], ["b"], [4, 1], [0.5, 0.0], None, (4, 0), max_p=1
    )
    assert len(tuned["grid"]) == 4  # a baseline inside the product is not scored twice
    assert tuned["best"] == tuned["highest"] and tuned["p_value"] == 0.5  # max_p=1: any gain


def _fake_tuning(monkeypatch, hyps_of_cell):
    """tune_decoding over a fake translator whose outputs per cell the test chooses, scored
    and tested for real."""

    def fake_evaluate(translator, srcs, refs, decoding):
        hyps = hyps_of_cell[(decoding["beam_size"], decoding["length_penalty"])]
        return {**evaluation.score(hyps, refs), "sentences_per_s": 1.0, "hypotheses": hyps}

    class FakeTranslator:
        def decoding_options(self, **options):
            pass

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)

    def tune(refs, **kwargs):
        return evaluation.tune_decoding(
            FakeTranslator(), refs, refs, [1, 4], [0.6], baseline=(4, 0.6), **kwargs
        )

    return tune


REFS = [f"a {w} dog runs on the {c} street" for w in ("big", "small") for c in ("red", "blue")] * 25
WORSE = [ref.replace("dog", "cat") for ref in REFS]  # one word in eight wrong everywhere


def test_a_gain_within_chance_keeps_the_default(monkeypatch, capsys):
    one_better = [REFS[0], *WORSE[1:]]  # the highest, by one sentence of 100
    tune = _fake_tuning(monkeypatch, {(1, 0.6): one_better, (4, 0.6): WORSE})
    tuned = tune(REFS)  # the guard is on by default, at 0.05
    assert tuned["highest"]["beam_size"] == 1 and tuned["p_value"] > 0.05
    assert tuned["best"] is tuned["default"] and tuned["default"]["beam_size"] == 4
    cli._print_grid(tuned)
    printed = capsys.readouterr().out
    assert "beam 1, length penalty 0.6: +" in printed and "> --max-p 0.05: within chance" in printed
    assert "keeps the config's" in printed
    # --max-p 1 stores the highest whatever its margin.
    assert tune(REFS, max_p=1.0)["best"]["beam_size"] == 1


def test_a_clear_gain_replaces_the_default(monkeypatch, capsys):
    tune = _fake_tuning(monkeypatch, {(1, 0.6): REFS, (4, 0.6): WORSE})
    tuned = tune(REFS, max_p=0.05)
    assert tuned["p_value"] <= 0.05 and tuned["best"] is tuned["highest"]
    assert tuned["best"]["beam_size"] == 1
    cli._print_grid(tuned)
    printed = capsys.readouterr().out
    assert re.search(r"^\s+1\s+0\.60\s+100\.00\s+1\.0\s+\*$", printed, re.M)
    assert re.search(r"^\s+4\s+0\.60\s+[\d.]+\s+1\.0\s+c$", printed, re.M)
    assert "BLEU over the config's pair, p 0.0001 (paired approximate randomization" in printed


def test_equal_scores_keep_the_default_untested(monkeypatch, capsys):
    # A tie is no gain: the config's pair stays, and no test runs.
    tuned = _fake_tuning(monkeypatch, {(1, 0.6): WORSE, (4, 0.6): WORSE})(REFS, max_p=0.05)
    assert tuned["p_value"] is None and tuned["best"] is tuned["default"]
    cli._print_grid(tuned)
    assert "no cell scores above the config's pair" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-sentences", "-1"], "--max-sentences must be at least 0, got -1"),
        (["--max-p", "0"], "the p-value threshold (--max-p) must be in (0, 1], got 0"),
        (["--max-p", "1.5"], "(--max-p) must be in (0, 1], got 1.5"),
        (["--beam-sizes", "0", "2"], "beam size, n-best and batch size must be at least 1"),
        (["--length-penalties", "-0.5"], "length penalties must be at least 0, got -0.5"),
        (["--weights", "averaged"], "has no averaged.weights.h5"),
        (["--ensemble", "no_such_run"], "no_such_run"),
    ],
)
def test_tune_decoding_errors(args, message, tiny_run, capsys):
    assert cli.main(["tune-decoding", str(tiny_run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nmt: error: ") and message in err[0], err
    assert not (tiny_run / rundir.DECODING_FILE).exists()
    assert not (tiny_run / rundir.ENSEMBLE_DECODING_FILE).exists()


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        '{"best": {"beam_size": 0, "length_penalty": 0.6}}',
        "[]",
        '{"best": {"beam_size": 2, "length_penalty": 0.6}, "weights": ["best"]}',
    ],
)
def test_damaged_decoding_file_is_one_line(content, tiny_run, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run, run.path)
    run.decoding.write_text(content)
    assert cli.main(["translate", str(run.path), "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"nmt: error: .*decoding.json does not hold .*delete it.*", err)


# ----------------------------------------------------------------------------- ensembles


def _tune_ensemble(run: RunDir, *members) -> dict:
    """`nmt tune-decoding RUN --ensemble MEMBERS`: the ensembles stored after it."""
    argv = ["tune-decoding", str(run.path), *GRID, *ANY_GAIN, "--ensemble", *map(str, members)]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli.main(argv) == 0
    assert str(run.ensemble_decoding) in out.getvalue()
    return json.loads(run.ensemble_decoding.read_text())["ensembles"]


def test_each_ensemble_is_tuned_for_itself(tiny_run, tiny_lstm_run, tmp_path, monkeypatch, capsys):
    """`--ensemble` stores a best per set of members beside the run's own settings; only an
    ensemble of those members (by any path, in any order, after the runs moved) uses it."""
    tree = tmp_path / "tree"
    run, lstm, twin = RunDir(tree / "run"), tree / "lstm", tree / "twin"
    for source, copy in [(tiny_run, run.path), (tiny_lstm_run, lstm), (tiny_run, twin)]:
        shutil.copytree(source, copy)
    run.decoding.write_text(json.dumps({"best": {"beam_size": 7, "length_penalty": 0.1}}))

    [pair] = _tune_ensemble(run, lstm)
    assert pair["ensemble_with"] == ["../lstm"]
    # The baseline is the config's pair (beam 3, α 0.6), not the run's tuned one (7, 0.1):
    # tuning again may undo an earlier tuning.
    cells = [(c["beam_size"], c["length_penalty"]) for c in pair["grid"]]
    assert (3, 0.6) in cells and (7, 0.1) not in cells
    assert (pair["default"]["beam_size"], pair["default"]["length_penalty"]) == (3, 0.6)
    top = max(c["bleu"] for c in pair["grid"])  # reached by the default too: a tie keeps it
    assert pair["best"]["bleu"] == top and (pair["best"] == pair["default"]) == (
        pair["default"]["bleu"] == top
    )
    pair_again, trio = _tune_ensemble(run, lstm, twin)
    assert pair_again == pair and trio["ensemble_with"] == ["../lstm", "../twin"]
    # Settings outside the grid, so each check below can tell which entry was read.
    pair["best"], trio["best"] = (
        {"beam_size": 6, "length_penalty": 0.3},
        {"beam_size": 5, "length_penalty": 0.2},
    )
    run.ensemble_decoding.write_text(json.dumps({"ensembles": [pair, trio]}))

    moved = RunDir(tmp_path / "moved" / "run")
    shutil.copytree(tree, moved.path.parent)

    def defaults(*ensemble):
        opts = Translator.from_run_dir(moved.path, ensemble=ensemble).decoding_options()
        return opts.beam_size, opts.length_penalty

    monkeypatch.chdir(moved.path.parent)
    (moved.path.parent / "link").symlink_to("lstm")
    assert defaults("lstm") == defaults("link") == (6, 0.3)
    assert defaults("twin", "lstm") == defaults("lstm", "twin") == (5, 0.2)
    assert defaults("twin") == defaults("lstm", "lstm") == (7, 0.1)  # untuned: the run's own
    assert defaults() == (7, 0.1)  # the run alone is not an ensemble
    evaluate = ["evaluate", "run", "--split", "validation", "--output-dir", str(tmp_path)]
    assert cli.main([*evaluate, "--ensemble", "lstm"]) == 0
    report = json.loads((tmp_path / "validation.ensemble.json").read_text())
    assert (report["beam_size"], report["length_penalty"]) == (6, 0.3)
    capsys.readouterr()
    assert cli.main(["translate", "run", "a dog", "--ensemble", "lstm", "--weights", "last"]) == 0
    err = capsys.readouterr().err
    assert "decoding.ensemble.json were tuned with --weights best; used with the last" in err
    assert "nmt tune-decoding run --weights last --ensemble lstm)" in err


ENTRY = {"ensemble_with": ["../m"], "best": {"beam_size": 2, "length_penalty": 0.6}}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps(ENTRY),  # one run's form, not a list of ensembles
        json.dumps({"ensembles": [{**ENTRY, "ensemble_with": "../m"}]}),
        json.dumps({"ensembles": [{k: v for k, v in ENTRY.items() if k != "ensemble_with"}]}),
        json.dumps({"ensembles": [{**ENTRY, "best": {"beam_size": 0, "length_penalty": 0.6}}]}),
        json.dumps({"ensembles": [{**ENTRY, "best": {"beam_size": 2, "length_penalty": 1e999}}]}),
        json.dumps({"ensembles": ["x"]}),
        json.dumps({"ensembles": [{**ENTRY, "weights": 3}]}),
    ],
)
def test_damaged_ensemble_decoding_file_is_one_line(
    content, tiny_run, tiny_lstm_run, tmp_path, capsys
):
    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run, run.path)
    run.ensemble_decoding.write_text(content)
    argv = ["tune-decoding", str(run.path), *GRID, "--ensemble", str(tiny_lstm_run)]
    for command in [["translate", str(run.path), "x", "--ensemble", str(tiny_lstm_run)], argv]:
        assert cli.main(command) == 2  # tuning stops before its first decode
        err = capsys.readouterr().err.strip()
        assert re.fullmatch(
            r"nmt: error: .*decoding.ensemble.json does not hold .*delete it.*", err
        )
    assert run.ensemble_decoding.read_text() == content  # nothing lost
    assert cli.main(["translate", str(run.path), "x"]) == 0  # the run alone does not read it
