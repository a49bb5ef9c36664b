"""The JoeyNMT peer (../shared/peers/joeynmt) as our benchmarks drive it: its work folder,
configs derived from the peer's own, training for a wall-clock budget, `joeynmt test`, and
its logs parsed. Nothing here changes the peer's model or training settings except what each
function says (model folder, update limit, validation frequency, kept checkpoints, beam).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PEER_SCRIPT = REPO.parent / "shared/peers/joeynmt/run.sh"
DEFAULT_WORK = Path("/tmp/joeynmt-m30k")

# "2026-11-22 08:58:37,104 - INFO - joeynmt.prediction - Evaluation result (greedy): bleu:
# 15.51, chrf: 40.20, loss: ..., 12.3456[sec]"
EVALUATION_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*Evaluation result \((greedy|beam search)\): "
    r"(.*), ([\d.]+)\[sec\]"
)
# "... - Generation took 17.7954[sec]." (decoding only; the line above times scoring)
GENERATION_LINE = re.compile(r"Generation took ([\d.]+)\[sec\]")
# validations.txt: "Steps: 200\tloss: 4.1\tacc: 0.3\tppl: 60.1\tbleu: 4.2\t...\tLR: 0.0009\t*"
VALIDATION_REPORT = re.compile(r"^Steps: (\d+)\t.*\tbleu: ([\d.]+)\t", re.MULTILINE)


def ensure_work(work: Path, script: Path = PEER_SCRIPT) -> None:
    """Installs JoeyNMT and prepares data and SentencePiece in `work` (run.sh, 1 update)."""
    ready = [work / "venv/bin/python", work / "config.yaml", work / "sp8k.model"]
    if all(path.is_file() for path in ready):
        return
    print(f"== preparing JoeyNMT in {work} (bash {script} 1)", flush=True)
    env = {**os.environ, "WORK": str(work)}
    # Its exit status is no guide: one update logs no throughput line, which run.sh reports
    # as a failure after everything this needs is in place.
    subprocess.run(["bash", str(script), "1"], env=env, stdout=subprocess.DEVNULL)
    missing = [str(path) for path in ready if not path.is_file()]
    if missing:
        raise SystemExit(f"{script} left no {', '.join(missing)}; see {work / 'train.log'}")


def write_config(work: Path, name: str, training: dict, testing: dict | None = None) -> Path:
    """`work/name.yaml`: the peer's config with model_dir `work/name` and these changes."""
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["model_dir"] = str(work / name)
    cfg["training"].update(training)
    cfg["testing"].update(testing or {})
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_for(work: Path, config: Path, seconds: float) -> float:
    """Trains with `config` until it ends or `seconds` pass (then SIGINT: JoeyNMT saves and
    exits); returns the start time (time.time()) of the process."""
    command = [str(work / "venv/bin/python"), "-m", "joeynmt", "train", str(config), "--skip-test"]
    start = time.time()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    stop_process(process, start + seconds)
    return start


def stop_process(process: subprocess.Popen, deadline: float, sig=signal.SIGINT) -> None:
    """Waits for `process` until `deadline`, then sends `sig` and waits 5 more minutes."""
    try:
        process.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        process.send_signal(sig)
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def log_time(date: str, millis: str) -> float:
    """A JoeyNMT log timestamp (local time) as seconds since the epoch."""
    return dt.datetime.strptime(date, "%Y-%m-%d %H:%M:%S").timestamp() + int(millis) / 1000


def evaluations(log: str) -> list[dict]:
    """Every "Evaluation result" line of a JoeyNMT log: time, decoding, scores, seconds."""
    rows = []
    for line in log.splitlines():
        match = EVALUATION_LINE.match(line)
        if match:
            date, millis, decoding, scores, seconds = match.groups()
            fields = dict(item.split(": ") for item in scores.split(", "))
            rows.append(
                {
                    "time": log_time(date, millis),
                    "decoding": decoding,
                    **{k.strip(): float(v) for k, v in fields.items()},
                    "scoring_seconds": float(seconds),
                }
            )
    return rows


def validation_curve(model_dir: Path, start: float) -> list[dict]:
    """(minutes since `start`, step, greedy validation BLEU) of each validation of a run:
    steps and BLEU from validations.txt, times from the train.log lines in the same order."""
    reports = VALIDATION_REPORT.findall((model_dir / "validations.txt").read_text())
    times = [row["time"] for row in evaluations((model_dir / "train.log").read_text())]
    return [
        {"minutes": round((t - start) / 60, 2), "step": int(step), "bleu": float(bleu)}
        for (step, bleu), t in zip(reports, times, strict=False)
    ]


def decode_test(work: Path, config: Path) -> dict:
    """`joeynmt test CONFIG` (dev, then test set): the test set's scores and its generation
    seconds as JoeyNMT logs them."""
    command = [str(work / "venv/bin/python"), "-m", "joeynmt", "test", str(config)]
    log_path = Path(yaml.safe_load(config.read_text())["model_dir"]) / "test.log"
    log_path.unlink(missing_ok=True)
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=True)
    log = log_path.read_text()
    rows, seconds = evaluations(log), GENERATION_LINE.findall(log)
    if len(rows) != 2 or len(seconds) != 2:
        raise RuntimeError(f"expected a dev and a test set decoded in {log_path}")
    return {**rows[1], "seconds": float(seconds[1])}
