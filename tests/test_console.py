"""`nmt translate` never loses a line: nmt.console and the CLI on a tiny trained run.

The property tests call `cli.main` in-process (stdin, stdout and stderr swapped for
in-memory streams) with the run loaded once: loading and compiling the search would
otherwise dominate every example. One test runs the real `nmt` entry point.
"""

from __future__ import annotations

import builtins
import contextlib
import gzip
import io
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nmt import cli, console
from nmt.translator import Translator

LONG = "the big red dog " * 100  # 400 words: more than decoding.max_input_len tokens
# Lines that some reader takes for several, or that tokenize to nothing, or to <unk>.
SPECIALS = [
    "",
    " ",
    "\t",
    "\r",
    "\x00",
    "\x01\x02",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x85",
    "\u2028",
    "\u2029",
    "\u200b",
    "🐶🐱",
    "a man runs",
    "Ein Hund 犬 собака كلب",
]
TEXT = st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]), max_size=20)
LINE = st.one_of(
    st.lists(st.one_of(st.sampled_from(SPECIALS), TEXT), max_size=6).map("".join),
    st.sampled_from([LONG, "🐶" * 300, "x" * 5000]),
)
PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def translator(tiny_run):
    return Translator.from_run_dir(tiny_run)


@pytest.fixture(scope="module")
def loaded_once(translator):
    """`cli.main` gets the already loaded run for every `from_run_dir` in this module."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            Translator, "from_run_dir", classmethod(lambda cls, path, *args, **kwargs: translator)
        )
        yield translator


@contextlib.contextmanager
def nmt_logger_restored():
    """cli.main sets up the "nmt" logger on the current stderr; undo it for later tests."""
    logger = logging.getLogger("nmt")
    saved = logger.handlers[:], logger.level, logger.propagate
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def run_cli(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    """`cli.main(argv)` with `stdin` piped in; returns the exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, nmt_logger_restored():
        patch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        patch.setattr(sys, "stdout", out)
        patch.setattr(sys, "stderr", err)
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def encode(lines: list[str], final_newline: bool) -> bytes:
    """The lines as UTF-8 text split on "\\n"; without a final newline after a last line."""
    end = "\n" if final_newline or not lines or not lines[-1] else ""
    return ("\n".join(lines) + end if lines else "").encode()


def assert_one_line_each(translator: Translator, lines: list[str], output: str) -> None:
    assert output.count("\n") == len(lines) and (output.endswith("\n") or not lines)
    assert len(output.splitlines()) == len(lines)  # no other line break inside a line
    # The reader drops "\r" (as training's tf.data reader does): translate what it reads.
    read = [line.replace("\r", "") for line in lines]
    expected = translator.translate(read)
    assert output.split("\n")[:-1] == [console.one_line(t) for t in expected]
    # Nothing to translate gives an empty line, never a made-up sentence.
    nothing = [not translator.src_tok.encode(line) for line in read]
    assert all(not out for out, empty in zip(expected, nothing, strict=True) if empty)


@PROPERTY
@given(lines=st.lists(LINE, max_size=8), final_newline=st.booleans())
@example(lines=[*SPECIALS, LONG, "a\rb"], final_newline=False)
def test_stdin_gives_one_output_line_per_input_line(loaded_once, lines, final_newline):
    code, out, err = run_cli(["translate", "RUN"], encode(lines, final_newline))
    assert code == 0 and "Traceback" not in err, err
    assert_one_line_each(loaded_once, lines, out)


@PROPERTY
@given(lines=st.lists(LINE, max_size=8), final_newline=st.booleans(), gz=st.booleans())
@example(lines=[*SPECIALS, LONG, "a\rb"], final_newline=True, gz=False)
def test_files_give_one_output_line_per_input_line(loaded_once, lines, final_newline, gz):
    with tempfile.TemporaryDirectory() as folder:
        src, out = Path(folder) / ("in.txt.gz" if gz else "in.txt"), Path(folder) / "out.txt"
        data = encode(lines, final_newline)
        src.write_bytes(gzip.compress(data) if gz else data)
        code, stdout, err = run_cli(["translate", "RUN", "--input", str(src), "--output", str(out)])
        assert code == 0 and "Traceback" not in err and stdout == "", err
        assert_one_line_each(loaded_once, lines, out.read_bytes().decode("utf-8"))


def test_entry_point_keeps_lines(tiny_run, tmp_path):
    nmt = Path(sys.executable).parent / "nmt"
    if not nmt.is_file():
        pytest.skip(f"no {nmt} (package not installed as a console script)")
    lines = [*SPECIALS, LONG, "a\rb", "last"]
    done = subprocess.run(
        [str(nmt), "translate", str(tiny_run)],
        cwd=tmp_path,
        input="\n".join(lines).encode(),
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"Traceback" not in done.stderr
    assert done.stdout.count(b"\n") == len(lines)
    assert len(done.stdout.decode().splitlines()) == len(lines)
    # The long input's warning names its line (counted from 1).
    assert f"input {lines.index(LONG) + 1} has".encode() in done.stderr


@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz"])
def test_undecodable_input_file_fails_before_any_output(loaded_once, tmp_path, name):
    data = b"ein Hund\n\nzwei\ndrei \xc3(\n"
    src, out = tmp_path / name, tmp_path / "out.txt"
    src.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    code, _, err = run_cli(["translate", "RUN", "--input", str(src), "--output", str(out)])
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"nmt: error: {src}:4: not valid UTF-8 (byte 0xc3 at column 6)"
    )
    assert not out.exists()


def test_undecodable_stdin_names_the_line(loaded_once):
    code, _, err = run_cli(["translate", "RUN"], b"a dog\n\n\xff\n")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("nmt: error: <stdin>:3: not valid UTF-8")


def test_undecodable_sentence_argument(loaded_once):
    # Linux hands undecodable argv bytes to Python as lone surrogates.
    code, _, err = run_cli(["translate", "RUN", "a \udcff dog"])
    assert code == 2 and err.strip().endswith("nmt: error: SENTENCE is not valid UTF-8")


def test_closed_stdin(loaded_once, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with nmt_logger_restored():
        assert cli.main(["translate", "RUN"]) == 2
    assert "stdin is closed; give a SENTENCE or --input FILE" in err.getvalue()


def test_input_file_is_streamed_with_a_progress_total(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\nc\n")
    args = cli.build_parser().parse_args(["translate", "RUN", "--input", str(src)])
    lines, progress = cli._translation_input(args)
    assert not isinstance(lines, list) and progress.total == 3
    assert list(lines) == ["a", "b", "c"]


class FlushLog(io.StringIO):
    """Records how many input lines had been read at each flush."""

    def __init__(self, pulled: list[int]):
        super().__init__()
        self.pulled, self.at_flush = pulled, []

    def flush(self) -> None:
        self.at_flush.append(len(self.pulled))


def test_translate_lines_reads_one_chunk_at_a_time(translator):
    pulled: list[int] = []

    def lines():
        for i in range(7):
            pulled.append(i)
            yield "a dog"

    out = FlushLog(pulled)
    assert console.translate_lines(translator, lines(), out, {}, chunk=3) == 7
    assert out.at_flush == [3, 6, 7]
    assert out.getvalue().count("\n") == 7


def test_warnings_name_the_line_in_the_whole_input(translator, caplog):
    lines = ["a dog"] * 5 + [LONG, "a cat", LONG]
    with caplog.at_level("WARNING", logger="nmt"):
        console.translate_lines(translator, lines, io.StringIO(), {"beam_size": 1}, chunk=2)
    # Only nmt's own records: TensorFlow may log too (AutoGraph, when a source file changed).
    named = [r.getMessage().split(" has")[0] for r in caplog.records if r.name == "nmt"]
    assert named == ["input 6", "input 8"]


def test_n_best_lines_carry_the_input_index_across_chunks(translator):
    out = io.StringIO()
    options = {"beam_size": 2, "n_best": 2}
    console.translate_lines(translator, ["a", "", "b", "c"], out, options, chunk=3)
    indices = [line.split(" ||| ")[0] for line in out.getvalue().splitlines()]
    assert indices == ["0", "0", "1", "1", "2", "2", "3", "3"]


def test_every_line_break_character_is_replaced():
    breaks = [chr(c) for c in range(0x110000) if len(f"a{chr(c)}b".splitlines()) > 1]
    assert sorted(breaks) == sorted(console.LINE_BREAKS)
    text = "x".join(breaks)
    assert console.one_line(text) == " x" * (len(breaks) - 1) + " "
    hyps = [("a\u2028b\nc", -1.0), ("d\re", -2.0)]
    assert console.format_hypotheses(0, hyps, 1) == "a b c\n"
    assert (
        console.format_hypotheses(4, hyps, 2) == "4 ||| a b c ||| -1.0000\n4 ||| d e ||| -2.0000\n"
    )


def interactive(monkeypatch, typed: list) -> tuple[int, str, str]:
    """`nmt translate RUN` on a terminal where the user types `typed`, then Ctrl-D."""
    answers = iter(typed)

    def fake_input(prompt: str = "") -> str:
        answer = next(answers, EOFError())
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monkeypatch.setattr(builtins, "input", fake_input)
    terminal = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    monkeypatch.setattr(terminal, "isatty", lambda: True)
    monkeypatch.setattr(sys, "stdin", terminal)
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with nmt_logger_restored():
        code = cli.main(["translate", "RUN"])
    return code, out.getvalue(), err.getvalue()


def test_interactive_prompt_translates_each_line(loaded_once, monkeypatch):
    code, out, _ = interactive(monkeypatch, ["a dog", "", "\x01"])
    assert code == 0
    assert out.split("\n") == [*loaded_once.translate(["a dog"]), "", "", ""]


@pytest.mark.parametrize(
    "bad", [UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "a \udcff"]
)
def test_interactive_prompt_rejects_undecodable_input(loaded_once, monkeypatch, bad):
    code, _, err = interactive(monkeypatch, ["a dog", bad])
    assert code == 2 and "Traceback" not in err
    assert err.strip().endswith("nmt: error: <stdin>:2: not valid UTF-8")
