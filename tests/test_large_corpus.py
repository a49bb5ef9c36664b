"""Large corpora stream: counting a corpus ten times larger does not take more memory.

The peak is measured in a fresh process (the test process' own peak is whatever the tests
before it reached), reset before each count (`/proc/self/clear_refs`), on Linux.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nmt import config

from .conftest import REPO, write_tiny_corpus

PROBE = """
import json, sys
from pathlib import Path
from nmt import config, pipeline, tokenizer

def peak_mib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

tokenizers = tokenizer.load_tokenizers(Path(sys.argv[1]))
result = {}
for engine in ("tfdata", "grain"):
    for prefix in sys.argv[2:]:
        data = config.load(None, ["data.format=files", f"data.train={prefix}"]).data
        pipeline.count_split(data, "train", *tokenizers, engine=engine)  # warm: imports, caches
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = peak_mib()
        counts = pipeline.count_split(data, "train", *tokenizers, engine=engine)
        result[f"{engine} {prefix}"] = {"total": counts["total"], "growth": peak_mib() - before}
print(json.dumps(result))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_counting_a_corpus_ten_times_larger_takes_no_more_memory(tmp_path, tiny_run):
    small = write_tiny_corpus(tmp_path / "small", n_train=40_000, n_val=1) / "train"
    large = write_tiny_corpus(tmp_path / "large", n_train=400_000, n_val=1) / "train"
    # Held in memory, the large corpus' 800k strings would take ~60 MiB more than the small.
    assert config.load(None, []).training.shuffle_buffer < 400_000
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(tiny_run / "tokenizer"), str(small), str(large)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for engine in ("tfdata", "grain"):
        small_run, large_run = result[f"{engine} {small}"], result[f"{engine} {large}"]
        assert (small_run["total"], large_run["total"]) == (40_000, 400_000)
        assert large_run["growth"] < small_run["growth"] + 16, (engine, result)
