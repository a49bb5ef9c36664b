"""Export a trained run as a TensorFlow SavedModel that translates strings to strings.

The SavedModel's `serving_default` signature (also the `translate` function) takes a 1-D
batch of UTF-8 sentences, `sentences: tf.string (batch,)`, and returns

- `translations`: tf.string `(batch,)`, the best translation of each sentence;
- `scores`: tf.float32 `(batch,)`, its length-normalized log-probability (0 for empty input).

Everything runs inside the graph: SentencePiece (`tensorflow_text`), the encoder, beam search
(`Translator.search`, the same function `nmt translate` runs) and detokenization. Loading
needs only TensorFlow and `import tensorflow_text` (which registers the SentencePiece ops):

    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    model = tf.saved_model.load("OUT_DIR")
    model.signatures["serving_default"](sentences=tf.constant(["A man is running."]))

A batch goes through the `Translator`'s own decoding path (`Translator.search`, its output
limits and its bucket choice); only tokenization runs in-graph here instead of in Python,
with the Translator's rules: SentencePiece ids truncated to `decoding.max_input_len` plus
EOS, sorted by length, padded to a multiple of 8; sentences that encode to no ids (empty,
whitespace, control characters) give empty strings without reaching the model. The graph
does not split a request into `decoding.batch_size` chunks: callers choose their batch size.

The decoding settings baked into the graph are written to `OUT_DIR/nmt_export.json`.

Export needs the `tensorflow` extra and `KERAS_BACKEND=tensorflow`, whichever backend trained
the run (weights are backend-neutral); `require_tensorflow` says so in one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import keras

try:
    import tensorflow as tf
except ImportError:  # the base install: `require_tensorflow` names the extra to add
    tf = None

from nmt.config import EOS_ID, PAD_ID, DecodingConfig
from nmt.errors import NmtError
from nmt.translator import SRC_PAD_MULTIPLE, Translator, bucket_index, step_buckets

log = logging.getLogger("nmt")

ENDPOINT = "translate"
SETTINGS_FILE = "nmt_export.json"
TENSORFLOW_MISSING = 'nmt export needs the tensorflow extra: pip install "nmt[tensorflow]"'


def require_tensorflow() -> None:
    """Checks that TensorFlow, tensorflow_text and the TensorFlow backend are there.

    Raises:
        NmtError: one line naming what is missing and how to get it.
    """
    try:
        import tensorflow_text  # noqa: F401  (registers the in-graph SentencePiece ops)
    except ImportError as exc:
        raise NmtError(f"{TENSORFLOW_MISSING} (cannot import {exc.name})") from None
    if tf is None or keras.backend.backend() != "tensorflow":
        raise NmtError(
            "exporting a SavedModel needs KERAS_BACKEND=tensorflow, not "
            f"{keras.backend.backend()} (a run trained under any backend exports)"
        )


def hide_gpus() -> None:
    """Hides GPUs from TensorFlow, for an export that runs on CPU-only servers too.

    Traced with a GPU visible, Keras' GRU becomes cuDNN ops that have no CPU kernel. Call it
    before TensorFlow initializes; in-process use after that gets `export`'s warning instead.

    Raises:
        NmtError: from `require_tensorflow`.
    """
    require_tensorflow()
    with contextlib.suppress(RuntimeError):  # TensorFlow is already initialized
        tf.config.set_visible_devices([], "GPU")


def _round_up(n: tf.Tensor, multiple: int) -> tf.Tensor:
    return (n + multiple - 1) // multiple * multiple


def _source_ids(translator: Translator, sentences: tf.Tensor, limit: int) -> tf.RaggedTensor:
    """SentencePiece ids `(n, (len))` int32, truncated to `limit` (EOS not yet appended)."""
    return translator.src_tok.tokenize(sentences)[:, :limit]


def _with_eos(ids: tf.RaggedTensor) -> tf.RaggedTensor:
    eos = tf.fill(tf.stack([ids.nrows(), 1]), tf.constant(EOS_ID, tf.int32))
    return tf.concat([ids, tf.RaggedTensor.from_tensor(eos)], axis=1)


def _decode(
    translator: Translator, src_ids: tf.RaggedTensor, opts: DecodingConfig
) -> tuple[tf.Tensor, tf.Tensor]:
    """`Translator.search` over one padded batch, in the bucket the Translator would pick.

    Returns:
        ids `(n, T)` int32 of the best hypotheses (PAD after the end), scores `(n,)`.
    """
    src_len = tf.cast(src_ids.row_lengths(), tf.int32)
    width = _round_up(tf.maximum(tf.reduce_max(src_len), 1), SRC_PAD_MULTIPLE)
    src = src_ids.to_tensor(PAD_ID, shape=tf.stack([tf.shape(src_len)[0], width]))

    # The length penalty is a constant here and an argument of the Translator's search.
    # TensorFlow's graph optimizer rewrites pow for some constant exponents (0.5 to sqrt,
    # 2 to square), so at those a score can differ from the Translator's in its last bit.
    def search(max_steps: int) -> Callable[[], tuple[tf.Tensor, tf.Tensor]]:
        return lambda: translator.search(src, src_len, opts, max_steps)

    branches = [search(steps) for _, steps in step_buckets(opts)]
    ids, scores = tf.switch_case(bucket_index(width, opts), branches)
    return ids[:, 0], scores[:, 0]


def make_translate_fn(
    translator: Translator, opts: DecodingConfig
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """The exported function: `sentences (batch,) tf.string -> {translations, scores}`.

    Args:
        translator: the loaded run (model and tokenizers).
        opts: decoding settings (`n_best` is ignored: one translation per sentence).
    """
    opts = replace(opts, n_best=1)

    def translate(sentences: tf.Tensor) -> dict[str, tf.Tensor]:
        batch = tf.shape(sentences, out_type=tf.int64)[:1]
        ids = _source_ids(translator, sentences, opts.max_input_len)
        # The Translator's rule: a sentence that encodes to no ids is not translated.
        keep = tf.where(ids.row_lengths() > 0)
        src_ids = _with_eos(tf.gather(ids, keep[:, 0]))
        # The Translator's batch order (stable sort by length): same rows, same arithmetic.
        order = tf.argsort(src_ids.row_lengths(), stable=True)
        ids, scores = _decode(translator, tf.gather(src_ids, order), opts)
        keep = tf.gather(keep, order)
        return {
            "translations": tf.scatter_nd(keep, translator.tgt_tok.detokenize(ids), batch),
            "scores": tf.scatter_nd(keep, scores, batch),
        }

    return translate


def build_archive(translator: Translator, opts: DecodingConfig) -> keras.export.ExportArchive:
    """A Keras `ExportArchive` with the `translate` endpoint (the `serving_default` too).

    The archive saves the variables the endpoint captures and, because they are tracked,
    the SentencePiece model resources of the tokenizers (their model bytes live in the graph).
    The model itself is deliberately not `track()`ed: that would store every weight twice,
    as Keras variable wrappers and as the captured `tf.Variable`s (keras-team/keras#23553).
    """
    archive = keras.export.ExportArchive()
    tokenizers = {id(tok): tok for tok in (translator.src_tok, translator.tgt_tok)}
    for tok in tokenizers.values():
        archive.track(tok.tf_tokenizer)
    archive.add_endpoint(
        ENDPOINT,
        make_translate_fn(translator, opts),
        input_signature=[tf.TensorSpec([None], tf.string, name="sentences")],
    )
    return archive


def export_settings(
    translator: Translator, opts: DecodingConfig, run_dir: Path, weights: str = "best"
) -> dict:
    """What `OUT_DIR/nmt_export.json` records: the settings frozen into the graph."""
    return {
        "run_dir": str(run_dir.resolve()),
        "weights": weights,
        "signature": "serving_default",
        "inputs": {"sentences": "tf.string (batch,)"},
        "outputs": {"translations": "tf.string (batch,)", "scores": "tf.float32 (batch,)"},
        "src_lang": translator.cfg.data.src_lang,
        "tgt_lang": translator.cfg.data.tgt_lang,
        "decoding": {
            "beam_size": opts.beam_size,
            "length_penalty": opts.length_penalty,
            "max_len_a": opts.max_len_a,
            "max_len_b": opts.max_len_b,
            "max_input_len": opts.max_input_len,
            # Output tokens allowed by each compiled search, by padded source width.
            "max_steps_by_source_width": dict(step_buckets(opts)),
        },
        "load": "import tensorflow_text, then tf.saved_model.load(OUT_DIR)",
        "tensorflow": tf.__version__,
    }


def check_out_dir(out_dir: Path, run_dir: Path, force: bool) -> None:
    """Refuses an output folder that would lose data.

    Raises:
        NmtError: `out_dir` is a file, is (or contains) the run directory, or is a non-empty
            folder and `force` is off.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise NmtError(f"export destination {out_dir} is a file, not a folder")
    out_abs, run_abs = out_dir.resolve(), run_dir.resolve()
    # --force replaces the folder: never let that delete the run it exports.
    if out_abs == run_abs or out_abs in run_abs.parents:
        raise NmtError(f"export destination {out_dir} would overwrite the run directory {run_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise NmtError(
            f"export destination {out_dir} exists and is not empty; "
            "choose another folder or pass --force to replace it"
        )


def _write(archive: keras.export.ExportArchive, settings: dict, out_dir: Path) -> None:
    """Writes into a temporary sibling folder, then swaps it in: no half-written export.

    Raises:
        NmtError: the destination's parent folder cannot be created or written to.
    """
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:
        raise NmtError(f"cannot write the export to {out_dir}: {exc.strerror}") from None
    try:
        archive.write_out(str(tmp), verbose=False)
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; an export is meant to share
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    beam_size: int | None = None,
    length_penalty: float | None = None,
    force: bool = False,
    weights: str = "best",
) -> dict:
    """Exports a model of `run_dir` as a string-to-string SavedModel in `out_dir`.

    Args:
        run_dir: trained run directory.
        out_dir: destination folder; must not exist or be empty unless `force`.
        beam_size, length_penalty: override the run's decoding defaults (`decoding.json`,
            else its config).
        force: replace a non-empty `out_dir`.
        weights: "best", "last" or "averaged" (see `rundir.trained_weights`).

    Returns:
        The settings written to `OUT_DIR/nmt_export.json`.

    Raises:
        RunDirError: `run_dir` is missing or has no trained model.
        NmtError: bad decoding options, a destination that would lose data, TensorFlow
            missing or a Keras backend other than TensorFlow.
    """
    require_tensorflow()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_out_dir(out_dir, run_dir, force)
    if tf.config.list_logical_devices("GPU"):
        log.warning(
            "a GPU is visible: Keras traces the encoder with cuDNN kernels, so this SavedModel "
            "will need a GPU to run; hide the GPU (CUDA_VISIBLE_DEVICES=) for a portable one"
        )
    translator = Translator.from_run_dir(run_dir, weights)
    opts = translator.decoding_options(beam_size=beam_size, n_best=1, length_penalty=length_penalty)
    start = time.perf_counter()
    settings = export_settings(translator, opts, run_dir, weights)
    _write(build_archive(translator, opts), settings, out_dir)
    log.info("exported %s to %s in %.1f s", run_dir, out_dir, time.perf_counter() - start)
    return settings
