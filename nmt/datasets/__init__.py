"""tfds DatasetBuilders bundled with nmt, and the TensorFlow-free layout of their raw files.

After `from nmt.datasets import Multi30k` (or `import nmt.datasets.multi30k`),
`tfds.load("multi30k/en-de")` works like any tfds dataset. The builder is imported on first
access rather than with the package, so that `nmt.datasets.multi30k_layout` is usable
without tensorflow_datasets (and without importing TensorFlow).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Multi30k", "Multi30kConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from nmt.datasets import multi30k

        return getattr(multi30k, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
