"""Every subcommand takes its options and positional arguments in any order."""

from __future__ import annotations

import pytest

from nmt import cli

SET = ["--set", "training.epochs=1"]
ENS = ["--ensemble", "b", "c"]
# Per subcommand: argument orders that must parse the same, and what they must give.
ORDERS = {
    "prepare": (
        [
            ["prepare", "c.yaml", "--run-dir", "r", *SET],
            ["prepare", "--run-dir", "r", "c.yaml", *SET],
            ["prepare", *SET, "--run-dir", "r", "c.yaml"],
        ],
        {"config": "c.yaml", "run_dir": "r", "overrides": ["training.epochs=1"]},
    ),
    "train": (
        [
            ["train", "c.yaml", "--run-dir", "r", *SET],
            ["train", "--run-dir", "r", *SET, "c.yaml"],
            ["train", *SET, "c.yaml", "--run-dir", "r"],
        ],
        {"config": "c.yaml", "run_dir": "r", "overrides": ["training.epochs=1"]},
    ),
    "translate": (
        [
            ["translate", "r", "A man is riding a bike.", "--beam-size", "5"],
            ["translate", "r", "--beam-size", "5", "A man is riding a bike."],
            ["translate", "--beam-size", "5", "r", "A man is riding a bike."],
        ],
        {"run_dir": "r", "sentence": "A man is riding a bike.", "beam_size": 5},
    ),
    "evaluate": (
        [
            ["evaluate", "r", "--split", "test", "--by-length"],
            ["evaluate", "--split", "test", "r", "--by-length"],
            ["evaluate", "--by-length", "--split", "test", "r"],
        ],
        {"run_dir": "r", "split": "test", "by_length": True},
    ),
    "export": (
        [
            ["export", "r", "out", "--force", "--beam-size", "2"],
            ["export", "r", "--force", "out", "--beam-size", "2"],
            ["export", "--beam-size", "2", "r", "--force", "out"],
        ],
        {"run_dir": "r", "out_dir": "out", "force": True, "beam_size": 2},
    ),
    "average": (
        [["average", "r", "--last", "3"], ["average", "--last", "3", "r"]],
        {"run_dir": "r", "last": 3},
    ),
    "tune-decoding": (
        # A list option takes every value up to the next option: RUN_DIR cannot follow it.
        [
            ["tune-decoding", "r", "--beam-sizes", "1", "4", "--weights", "averaged", *ENS],
            ["tune-decoding", *ENS, "--weights", "averaged", "r", "--beam-sizes", "1", "4"],
            ["tune-decoding", "--beam-sizes", "1", "4", *ENS, "--weights", "averaged", "r"],
        ],
        {
            "run_dir": "r",
            "ensemble": ["b", "c"],
            "beam_sizes": [1, 4],
            "length_penalties": [0.0, 0.4, 0.6, 0.8, 1.0],
            "weights": "averaged",
            "max_sentences": 0,
        },
    ),
}


@pytest.mark.parametrize("command", sorted(ORDERS))
def test_options_before_and_after_positionals_parse_the_same(command):
    orders, expected = ORDERS[command]
    parsed = [vars(cli.build_parser().parse_args(argv)) for argv in orders]
    assert all(p == parsed[0] for p in parsed[1:])
    assert {key: parsed[0][key] for key in expected} == expected
    assert parsed[0]["command"] == command and parsed[0]["verbose"] is False


@pytest.mark.parametrize("argv", [["-v", "translate", "r", "x"], ["translate", "r", "-v", "x"]])
def test_verbose_before_or_after_the_command(argv):
    assert cli.build_parser().parse_args(argv).verbose is True


@pytest.mark.parametrize(
    "argv, message",
    [
        (["translate", "r", "a", "b"], "unrecognized arguments: b"),
        (["translate", "--beam-size", "2"], "the following arguments are required: run_dir"),
        (["train", "c.yaml"], "the following arguments are required: --run-dir"),
        (["export", "r", "out", "extra"], "unrecognized arguments: extra"),
        (["evaluate", "r", "--split", "dev"], "invalid choice: 'dev'"),
        (["translate", "r", "x", "--weights", "worst"], "invalid choice: 'worst'"),
        (["average", "r"], "the following arguments are required: --last"),
    ],
)
def test_usage_errors_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_translate_with_options_between_run_dir_and_sentence(tiny_run, capsys):
    assert cli.main(["translate", str(tiny_run), "--beam-size", "2", "a man runs"]) == 0
    assert capsys.readouterr().out.count("\n") == 1
