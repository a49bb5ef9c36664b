"""`NMT_CPU_DEVICES=N`: split the CPU into N devices, a testing aid for distributed training.

TensorFlow gets N logical CPU devices (`tf.config.set_logical_device_configuration`), JAX N
host devices (`XLA_FLAGS=--xla_force_host_platform_device_count=N`). Both must be set before
the framework starts: `set_xla_host_devices` before Keras (and so jax) is imported,
`split_tensorflow_cpu` before TensorFlow runs anything. No Keras import here for that reason.
"""

from __future__ import annotations

import os
import sys

from nmt.errors import NmtError

CPU_DEVICES_ENV = "NMT_CPU_DEVICES"


def cpu_devices() -> int | None:
    """`$NMT_CPU_DEVICES` as a count; None when unset or empty.

    Raises:
        NmtError: the value is not a positive integer.
    """
    text = os.environ.get(CPU_DEVICES_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise NmtError(f"{CPU_DEVICES_ENV} must be a positive integer, got {text!r}")
    return int(text)


def set_xla_host_devices() -> None:
    """Adds the XLA host-device flag for `$NMT_CPU_DEVICES` (before jax is imported)."""
    count = cpu_devices()
    if count is None:
        return
    if "jax" in sys.modules:
        raise NmtError(f"{CPU_DEVICES_ENV} must be set up before jax is imported")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flag = f"--xla_force_host_platform_device_count={count}"
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


def split_tensorflow_cpu() -> None:
    """Gives TensorFlow `$NMT_CPU_DEVICES` logical CPU devices, when Keras runs on it."""
    count = cpu_devices()
    if count is None or "tensorflow" not in sys.modules:  # a JAX/PyTorch run never imports it
        return
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    try:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * count,
        )
    except RuntimeError:  # TensorFlow already started; fine if it has the devices
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise NmtError(
                f"{CPU_DEVICES_ENV} must be set before TensorFlow starts (it has {have} "
                "CPU devices)"
            ) from None


def setup() -> None:
    """Both steps, for a process that has not imported Keras yet (scripts, tests)."""
    set_xla_host_devices()
    import keras  # noqa: F401

    split_tensorflow_cpu()
