"""Hyperparameter search with KerasTuner: short `nmt` trainings scored by validation BLEU.

    .venv/bin/python scripts/tune.py configs/multi30k_en_de_attention.yaml \
        [--trials 12] [--max-steps 900] [--algorithm random|bayesian] \
        [--set section.key=value ...] [--out-dir runs/tune/NAME] [--overwrite]

Each trial is one `nmt` training (`nmt.training.train`, in this process) of the config with
the trial's choices applied as `--set` overrides, stopped after `--max-steps` updates, in its
own run folder `OUT_DIR/trial_NNN`; its score is the greedy validation BLEU of the best
validation (`training.early_stopping_metric=bleu`, validated at every epoch end and at the
last update). KerasTuner (`keras_tuner.RandomSearch` or `BayesianOptimization`) picks the
choices, records every trial in `OUT_DIR/keras_tuner`, and resumes an interrupted search
where it stopped (unless `--overwrite`). BLEU, not validation NLL, is the objective because
the tokenizer's size is among the choices, and NLLs over different vocabularies do not
compare.

At the end it prints every trial (choices, BLEU, minutes) best first, and writes
`OUT_DIR/results.json` and `OUT_DIR/best.yaml`: the best trial's choices as a config that
`nmt train` takes after the tuned one (`nmt train CONFIG --set ...`, or merged by hand).

The space (`SPACE`) covers the knobs issue 10 names: sizes, dropout, tied embeddings, label
smoothing, SentencePiece size, learning rate and batch size. Short trials rank settings by
how fast they learn, which favours larger learning rates and smaller models than a full
training would; confirm the winner with a full run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

# config key -> values tried. Keys are `--set` paths of configs/base.yaml.
SPACE: dict[str, list] = {
    "model.embedding_dim": [128, 256],
    "model.decoder_units": [256, 512],
    "model.dropout": [0.2, 0.3, 0.4, 0.5],
    "model.tie_embeddings": [False, True],
    "training.label_smoothing": [0.0, 0.1, 0.2],
    "training.learning_rate": [0.0005, 0.001, 0.002],
    "training.batch_size": [32, 64, 128],
    "tokenizer.vocab_size": [4000, 8000, 12000],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--max-steps", type=int, default=900, help="updates per trial")
    parser.add_argument("--algorithm", choices=["random", "bayesian"], default="random")
    parser.add_argument("--seed", type=int, default=1, help="the tuner's own seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--space",
        type=Path,
        help="a YAML mapping of config keys to the values to try (default: SPACE)",
    )
    parser.add_argument("--out-dir", type=Path, help="default: runs/tune/<config stem>")
    parser.add_argument("--overwrite", action="store_true", help="start the search afresh")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.max_steps < 1:
        parser.error("--trials and --max-steps must be at least 1")
    args.out_dir = args.out_dir or Path("runs/tune") / Path(args.config).stem
    args.space = read_space(args.space, parser) if args.space else SPACE
    return args


def read_space(path: Path, parser: argparse.ArgumentParser) -> dict[str, list]:
    """`--space FILE`: {config key: [values]}, each list non-empty."""
    space = yaml.safe_load(path.read_text())
    if not isinstance(space, dict) or not all(isinstance(v, list) and v for v in space.values()):
        parser.error(f"{path}: expected a mapping of config keys to non-empty lists of values")
    return space


def check_space(args: argparse.Namespace) -> None:
    """Fails before any trial on a bad config, key or value: every value of the space must
    load (each key's values tried with the others' first values)."""
    from nmt import config as nmt_config

    first = {key: values[0] for key, values in args.space.items()}
    for key, values in args.space.items():
        for value in values:
            overrides = trial_overrides({**first, key: value}, args.max_steps)
            nmt_config.load(args.config, [*args.overrides, *overrides])


def trial_overrides(values: dict, max_steps: int) -> list[str]:
    """The `--set` list of one trial: its choices, the step budget and BLEU selection."""
    fixed = {
        "training.max_steps": max_steps,
        "training.epochs": 1000,  # max_steps ends the trial
        "training.patience": 0,
        "training.early_stopping_metric": "bleu",
    }
    return [f"{key}={json.dumps(value)}" for key, value in {**values, **fixed}.items()]


def choose(hp, key: str, choices: list):
    """The trial's value for `key`. KerasTuner's Choice stores booleans as 0 and 1, which the
    config refuses: a list of booleans becomes a Boolean (or Fixed, when only one)."""
    if all(isinstance(c, bool) for c in choices):
        return hp.Boolean(key) if len(set(choices)) == 2 else hp.Fixed(key, choices[0])
    return hp.Choice(key, choices)


def make_tuner(args: argparse.Namespace):
    """A KerasTuner tuner of the chosen algorithm whose trials are `nmt` trainings."""
    import keras_tuner

    from nmt import config as nmt_config
    from nmt import training

    algorithm = {"random": keras_tuner.RandomSearch, "bayesian": keras_tuner.BayesianOptimization}

    class NmtTuner(algorithm[args.algorithm]):
        def run_trial(self, trial, *args_, **kwargs_):
            hp = trial.hyperparameters
            values = {key: choose(hp, key, choices) for key, choices in args.space.items()}
            overrides = [*args.overrides, *trial_overrides(values, args.max_steps)]
            cfg = nmt_config.load(args.config, overrides)
            run_dir = args.out_dir / f"trial_{trial.trial_id}"
            start = time.time()
            state = training.train(cfg, run_dir)
            return {"val_bleu": state["best"], "minutes": (time.time() - start) / 60}

    return NmtTuner(
        objective=keras_tuner.Objective("val_bleu", direction="max"),
        max_trials=args.trials,
        seed=args.seed,
        directory=str(args.out_dir),
        project_name="keras_tuner",
        overwrite=args.overwrite,
    )


def results(tuner, space: dict[str, list]) -> list[dict]:
    """Every finished trial, best first: id, choices, validation BLEU, minutes."""
    trials = tuner.oracle.get_best_trials(num_trials=len(tuner.oracle.trials))
    return [
        {
            "trial": t.trial_id,
            "values": {key: t.hyperparameters.get(key) for key in space},
            "val_bleu": round(t.metrics.get_best_value("val_bleu"), 2),
            "minutes": round(t.metrics.get_last_value("minutes"), 1),
        }
        for t in trials
    ]


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0]["values"])
    print("| trial | " + " | ".join(keys) + " | val BLEU | minutes |")
    print("| --- " * (len(keys) + 3) + "|")
    for r in rows:
        cells = [str(r["values"][k]) for k in keys]
        print(f"| {r['trial']} | " + " | ".join(cells) + f" | {r['val_bleu']} | {r['minutes']} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_space(args)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tuner = make_tuner(args)
    tuner.search()
    rows = results(tuner, args.space)
    if not rows:
        raise SystemExit("no trial finished; see the errors above")
    print_table(rows)
    command = {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
    }
    summary = {"command": command, "trials": rows}
    (args.out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    best = {}
    for key, value in rows[0]["values"].items():
        section, name = key.split(".")
        best.setdefault(section, {})[name] = value
    (args.out_dir / "best.yaml").write_text(yaml.safe_dump(best, sort_keys=False))
    print(f"best: trial {rows[0]['trial']}, validation BLEU {rows[0]['val_bleu']}")
    print(f"wrote {args.out_dir / 'results.json'} and {args.out_dir / 'best.yaml'}")


if __name__ == "__main__":
    main()
