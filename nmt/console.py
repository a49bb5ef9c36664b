"""The terminal side of `nmt translate` and `nmt evaluate`: progress, output, line streams.

Line alignment is the promise: N input lines give N output lines (N * n_best with
`--n-best`), in input order. Input lines come split on "\\n" only (`nmt.textio`). Each
translation is written on one line: any character that some reader could take for a line
break (Python's `str.splitlines` knows eleven) becomes a space, so no reader counts an extra
line, whatever the model's vocabulary holds.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from nmt.errors import DataError, NmtError

if TYPE_CHECKING:
    from nmt.translator import Hypothesis, Translator

# Every character str.splitlines splits on ("\r\n" is two of them).
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_TO_SPACE = str.maketrans(dict.fromkeys(LINE_BREAKS, " "))


class Progress:
    """A one-line sentence counter on stderr (stdout carries the translations)."""

    def __init__(self, total: int | None = None, label: str = "translated"):
        self.total, self.label, self.done = total, label, 0
        self.start = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        rate = self.done / max(time.perf_counter() - self.start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        sys.stderr.write(f"\r{self.label} {self.done}{of} sentences ({rate:.1f}/s)")
        sys.stderr.flush()

    def close(self) -> None:
        if self.done:
            sys.stderr.write("\n")


def open_output(path: str | None):
    """The output file (UTF-8, "\\n" line ends, parent folders made) or stdout.

    Returns:
        A context manager giving a text stream.

    Raises:
        NmtError: The file cannot be created.
    """
    if path is None:
        return contextlib.nullcontext(sys.stdout)
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return open(path, "w", encoding="utf-8", newline="\n")
    except OSError as exc:
        raise NmtError(f"cannot write {path}: {exc.strerror or exc}") from None


def one_line(text: str) -> str:
    """`text` with every line-break character replaced by a space."""
    return text.translate(_TO_SPACE)


def format_hypotheses(index: int, hyps: list[Hypothesis], n_best: int) -> str:
    """One line per input; with n_best > 1, Moses-style 'INDEX ||| TEXT ||| SCORE' lines."""
    if n_best == 1:
        return one_line(hyps[0][0]) + "\n"
    return "".join(f"{index} ||| {one_line(text)} ||| {score:.4f}\n" for text, score in hyps)


def translate_lines(
    translator: Translator,
    lines: Iterable[str],
    out: TextIO,
    options: dict,
    progress: Progress | None = None,
    chunk: int = 2048,
) -> int:
    """Translates lines a chunk at a time, writing N outputs for N inputs in order.

    `lines` is read lazily, so memory is bounded by `chunk` whatever the input's length,
    and each chunk's output is flushed before the next is read (a pipe sees results early).

    Returns:
        The number of input lines translated.

    Raises:
        NmtError: From reading `lines` (e.g. undecodable bytes) or from bad `options`.
    """
    n_best = translator.decoding_options(**options).n_best
    done = 0
    try:
        for batch in _chunks(lines, chunk):
            # offset: warnings about a long input name its line in the whole stream.
            results = translator.translate_n_best(batch, **options, progress=progress, offset=done)
            out.writelines(format_hypotheses(i, h, n_best) for i, h in enumerate(results, done))
            out.flush()
            done += len(batch)
    finally:
        if progress:
            progress.close()  # an error message then starts on a line of its own
    return done


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(lines)
    while batch := list(itertools.islice(it, size)):
        yield batch


def translate_interactively(translator: Translator, out: TextIO, options: dict) -> None:
    """A prompt on a terminal: each line typed is translated at once; Ctrl-D ends.

    Raises:
        DataError: A typed line is not valid UTF-8 (naming its number).
    """
    n_best = translator.decoding_options(**options).n_best
    for index in itertools.count():
        try:
            line = input("> ")
            line.encode("utf-8")  # a C locale passes bad bytes on as lone surrogates
        except EOFError:
            print(file=sys.stderr)
            return
        except UnicodeError:
            raise DataError(f"<stdin>:{index + 1}: not valid UTF-8") from None
        hyps = translator.translate_n_best([line], **options)[0]
        out.write(format_hypotheses(index, hyps, n_best))
        out.flush()
