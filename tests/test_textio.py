"""nmt.textio: line reading (plain, .gz, streams), decoding errors, strict alignment."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nmt import textio
from nmt.errors import DataError

from .conftest import REPO

# Characters that some reader or other takes for a line break; only "\n" is one here.
BREAKS = ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("name", ["t.txt", "t.txt.gz"])
def test_lines_split_on_newline_only_and_drop_carriage_returns(tmp_path, name):
    data = "a\r\nb\rc\n\x00\x0b\x0c\x1c\x85\u2028\u2029 d\n\nlast".encode()
    expected = ["a", "bc", "\x00\x0b\x0c\x1c\x85\u2028\u2029 d", "", "last"]
    assert list(textio.read_lines(write(tmp_path / name, data))) == expected
    assert textio.count_lines(tmp_path / name) == 5


@given(st.lists(st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]))))
def test_decode_lines_gives_back_every_line(lines):
    data = "".join(line + "\n" for line in lines).encode()
    decoded = list(textio.decode_lines(io.BytesIO(data), "<test>"))
    assert decoded == [line.replace("\r", "") for line in lines]


def test_empty_file_has_no_lines(tmp_path):
    assert textio.count_lines(write(tmp_path / "e.txt", b"")) == 0


@pytest.mark.parametrize("name", ["u.de", "u.de.gz"])
def test_undecodable_bytes_name_file_line_and_column(tmp_path, name):
    src = write(tmp_path / name, b"gut\nschlecht \xff\xfe\n")
    with pytest.raises(DataError) as info:
        list(textio.read_lines(src))
    assert str(info.value) == f"{src}:2: not valid UTF-8 (byte 0xff at column 10)"
    with pytest.raises(DataError, match=f"{src}:2: not valid UTF-8"):
        textio.count_lines(src)


def test_undecodable_stream_names_the_stream():
    stream = io.BytesIO(b"ok\nok\n\xc3\n")
    with pytest.raises(DataError, match="^<stdin>:3: not valid UTF-8"):
        list(textio.decode_lines(stream, "<stdin>"))


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.de.gz"
    path.write_bytes(gzip.compress(b"a\nb\n" * 1000)[:-30])  # truncated
    with pytest.raises(DataError, match=f"{path}:.*corrupt gzip"):
        list(textio.read_lines(path))


def test_missing_file_fails_at_once(tmp_path):
    with pytest.raises(DataError, match=f"file not found: {tmp_path / 'nope.txt'}"):
        textio.read_lines(tmp_path / "nope.txt")


@pytest.mark.parametrize("longer", ["src", "tgt"])
def test_aligned_files_of_different_length(tmp_path, longer):
    src = write(tmp_path / "s.txt", b"1\n2\n3\n" if longer == "src" else b"1\n")
    tgt = write(tmp_path / "t.txt.gz", b"1\n2\n3\n" if longer == "tgt" else b"1\n")
    counts = (3, 1) if longer == "src" else (1, 3)
    with pytest.raises(DataError) as info:
        list(textio.iter_aligned(src, tgt))
    assert str(info.value) == (
        f"parallel files differ in length: {src} has {counts[0]} lines, {tgt} has {counts[1]} lines"
    )


def _imports_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


def test_textio_needs_no_tensorflow():
    assert "tensorflow" not in _imports_after("import nmt.textio")


def test_multi30k_builder_does_not_import_corpus():
    # nmt.corpus imports the builder (lazily); the builder must not import it back.
    assert "nmt.corpus" not in _imports_after("import nmt.datasets.multi30k")
