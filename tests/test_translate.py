"""The Translator and the `nmt translate` / `nmt evaluate` commands, on a tiny trained run."""

import gzip
import json
import subprocess
import sys

import pytest

from nmt import cli
from nmt.translator import Translator

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
    import shutil

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
