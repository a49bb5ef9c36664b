"""Benchmark: this machine's matrix-multiply peak in GFLOP/s, float32 and bfloat16.

    .venv/bin/python scripts/bench_matmul.py [--sizes 512 1024 2048] [--repeats 10]
        [--dtypes float32 bfloat16] [--out runs/bench/matmul.json]

Square n x n times n x n products (2 n^3 FLOP) through the Keras backend's own compiled
matmul, the one training uses: `tf.function` under TensorFlow, `jax.jit` under JAX. The
product is summed to a scalar inside the compiled function, so nothing large is copied out
(the sum's additions are not counted). Per dtype and shape, the median of `--repeats` timed
calls after 3 warm-up calls; a dtype's peak is its best square's median. That peak is the
ceiling `bench_train.py --peak-tflops` compares the model's FLOP rate with (float32 for
float32 training, bfloat16 for mixed_bfloat16).

Two more rows show what the attention config's own products reach, which bounds training
below the peak: one decoder GRU step's recurrent product (batch 64: 64x512 @ 512x1536, made
once per target position, one after the other) and the output projection over a whole batch
of 64 sentences x 16 target tokens (1024x256 @ 256x8000).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench_pipeline import machine, run_main, write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default="runs/bench/matmul.json")
    return parser.parse_args(argv)


def compiled_product():
    """(a, b) -> sum(a @ b) as a float32 scalar, compiled by the Keras backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), "float32")))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        product = jax.jit(lambda a, b: jnp.sum((a @ b).astype("float32")))
        return lambda a, b: product(a, b).block_until_ready()
    raise SystemExit(f"bench_matmul.py runs under KERAS_BACKEND=tensorflow or jax, not {backend}")


MODEL_SHAPES = {"decoder GRU step": (64, 512, 1536), "output projection": (1024, 256, 8000)}


def gflops(product, m: int, k: int, n: int, dtype: str, repeats: int) -> float:
    """Median GFLOP/s of `repeats` (m, k) @ (k, n) products after 3 warm-up calls."""
    from keras import ops, random

    a = ops.cast(random.normal((m, k), seed=1), dtype)
    b = ops.cast(random.normal((k, n), seed=2), dtype)
    for _ in range(3):
        float(product(a, b))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        float(product(a, b))
        seconds.append(time.perf_counter() - start)
    return 2 * m * k * n / statistics.median(seconds) / 1e9


def measure(sizes: list[int], dtypes: list[str], repeats: int) -> dict:
    """{"rows": [{dtype, shape, gflops}], "peak_gflops": {dtype: best square}}."""
    product = compiled_product()
    shapes = {f"square {n}": (n, n, n) for n in sizes} | MODEL_SHAPES
    rows = [
        {
            "dtype": dtype,
            "shape": name,
            "mkn": mkn,
            "gflops": round(gflops(product, *mkn, dtype, repeats), 1),
        }
        for dtype in dtypes
        for name, mkn in shapes.items()
    ]
    peaks = {
        d: max(r["gflops"] for r in rows if r["dtype"] == d and r["shape"].startswith("square"))
        for d in dtypes
    }
    return {"rows": rows, "peak_gflops": peaks}


def main(argv: list[str] | None = None) -> None:
    import keras

    args = parse_args(argv)
    result = {"benchmark": "matmul", "machine": machine(), "backend": keras.backend.backend()}
    result.update(measure(args.sizes, args.dtypes, args.repeats))
    for row in result["rows"]:
        print(f"{row['dtype']:<10}{row['shape']:<20}{row['gflops']:>10.1f} GFLOP/s")
    print("peak: " + ", ".join(f"{d} {g:.1f} GFLOP/s" for d, g in result["peak_gflops"].items()))
    write_json(result, args.out)


if __name__ == "__main__":
    run_main(main, __file__)
