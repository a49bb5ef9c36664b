"""Reading text lines: plain or gzip files, stdin, strict alignment of parallel files.

No TensorFlow here: the CLI's translate path, the tfds Multi30k builder and `nmt.corpus`
share these readers, and each error names the file and the 1-based line.

Lines are split on b"\\n" only and every "\\r" is dropped, exactly as
`tf.data.TextLineDataset` reads files. So a CRLF file reads like an LF file, a lone "\\r" never
starts a line, and translating reads its input the way training read its corpus. Other
characters that Python's `str.splitlines` would treat as line breaks (U+2028, U+0085, form
feed, vertical tab, ...) stay inside the line: they are data, not separators.
"""

from __future__ import annotations

import gzip
import itertools
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from nmt.errors import DataError


def is_gzip(path: str | Path) -> bool:
    """Whether `path` is read as gzip: its name ends in .gz."""
    return Path(path).suffix == ".gz"


def read_lines(path: str | Path) -> Iterator[str]:
    """Streams the lines of a UTF-8 text file, gzip-compressed when its name ends in .gz.

    Args:
        path: The file.

    Returns:
        An iterator over the lines, without their line terminator; the file is opened on
        the first `next()` and read a buffer at a time.

    Raises:
        DataError: At once if the file is missing; while iterating if it is not valid gzip
            or not valid UTF-8 (naming the 1-based line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    return _stream_lines(path)


def _stream_lines(path: Path) -> Iterator[str]:
    opener = gzip.open if is_gzip(path) else open
    number = 0
    try:
        with opener(path, "rb") as stream:
            for number, line in enumerate(decode_lines(stream, path), 1):  # noqa: B007 (used below)
                yield line
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}:{number + 1}: corrupt gzip data ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None


def count_lines(path: str | Path) -> int:
    """The number of lines `read_lines(path)` gives, decoding each (same errors)."""
    return sum(1 for _ in read_lines(path))


def decode_lines(stream: IO[bytes], name: str | Path) -> Iterator[str]:
    """Decodes a binary stream (a file, stdin's buffer) line by line as UTF-8.

    Raises:
        DataError: naming `name` and the 1-based line number of an undecodable line.
    """
    # Binary iteration splits on b"\n" only (text mode would also split on "\r").
    for number, raw in enumerate(stream, 1):
        yield _decode(raw, name, number)


def _decode(raw: bytes, name: str | Path, number: int) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name}:{number}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column "
            f"{exc.start + 1})"
        ) from None
    if line.endswith("\n"):
        line = line[:-1]
    # tf.data.TextLineDataset drops every "\r"; doing the same keeps both readers equal.
    return line.replace("\r", "") if "\r" in line else line


def iter_aligned(src_path: str | Path, tgt_path: str | Path) -> Iterator[tuple[str, str]]:
    """Streams the line pairs of two aligned text files.

    Raises:
        DataError: At once if a file is missing; while iterating if one is unreadable, or
            when the shorter file ends, naming both files and both line counts (pairs are
            never silently truncated).
    """
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    return zip_strict(src_lines, tgt_lines, src_path, tgt_path)


def zip_strict(
    src_lines: Iterator[str], tgt_lines: Iterator[str], src_name: Any, tgt_name: Any
) -> Iterator[tuple[str, str]]:
    """Pairs two line streams; a `mismatch_error` when one ends before the other."""
    for count, (src, tgt) in enumerate(itertools.zip_longest(src_lines, tgt_lines)):
        if src is None or tgt is None:
            # One more line was read from the longer stream; count the rest of it too.
            longer = count + 1 + sum(1 for _ in (tgt_lines if src is None else src_lines))
            counts = (count, longer) if src is None else (longer, count)
            raise mismatch_error(src_name, counts[0], tgt_name, counts[1])
        yield src, tgt


def mismatch_error(src_name: Any, src_count: int, tgt_name: Any, tgt_count: int) -> DataError:
    """The error for parallel files of different lengths, naming both and their counts."""
    return DataError(
        f"parallel files differ in length: {src_name} has {src_count} lines, "
        f"{tgt_name} has {tgt_count} lines"
    )
