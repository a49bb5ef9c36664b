"""The Translator and the `nmt translate` / `nmt evaluate` commands, on a tiny trained run."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from nmt import cli, rundir, tokenizer
from nmt.config import BOS_ID, EOS_ID, PAD_ID
from nmt.translator import Translator, output_limits, pad_batch

from .conftest import REPO


@pytest.fixture(scope="module")
def translator(tiny_run):
    return Translator.from_run_dir(tiny_run)


def test_sorted_batches_come_back_in_input_order(translator, monkeypatch):
    """With a decoder that echoes its source, every output must be its own input."""
    sentences = [" ".join(["dog"] * n) for n in (5, 1, 7, 3, 2, 6)] + ["", "a red cat"]

    def echo(batch, opts):
        return [[(translator.src_tok.decode(ids[:-1]), 0.0)] for ids in batch]

    monkeypatch.setattr(translator, "_decode_batch", echo)
    assert translator.translate(sentences, batch_size=3) == sentences


def test_batched_translation_equals_one_by_one(translator):
    sentences = ["a man runs", "", "the big red dog sits on the street", "   ", "a cat"]
    batched = translator.translate(sentences, batch_size=2)
    assert batched[1] == batched[3] == ""
    assert len(set(batched)) == 4, batched  # distinct outputs: a mix-up would show
    assert batched == [translator.translate([s])[0] for s in sentences]


def test_input_that_encodes_to_no_ids_gives_an_empty_translation(translator):
    # SentencePiece normalizes control characters and zero-width spaces away.
    nothing = ["\x01\x02", "\u200b", "\x7f\x1f"]
    assert all(translator.src_tok.encode(s) == [] for s in nothing)
    assert translator.translate([*nothing, "a dog"], beam_size=2)[:3] == ["", "", ""]
    for hyps in translator.translate_n_best(nothing, beam_size=2, n_best=2):
        assert hyps == [("", 0.0), ("", 0.0)]


def test_n_best_is_sorted_and_distinct(translator):
    sentences = ["a man runs on the street", "the small cat sits"]
    for hyps in translator.translate_n_best(sentences, beam_size=3, n_best=3):
        scores = [s for _, s in hyps]
        assert len(hyps) == 3 and scores == sorted(scores, reverse=True)
        assert len({text for text, _ in hyps}) == 3


def test_long_input_is_truncated_with_a_warning(translator, caplog):
    long = " ".join(["the big red dog"] * 200)
    with caplog.at_level("WARNING", logger="nmt"):
        out = translator.translate([long, "a man"])
    assert len(out) == 2
    assert "translating its first 256" in caplog.text


def test_one_compiled_search_serves_every_length_penalty(tiny_run, monkeypatch):
    """The length penalty is an argument of the compiled search, not baked into it: a
    second value reuses the compilation and gives what a search compiled for it gives."""
    sentences = ["a man runs on the street", "the small cat sits", "a dog"]
    translator = Translator.from_run_dir(tiny_run)
    traces = []  # a (re)trace or new compilation runs the Python search once
    search = translator.search
    monkeypatch.setattr(translator, "search", lambda *args: traces.append(1) or search(*args))
    flat = translator.translate_n_best(sentences, beam_size=3, n_best=3, length_penalty=0.0)
    assert traces
    traced = len(traces)
    strong = translator.translate_n_best(sentences, beam_size=3, n_best=3, length_penalty=2.0)
    assert len(traces) == traced  # nothing traced or compiled again
    assert strong != flat  # the scores at least are divided by another penalty
    fresh = Translator.from_run_dir(tiny_run)
    assert fresh.translate_n_best(sentences, beam_size=3, n_best=3, length_penalty=2.0) == strong


def test_bad_decoding_options(translator):
    with pytest.raises(cli.NmtError, match="n-best .3. cannot exceed the beam size .2."):
        translator.translate_n_best(["a"], beam_size=2, n_best=3)


def _nmt(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "nmt.cli", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_translate_sentence_stdin_and_files(tiny_run, tmp_path, translator):
    result = _nmt("translate", str(tiny_run), "a man runs")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == translator.translate(["a man runs"])[0] + "\n"

    result = _nmt("translate", str(tiny_run), stdin="a\n\nb\n")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3
    assert result.stdout.splitlines()[1] == ""

    # With --input and no --output, the progress counter goes to stderr, never into stdout.
    listing = tmp_path / "in.txt"
    listing.write_text("a dog\n\nthe cat runs\nred\n")
    result = _nmt("translate", str(tiny_run), "--input", str(listing))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == translator.translate(["a dog", "", "the cat runs", "red"])
    assert "translated 4/4 sentences" in result.stderr

    src = tmp_path / "in.en.gz"
    with gzip.open(src, "wt") as f:
        f.write("a dog\n\nthe cat runs\n")
    out = tmp_path / "sub" / "out.de"
    result = _nmt(
        "translate",
        str(tiny_run),
        "--input",
        str(src),
        "--output",
        str(out),
        "--beam-size",
        "2",
        "--n-best",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = out.read_text().splitlines()
    assert [line.split(" ||| ")[0] for line in lines] == ["0", "0", "1", "1", "2", "2"]


def test_cli_translate_rejects_undecodable_stdin(tiny_run):
    done = subprocess.run(
        [sys.executable, "-m", "nmt.cli", "translate", str(tiny_run)],
        cwd=REPO,
        input=b"a dog\n\xff\xfe bad\n",
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert b"nmt: error: <stdin>:2: not valid UTF-8" in done.stderr
    assert b"Traceback" not in done.stderr


def test_translate_returns_the_best_whatever_the_configured_n_best(translator):
    translator.cfg.decoding.n_best = 2
    try:
        assert len(translator.translate(["a dog", "a cat"], beam_size=1)) == 2
    finally:
        translator.cfg.decoding.n_best = 1


def test_cli_translate_errors(tmp_path, tiny_run, capsys):
    assert cli.main(["translate", str(tmp_path / "nope"), "x"]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["translate", str(tmp_path / "empty"), "x"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert cli.main(["translate", str(tiny_run), "--input", str(tmp_path / "no.txt")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli.main(["translate", str(tiny_run), "x", "--beam-size", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cli.main(["translate", str(tiny_run), "x", "--output", str(blocker / "out")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_cli_run_dir_without_weights(tmp_path, tiny_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.weights.h5"))
    assert cli.main(["translate", str(run), "x"]) == 2
    assert "has no trained model" in capsys.readouterr().err
    (run / "best.weights.h5").write_bytes(b"not an h5 file")
    assert cli.main(["translate", str(run), "x"]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_cli_evaluate_files_and_split(tiny_run, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli.main(
        [
            "evaluate",
            str(tiny_run),
            "--src",
            str(tiny_corpus / "val.en"),
            "--ref",
            str(tiny_corpus / "val.de"),
            "--by-length",
            "--output-dir",
            str(out),
            "--beam-size",
            "2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "sacrebleu BLEU signature: nrefs:1|case:mixed|eff:no|tok:13a" in printed
    assert "sacrebleu BLEU lowercased: nrefs:1|case:lc|eff:no|tok:13a" in printed
    report = json.loads((out / "val.en.json").read_text())
    assert report["sentences"] == 40 and report["beam_size"] == 2
    assert report["by_source_length"][0]["bucket"] == "0-9"
    assert len((out / "val.en.hyp").read_text().splitlines()) == 40
    assert (
        cli.main(["evaluate", str(tiny_run), "--split", "validation", "--output-dir", str(out)])
        == 0
    )
    assert (out / "validation.json").is_file()


def test_cli_evaluate_errors(tiny_run, tiny_corpus, tmp_path, capsys):
    assert cli.main(["evaluate", str(tiny_run)]) == 2
    assert "give --src FILE and --ref FILE" in capsys.readouterr().err
    short = tmp_path / "short.de"
    short.write_text("ein\n")
    assert (
        cli.main(
            ["evaluate", str(tiny_run), "--src", str(tiny_corpus / "val.en"), "--ref", str(short)]
        )
        == 2
    )
    assert "has 40 lines but" in capsys.readouterr().err


# ----------------------------------------------------------------------------- ensembles

ENSEMBLE_SENTENCES = ["a man runs on the street", "the small cat sits", "red", "a big dog"]


@pytest.fixture(scope="module")
def ensemble(tiny_run, tiny_lstm_run):
    """The attention GRU run and the Cho LSTM run decoding together."""
    return Translator.from_run_dir(tiny_run, ensemble=[tiny_lstm_run])


def test_ensemble_of_a_run_with_itself_translates_as_the_run_alone(tiny_run, translator):
    twice = Translator.from_run_dir(tiny_run, ensemble=[tiny_run])
    assert len(twice.models) == 2
    alone = translator.translate_n_best(ENSEMBLE_SENTENCES, beam_size=3, n_best=2)
    doubled = twice.translate_n_best(ENSEMBLE_SENTENCES, beam_size=3, n_best=2)
    assert [[t for t, _ in h] for h in doubled] == [[t for t, _ in h] for h in alone]
    np.testing.assert_allclose(
        [[s for _, s in h] for h in doubled], [[s for _, s in h] for h in alone], rtol=1e-5
    )


def scored_steps(ids: np.ndarray, limits: np.ndarray) -> list[list[int]]:
    """Each hypothesis as the tokens search scored: EOS appended unless it was cut at its
    limit (the search's length-limit rule)."""
    hyps = []
    for row, limit in zip(ids, limits, strict=True):
        for hyp in row:
            tokens = [int(t) for t in hyp if t != PAD_ID]
            hyps.append(tokens + [EOS_ID] * int(len(tokens) < limit))
    return hyps


def teacher_forced_log_probs(model, src: np.ndarray, hyps: list[list[int]]) -> np.ndarray:
    """`(len(hyps), longest)` log p(token | source, earlier tokens), 0 after each end."""
    tgt_in = pad_batch([[BOS_ID, *h[:-1]] for h in hyps])
    logits = keras.ops.log_softmax(model((src, tgt_in)), axis=-1)
    log_probs = np.take_along_axis(
        keras.ops.convert_to_numpy(logits), pad_batch(hyps)[..., None], axis=-1
    )[..., 0]
    return np.where(pad_batch(hyps) != PAD_ID, log_probs, 0.0)


def test_ensemble_scores_are_the_log_mean_probability_of_its_members(ensemble):
    assert [m.model_config.cell for m in ensemble.models] == ["gru", "lstm"]
    batch = [ensemble._encode_source(s, i) for i, s in enumerate(ENSEMBLE_SENTENCES)]
    src, src_len = pad_batch(batch), np.array([len(ids) for ids in batch], np.int32)
    opts = ensemble.decoding_options(beam_size=3, n_best=3, length_penalty=0.0)
    limits = keras.ops.convert_to_numpy(output_limits(src_len, opts))
    ids, scores = ensemble.search(src, src_len, opts, max_steps=int(limits.max()))
    hyps = scored_steps(keras.ops.convert_to_numpy(ids), limits)
    rows = np.repeat(src, 3, axis=0)  # one source row per hypothesis
    per_model = np.stack([teacher_forced_log_probs(m, rows, hyps) for m in ensemble.models])
    # log((p_gru + p_lstm) / 2) at every step, summed over the steps each hypothesis took.
    expected = (np.logaddexp(per_model[0], per_model[1]) - np.log(2)).sum(axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores).reshape(-1), expected, rtol=1e-4)
    # The members disagree, so this is not one model's score in disguise.
    assert not np.allclose(per_model[0].sum(axis=1), per_model[1].sum(axis=1), rtol=1e-2)


def test_cli_translate_and_evaluate_with_an_ensemble(
    ensemble, tiny_run, tiny_lstm_run, tiny_corpus, tmp_path, capsys
):
    # Greedy throughout: one search compiled per Translator.
    argv = ["translate", str(tiny_run), "a red cat", "--ensemble", str(tiny_lstm_run)]
    assert cli.main([*argv, "--beam-size", "1"]) == 0
    translated = capsys.readouterr().out
    for lang in ("en", "de"):  # a few lines: what matters is where they go
        lines = (tiny_corpus / f"val.{lang}").read_text().splitlines()[:6]
        (tmp_path / f"few.{lang}").write_text("\n".join(lines) + "\n")
    argv = ["evaluate", str(tiny_run), "--src", str(tmp_path / "few.en")]
    argv += ["--ref", str(tmp_path / "few.de"), "--output-dir", str(tmp_path / "eval")]
    assert cli.main([*argv, "--beam-size", "1", "--ensemble", str(tiny_lstm_run)]) == 0
    assert "beam 1, ensemble of 2" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "few.en.ensemble.json").read_text())
    assert report["ensemble"] == [str(tiny_run), str(tiny_lstm_run)]
    hyps = (tmp_path / "eval" / "few.en.ensemble.hyp").read_text().splitlines()
    expected = ensemble.translate(["a red cat", *lines_of(tmp_path / "few.en")], beam_size=1)
    assert [translated, *hyps] == [expected[0] + "\n", *expected[1:]]


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _member_with_tokenizers(run: Path, folder: Path, protos: dict[str, bytes]) -> Path:
    """A copy of `run`'s config with other SentencePiece models (no weights: the check
    comes before any weights are read)."""
    (folder / rundir.TOKENIZER_DIR).mkdir(parents=True)
    shutil.copy(run / rundir.CONFIG_FILE, folder)
    for name, proto in protos.items():
        (folder / rundir.TOKENIZER_DIR / name).write_bytes(proto)
    return folder


def test_ensemble_members_must_share_sentencepiece_models(tiny_run, tiny_corpus, tmp_path, capsys):
    from nmt.config import TokenizerConfig

    other = tmp_path / "other_spm"
    lines = (tiny_corpus / "train.en").read_text().splitlines()
    tokenizer.train_tokenizers(lines, lines, TokenizerConfig(vocab_size=30), other)
    ours = (tiny_run / rundir.TOKENIZER_DIR / tokenizer.JOINT_MODEL).read_bytes()
    theirs = (other / tokenizer.JOINT_MODEL).read_bytes()
    cases = {
        "target vocabulary": {tokenizer.JOINT_MODEL: theirs},
        # Same target model, another source model: each member would read other source ids.
        "source tokenizer": {tokenizer.SRC_MODEL: theirs, tokenizer.TGT_MODEL: ours},
    }
    for side, protos in cases.items():
        member = _member_with_tokenizers(tiny_run, tmp_path / side.split()[0], protos)
        for command in (["translate", str(tiny_run), "x"], ["evaluate", str(tiny_run)]):
            assert cli.main([*command, "--ensemble", str(member)]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"nmt: error: cannot ensemble {member} with {tiny_run}: ")
            assert f"must share the {side}" in err and err.count("\n") == 1


def test_missing_ensemble_member_is_an_error(tiny_run, tmp_path, capsys):
    assert cli.main(["translate", str(tiny_run), "x", "--ensemble", str(tmp_path / "no")]) == 2
    assert f"nmt: error: run directory not found: {tmp_path / 'no'}" in capsys.readouterr().err
