"""The `nmt` command line: a thin layer over the library.

    nmt prepare CONFIG --run-dir DIR [--set section.key=value ...]
    nmt train   CONFIG --run-dir DIR [--set section.key=value ...]
    nmt translate | evaluate RUN_DIR ... [--ensemble RUN_DIR ...]
    nmt export RUN_DIR [OUT_DIR] [--beam-size K] [--length-penalty A] [--force]
    nmt average RUN_DIR --last N
    nmt tune-decoding RUN_DIR [--beam-sizes K ...] [--length-penalties A ...] [--max-p P]
                      [--ensemble RUN_DIR ...]

translate, evaluate, export and tune-decoding take `--weights best|last|averaged`; their
decoding defaults come from the run's decoding.json (tune-decoding), else its config. An
ensemble's come from RUN_DIR's decoding.ensemble.json (tune-decoding --ensemble) when it holds
this set of members, else from RUN_DIR's as for one run.

Options and positional arguments may come in any order after the command. User mistakes
(`NmtError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# TensorFlow's C++ start-up chatter hides our messages; users can lower it again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nmt.errors import NmtError  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class _IntermixedParser(argparse.ArgumentParser):
    """A subcommand parser that takes options and positionals in any order.

    Plain argparse matches positionals in runs: in `translate RUN --beam-size 5 TEXT` it fills
    RUN and the optional SENTENCE before the option, and TEXT is left over. Intermixed
    parsing collects the options first. The subparsers action calls `parse_known_args`, so
    that is where it goes; `parse_known_intermixed_args` itself calls `parse_known_args`
    (Python < 3.13), which the flag sends to the plain version.
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/base.yaml for every key)")
    parser.add_argument("--run-dir", required=True, help="run directory to create or resume")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set training.epochs=3",
    )


def _load_config(args: argparse.Namespace):
    from nmt import config

    return config.load(args.config, args.overrides)


def cmd_prepare(args: argparse.Namespace) -> int:
    from nmt import training

    training.prepare(_load_config(args), args.run_dir)
    print(f"prepared {args.run_dir}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nmt import training

    state = training.train(_load_config(args), args.run_dir)
    print(f"done: {training.describe_state(state)}, best {state.get('best')} -> {args.run_dir}")
    return 0


# Where --beam-size and --length-penalty default from.
RUN_DEFAULT = (
    "default: what nmt tune-decoding stored (with --ensemble, for these members if it tuned "
    "them, else for RUN_DIR alone), else the config"
)


def _add_weights_arg(parser: argparse.ArgumentParser) -> None:
    from nmt.rundir import WEIGHTS_CHOICES

    parser.add_argument(
        "--weights",
        choices=WEIGHTS_CHOICES,
        default="best",
        help="best (default), the last checkpoint, or averaged (written by 'nmt average')",
    )


def _add_decoding_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--beam-size", type=int, help=f"beams (1 = greedy); {RUN_DEFAULT}")
    parser.add_argument("--length-penalty", type=float, help=f"GNMT alpha; {RUN_DEFAULT}")
    parser.add_argument("--batch-size", type=int, help="sentences per batch; default: config")
    _add_weights_arg(parser)


# What --ensemble does, for every command that takes it.
ENSEMBLE_HELP = (
    "decode with these runs' models too, averaging their probabilities (each run must have "
    "RUN_DIR's SentencePiece models; --weights applies to every run)"
)


def _add_ensemble_arg(parser: argparse.ArgumentParser, note: str) -> None:
    parser.add_argument(
        "--ensemble",
        nargs="+",
        action="extend",
        default=[],
        metavar="RUN_DIR",
        help=f"{ENSEMBLE_HELP}; {note}",
    )


def _load_translator(args: argparse.Namespace):
    from nmt.translator import Translator

    return Translator.from_run_dir(args.run_dir, args.weights, ensemble=args.ensemble)


def _decoding_kwargs(args: argparse.Namespace) -> dict:
    return {
        "beam_size": args.beam_size,
        "length_penalty": args.length_penalty,
        "batch_size": args.batch_size,
    }


def cmd_translate(args: argparse.Namespace) -> int:
    from nmt import console

    if args.sentence is not None and args.input:
        raise NmtError("give either a SENTENCE or --input FILE, not both")
    translator = _load_translator(args)
    options = {**_decoding_kwargs(args), "n_best": args.n_best}
    translator.decoding_options(**options)  # reject bad options before reading input
    lines, progress = _translation_input(args)
    with console.open_output(args.output) as out:
        if lines is None:
            console.translate_interactively(translator, out, options)
        else:
            console.translate_lines(translator, lines, out, options, progress)
    return 0


def _translation_input(args: argparse.Namespace):
    """`(lines, progress)` for `nmt translate`; lines is None for a prompt on a terminal."""
    from nmt import console, textio

    if args.sentence is not None:
        try:
            args.sentence.encode("utf-8")  # undecodable argv bytes arrive as lone surrogates
        except UnicodeEncodeError:
            raise NmtError("SENTENCE is not valid UTF-8") from None
        return [args.sentence], None
    if args.input:
        # A first pass counts the lines for the progress total and decodes them all, so bad
        # bytes stop the command before any output is written; the second pass streams.
        total = textio.count_lines(args.input)
        return textio.read_lines(args.input), console.Progress(total)
    if sys.stdin is None:
        raise NmtError("stdin is closed; give a SENTENCE or --input FILE")
    if sys.stdin.isatty():
        return None, None
    return textio.decode_lines(sys.stdin.buffer, "<stdin>"), None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nmt import evaluation

    translator = _load_translator(args)
    srcs, refs, name = evaluation.load_data(translator.cfg, args.src, args.ref, args.split)
    report = evaluation.evaluate(translator, srcs, refs, _decoding_kwargs(args), args.by_length)
    report["weights"] = args.weights
    if args.ensemble:
        # Not the single model's NAME.json: the ensemble's report sits beside it.
        report["ensemble"] = [args.run_dir, *args.ensemble]
        name = f"{name}.ensemble"
    out_dir = Path(args.output_dir or Path(args.run_dir) / "eval")
    evaluation.write_report(report, out_dir, name)
    models = f", ensemble of {len(report['ensemble'])}" if args.ensemble else ""
    print(
        f"BLEU {report['bleu']:.2f} (lowercased {report['bleu_lc']:.2f})  chrF "
        f"{report['chrf']:.2f}  ({report['sentences']} "
        f"sentences, beam {report['beam_size']}{models}, {report['sentences_per_s']:.1f} sent/s)"
    )
    print(f"sacrebleu BLEU signature: {report['bleu_signature']}")
    print(f"sacrebleu BLEU lowercased: {report['bleu_lc_signature']}")
    print(f"sacrebleu chrF signature: {report['chrf_signature']}")
    for row in report.get("by_source_length", []):
        print(
            f"  source {row['bucket']:>6} words: {row['sentences']:5d} sentences, "
            f"BLEU {row['bleu']:6.2f}, chrF {row['chrf']:6.2f}"
        )
    print(f"hypotheses and report written to {out_dir}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    # A SavedModel is TensorFlow's whichever backend trained the run (weights are
    # backend-neutral); Keras reads KERAS_BACKEND once, at its first import.
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    try:
        from nmt import export
    except ImportError:  # Keras cannot load its TensorFlow backend
        raise NmtError(
            'nmt export needs the tensorflow extra: pip install "nmt[tensorflow]"'
        ) from None
    export.hide_gpus()  # before TensorFlow starts; one line if tensorflow_text is missing

    out_dir = args.out_dir or str(Path(args.run_dir) / "export")
    settings = export.export(
        args.run_dir,
        out_dir,
        args.beam_size,
        args.length_penalty,
        force=args.force,
        weights=args.weights,
    )
    dec = settings["decoding"]
    print(
        f"exported {args.run_dir} -> {out_dir} (beam {dec['beam_size']}, length penalty "
        f"{dec['length_penalty']}); load with 'import tensorflow_text' + tf.saved_model.load"
    )
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from nmt import averaging

    path = averaging.average_checkpoints(args.run_dir, args.last)
    print(f"averaged the last {args.last} checkpoints -> {path} (use it with --weights averaged)")
    return 0


def cmd_tune_decoding(args: argparse.Namespace) -> int:
    from nmt import config, evaluation, rundir

    if args.max_sentences < 0:
        raise NmtError(f"--max-sentences must be at least 0, got {args.max_sentences}")
    translator = _load_translator(args)
    srcs, refs, _ = evaluation.load_data(translator.cfg, None, None, "validation")
    limit = args.max_sentences or len(srcs)
    # The config's pair, the run's untuned decoding, is always scored, and only a gain over
    # it beyond chance replaces it. Not a pair tuned before: tuning again can undo that.
    run = rundir.RunDir(args.run_dir)
    own = config.load(run.config).decoding
    configured = (own.beam_size, own.length_penalty)
    tuned = evaluation.tune_decoding(
        translator,
        srcs[:limit],
        refs[:limit],
        args.beam_sizes,
        args.length_penalties,
        args.batch_size,
        baseline=configured,
        max_p=args.max_p,
    )
    tuned["weights"] = args.weights
    path = rundir.write_decoding(run, tuned, args.ensemble)
    _print_grid(tuned)
    best = tuned["best"]
    users = "translate, evaluate and export"
    if args.ensemble:
        users = "translate and evaluate with the same --ensemble"
    print(
        f"stored beam {best['beam_size']}, length penalty {best['length_penalty']:g} "
        f"(validation BLEU {best['bleu']:.2f}) in {path}: {users} use them unless given "
        "--beam-size / --length-penalty"
    )
    return 0


def _print_grid(tuned: dict) -> None:
    from nmt.evaluation import AR_TRIALS

    print(f"validation BLEU, {tuned['sentences']} sentences ({tuned['bleu_signature']})")
    # One compilation per beam size (TensorFlow, JAX) serves all its length penalties.
    header = "sent/s (the first of a beam size incl. compiling)   * stored, c the config's"
    print(f" beam  length penalty    BLEU  {header}")
    for cell in tuned["grid"]:
        mark = ("*" if cell is tuned["best"] else "") + ("c" if cell is tuned["default"] else "")
        print(
            f"{cell['beam_size']:5d}  {cell['length_penalty']:14.2f}  {cell['bleu']:6.2f}  "
            f"{cell['sentences_per_s']:6.1f}  {mark}".rstrip()
        )
    highest, default, p = tuned["highest"], tuned["default"], tuned["p_value"]
    if p is None:
        print("no cell scores above the config's pair")
        return
    gain = f"beam {highest['beam_size']}, length penalty {highest['length_penalty']:g}: "
    gain += f"{highest['bleu'] - default['bleu']:+.2f} BLEU over the config's pair, p {p:.3g}"
    test = f"paired approximate randomization, {AR_TRIALS:,} trials"
    if highest is tuned["best"]:
        print(f"{gain} ({test})")
    else:
        print(f"{gain} > --max-p {tuned['max_p']:g}: within chance ({test}); keeps the config's")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmt", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_IntermixedParser
    )
    p = sub.add_parser("prepare", help="train SentencePiece and count filtered data")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("train", help="train (or resume) a model")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("translate", help="translate a sentence, a file or stdin")
    p.add_argument("run_dir", help="trained run directory")
    p.add_argument("sentence", nargs="?", help="sentence to translate (default: stdin)")
    p.add_argument("--input", help="file to translate (plain or .gz), one sentence per line")
    p.add_argument("--output", help="write translations here (default: stdout)")
    p.add_argument(
        "--n-best",
        type=int,
        default=1,
        help="with N > 1 print N lines per input: 'INDEX ||| TRANSLATION ||| SCORE'",
    )
    _add_ensemble_arg(p, "SENTENCE goes before --ensemble; nmt export takes one run")
    _add_decoding_args(p)
    p.set_defaults(func=cmd_translate)
    p = sub.add_parser("evaluate", help="BLEU and chrF (sacrebleu) of a trained run")
    p.add_argument("run_dir", help="trained run directory")
    p.add_argument("--src", help="source file (plain or .gz)")
    p.add_argument("--ref", help="reference file (plain or .gz)")
    p.add_argument(
        "--split",
        choices=["train", "validation", "test"],
        help="evaluate on a split of the run's configured corpus instead",
    )
    p.add_argument("--by-length", action="store_true", help="BLEU by source length")
    p.add_argument(
        "--output-dir",
        help="where hypotheses and report go (default RUN_DIR/eval; an ensemble's are named "
        "NAME.ensemble.hyp and .json)",
    )
    _add_ensemble_arg(p, "nmt export takes one run")
    _add_decoding_args(p)
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("export", help="export a string-to-string SavedModel")
    p.add_argument("run_dir", help="trained run directory")
    p.add_argument("out_dir", nargs="?", help="SavedModel folder (default: RUN_DIR/export)")
    p.add_argument("--beam-size", type=int, help=f"beams baked into the graph; {RUN_DEFAULT}")
    p.add_argument("--length-penalty", type=float, help=f"GNMT alpha; {RUN_DEFAULT}")
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT_DIR")
    _add_weights_arg(p)
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("average", help="average the weights of the last kept checkpoints")
    p.add_argument("run_dir", help="trained run directory")
    p.add_argument(
        "--last",
        type=int,
        required=True,
        help="how many of the last checkpoints (at most training.keep_checkpoints)",
    )
    p.set_defaults(func=cmd_average)
    p = sub.add_parser(
        "tune-decoding",
        help="grid-search beam size and length penalty on validation; store the best if it "
        "beats the config's pair beyond chance",
    )
    p.add_argument("run_dir", help="trained run directory")
    p.add_argument("--beam-sizes", type=int, nargs="+", default=[1, 2, 4, 8], metavar="K")
    p.add_argument(
        "--length-penalties",
        type=float,
        nargs="+",
        default=[0.0, 0.4, 0.6, 0.8, 1.0],
        metavar="A",
    )
    p.add_argument(
        "--max-sentences", type=int, default=0, help="decode the first N validation pairs; 0 = all"
    )
    p.add_argument("--batch-size", type=int, help="sentences per batch; default: config")
    p.add_argument(
        "--max-p",
        type=float,
        default=0.05,
        metavar="P",
        help="store the grid's best only if a paired approximate-randomization test against "
        "the config's pair gives p <= P on these sentences, else that pair (1: the best "
        "whatever its margin, though a tie keeps the config's; default: %(default)s)",
    )
    _add_ensemble_arg(
        p,
        "tune the ensemble: its best goes to RUN_DIR/decoding.ensemble.json, one entry per "
        "set of members, and RUN_DIR/decoding.json stays RUN_DIR's own",
    )
    _add_weights_arg(p)
    p.set_defaults(func=cmd_tune_decoding)
    for command_parser in sub.choices.values():
        # -v after the command too; SUPPRESS keeps a -v given before it.
        command_parser.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS
        )
    return parser


def _setup_logging(verbose: bool) -> None:
    """Our messages at INFO on stderr; other libraries' (tfds, absl) only from WARNING on."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("nmt: %(message)s"))
    logger = logging.getLogger("nmt")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    logging.getLogger("absl").setLevel(logging.WARNING)


def _start_light(args: argparse.Namespace) -> None:
    """`nmt translate RUN "a sentence"` decodes on Keras' numpy backend unless KERAS_BACKEND
    names one: it starts in ~2.5 s where TensorFlow takes ~7 (its import alone ~6), and one
    sentence needs no compiler. Files and stdin keep the default backend, which decodes many
    sentences faster. Keras asks whether TensorFlow is installed while it builds layers,
    which would import it; blocking the import keeps it out of this short process."""
    if args.command != "translate" or args.sentence is None:
        return
    if os.environ.get("KERAS_BACKEND") or "keras" in sys.modules:  # chosen, or too late
        return
    os.environ["KERAS_BACKEND"] = "numpy"
    sys.modules.setdefault("tensorflow", None)  # `import tensorflow` now raises ImportError


def _load_keras() -> None:
    """Imports Keras, turning a backend that is not installed into one line."""
    try:
        import keras  # noqa: F401
    except ImportError as exc:
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        raise NmtError(
            f"Keras cannot load its {backend} backend ({exc}); install its extra, e.g. "
            'pip install "nmt[tensorflow]", or choose another with KERAS_BACKEND=jax|torch'
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        if args.command != "export":  # export picks its own backend
            from nmt import devices

            _start_light(args)
            devices.set_xla_host_devices()  # NMT_CPU_DEVICES: before jax starts
            _load_keras()
            devices.split_tensorflow_cpu()  # and before TensorFlow runs anything
        return args.func(args)
    except NmtError as exc:
        print(f"nmt: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        resume = "; run the same command again to resume" if args.command == "train" else ""
        print(f"nmt: interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
