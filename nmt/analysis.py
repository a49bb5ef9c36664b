"""Small helpers for the exploration notebooks: corpus statistics, corpus subsets, metrics,
PCA, context vectors, attention maps and heatmaps.

Nothing here trains or translates; the notebooks do that through `nmt.training` and
`nmt.translator`. Only numpy is imported at module level; a heatmap takes a matplotlib
`Axes` it is given.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nmt.config import BOS_ID, EOS_ID, default_multi30k_dir
from nmt.errors import DataError, RunDirError

# Stems of the Multi30k files (train.en.gz, val.en.gz, test_2016_flickr.en.gz), by config key
# (data.train / validation / test); nmt.datasets.multi30k_layout.SPLIT_FILES holds the same
# stems keyed by tfds split name ("test_2016").
MULTI30K_STEMS = {"train": "train", "validation": "val", "test": "test_2016_flickr"}


# --------------------------------------------------------------------------- locating things


def find_repo_root(start: str | Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: the working directory) that holds
    both `configs/` and `nmt/`: the repository root, from a notebook in `notebooks/`.

    Raises:
        FileNotFoundError: No such folder above `start`.
    """
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "configs").is_dir() and (folder / "nmt").is_dir():
            return folder
    raise FileNotFoundError(f"no repository root (a folder with configs/ and nmt/) above {start}")


def find_multi30k(repo_root: str | Path) -> Path | None:
    """Multi30k from `$NMT_MULTI30K_DIR`, else `REPO/../shared/data/multi30k`; None if absent."""
    path = default_multi30k_dir(repo_root)
    return path if (path / "train.en.gz").is_file() else None


# --------------------------------------------------------------------------- corpus statistics


def text_stats(lines: Iterable[str]) -> dict[str, Any]:
    """Sentence, word (whitespace-separated) and character counts of some lines.

    Returns:
        {"sentences", "words", "characters"} as ints and "lengths": an int array of words
        per sentence.
    """
    lengths, characters = [], 0
    for line in lines:
        lengths.append(len(line.split()))
        characters += len(line)
    return {
        "sentences": len(lengths),
        "words": int(sum(lengths)),
        "characters": characters,
        "lengths": np.asarray(lengths, dtype=np.int64),
    }


def segmentation_stats(tokenizer: Any, sentences: Iterable[str]) -> dict[str, float]:
    """How a subword tokenizer cuts some sentences.

    Args:
        tokenizer: anything with `encode(text) -> list[int]` (an `nmt.tokenizer.Tokenizer`).
        sentences: the text, e.g. a validation split the tokenizer was not trained on.

    Returns:
        {"sentences", "words", "pieces", "unk"} counts, "pieces_per_word" and "unk_rate"
        (share of pieces that are `<unk>`).
    """
    from nmt.config import UNK_ID

    n_sent = n_words = n_pieces = n_unk = 0
    for sentence in sentences:
        ids = tokenizer.encode(sentence)
        n_sent += 1
        n_words += len(sentence.split())
        n_pieces += len(ids)
        n_unk += sum(1 for i in ids if i == UNK_ID)
    return {
        "sentences": n_sent,
        "words": n_words,
        "pieces": n_pieces,
        "unk": n_unk,
        "pieces_per_word": n_pieces / n_words if n_words else math.nan,
        "unk_rate": n_unk / n_pieces if n_pieces else math.nan,
    }


def subset_multi30k(
    multi30k_dir: str | Path,
    out_dir: str | Path,
    langs: Sequence[str],
    sizes: dict[str, int],
) -> dict[str, Path]:
    """Writes the first lines of Multi30k splits as plain text files, for `data.format: files`.

    Args:
        multi30k_dir: the folder with `train.en.gz`, `val.de.gz`, ...
        out_dir: where `STEM.LANG` files are written (created if needed).
        langs: languages to write, e.g. ("en", "de").
        sizes: lines to keep per split ("train", "validation", "test"); 0 keeps all.

    Returns:
        The path prefix per split (`out_dir/STEM`), ready for `data.train=...` and so on.

    Raises:
        DataError: An unknown split name, or a missing or unreadable file.
    """
    from nmt import corpus

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefixes = {}
    for split, size in sizes.items():
        if split not in MULTI30K_STEMS:
            raise DataError(f"unknown split {split!r}; choose from " + ", ".join(MULTI30K_STEMS))
        stem = MULTI30K_STEMS[split]
        for lang in langs:
            lines = corpus.read_lines(Path(multi30k_dir) / f"{stem}.{lang}.gz")
            kept = itertools.islice(lines, size or None)
            with open(out_dir / f"{stem}.{lang}", "w", encoding="utf-8", newline="\n") as f:
                f.writelines(line + "\n" for line in kept)
        prefixes[split] = out_dir / stem
    return prefixes


def multi30k_prefixes(multi30k_dir: str | Path) -> dict[str, Path]:
    """The path prefix of each split of a Multi30k folder (`DIR/train`, `DIR/val`, ...)."""
    return {split: Path(multi30k_dir) / stem for split, stem in MULTI30K_STEMS.items()}


def files_overrides(prefixes: dict[str, str | Path]) -> list[str]:
    """Config overrides reading the given splits as text-file pairs (`data.format=files`).

    Args:
        prefixes: split ("train", "validation", "test") -> path prefix, as returned by
            `subset_multi30k` or `multi30k_prefixes`.
    """
    return ["data.format=files"] + [f"data.{split}={path}" for split, path in prefixes.items()]


# --------------------------------------------------------------------------- training metrics


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """Reads `metrics.jsonl` (one JSON object per validation) into columns.

    Args:
        path: the file, or a run directory holding it.

    Returns:
        Column name -> values in file order; a key missing from a line reads as NaN.

    Raises:
        RunDirError: The file is missing.
    """
    from nmt.rundir import METRICS_FILE

    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise RunDirError(f"no metrics file: {path} (it is written after each validation)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keys: list[str] = []
    for record in records:
        keys += [k for k in record if k not in keys]
    return {k: [float(r.get(k, math.nan)) for r in records] for k in keys}


# --------------------------------------------------------------------------- model inputs


def source_ids(tokenizer: Any, text: str) -> list[int]:
    """Encoder input for one sentence: its subword ids followed by EOS."""
    return tokenizer.encode(text) + [EOS_ID]


def decoder_ids(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """Teacher-forcing ids for one target sentence: `([BOS] + y, y + [EOS])`."""
    ids = tokenizer.encode(text)
    return [BOS_ID] + ids, ids + [EOS_ID]


def pieces(tokenizer: Any, ids: Iterable[int]) -> list[str]:
    """The subword string of each id (`<pad>`, `</s>`, ... for the specials)."""
    return [tokenizer.id_to_piece(int(i)) for i in ids]


def context_vectors(
    model: Any, tokenizer: Any, sentences: Sequence[str], batch_size: int = 64
) -> np.ndarray:
    """The encoder's context vector `c` of each sentence.

    Args:
        model: a `nmt.model.Seq2Seq`.
        tokenizer: its source tokenizer.
        sentences: source sentences.
        batch_size: sentences encoded at once.

    Returns:
        float32 `(len(sentences), enc_dim)`, in input order.
    """
    from nmt.translator import pad_batch

    chunks = []
    for start in range(0, len(sentences), batch_size):
        chunk = [source_ids(tokenizer, s) for s in sentences[start : start + batch_size]]
        context = model.encode(pad_batch(chunk, multiple=8))["context"]
        chunks.append(np.asarray(context, dtype=np.float32))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def attention_map(
    model: Any, src_tok: Any, tgt_tok: Any, src: str, tgt: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """Teacher-forced attention weights of one sentence pair, with piece labels.

    Args:
        model: a `nmt.model.Seq2Seq` with attention.
        src_tok: its source tokenizer.
        tgt_tok: its target tokenizer.
        src: the source sentence.
        tgt: the target sentence, e.g. the model's own translation of `src`.

    Returns:
        `weights` float32 `(tgt_len + 1, src_len + 1)`: row `t` is the attention while
        predicting target piece `t` (the last row: `</s>`); then the source pieces (column
        labels, ending in `</s>`) and the target pieces (row labels, ending in `</s>`).

    Raises:
        ValueError: The model has no attention.
    """
    from nmt.translator import pad_batch

    src_ids = source_ids(src_tok, src)
    tgt_in, tgt_out = decoder_ids(tgt_tok, tgt)
    weights = model.attention_weights(pad_batch([src_ids]), pad_batch([tgt_in]))
    return (
        np.asarray(weights, dtype=np.float32)[0],
        pieces(src_tok, src_ids),
        pieces(tgt_tok, tgt_out),
    )


# --------------------------------------------------------------------------- projection, plots


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projects rows of `x` `(n, d)` onto their first two principal components.

    Returns:
        The projection `(n, 2)` and the share of the variance each component explains `(2,)`.
        Component signs follow the SVD and are arbitrary.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"pca_2d needs at least 2 rows and 2 columns, got shape {x.shape}")
    centered = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    variance = singular**2
    total = variance.sum()
    ratio = variance[:2] / total if total > 0 else np.zeros(2)
    return centered @ vt[:2].T, ratio


def heatmap(
    ax: Any,
    values: np.ndarray,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    title: str = "",
    **imshow_kwargs: Any,
) -> Any:
    """Draws a matrix on a matplotlib `Axes` with labelled rows and columns.

    Returns:
        The `AxesImage`, for a colorbar.
    """
    values = np.asarray(values)
    image = ax.imshow(values, aspect="auto", interpolation="nearest", **imshow_kwargs)
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), labels=list(xlabels), rotation=90, fontsize=8)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), labels=list(ylabels), fontsize=8)
    if title:
        ax.set_title(title)
    return image


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """A plain-text table with left-aligned columns (floats with 2 decimals)."""

    def cell(value: Any) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    table = [[cell(v) for v in row] for row in ([header] if header else []) + list(rows)]
    if not table:
        return ""
    widths = [max(len(row[k]) for row in table if k < len(row)) for k in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in table]
    if header:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
