"""The `nmt` command line: a thin layer over the library.

    nmt prepare CONFIG --run-dir DIR [--set section.key=value ...]
    nmt train   CONFIG --run-dir DIR [--set section.key=value ...]
    nmt translate | evaluate | export ...

User mistakes (`NmtError`) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

# TensorFlow's C++ start-up chatter hides our messages; users can lower it again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from nmt.errors import NmtError  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config (see configs/base.yaml for every key)")
    parser.add_argument("--run-dir", required=True, help="run directory to create or resume")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
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
    print(f"done: epoch {state.get('epoch')}, step {state.get('step')}, "
          f"best {state.get('best')} -> {args.run_dir}")
    return 0


def _not_built(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise NmtError(f"'nmt {name}' is not built yet")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmt", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("prepare", help="train SentencePiece and count filtered data")
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("train", help="train (or resume) a model")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)
    for name, text in [("translate", "translate sentences with a trained run"),
                       ("evaluate", "BLEU/chrF of a trained run"),
                       ("export", "export a string-to-string SavedModel")]:
        p = sub.add_parser(name, help=text)
        p.add_argument("args", nargs="*")
        p.set_defaults(func=_not_built(name))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="nmt: %(message)s", stream=sys.stderr,
    )
    try:
        return args.func(args)
    except NmtError as exc:
        print(f"nmt: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("nmt: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
