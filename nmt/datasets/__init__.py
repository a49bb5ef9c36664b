"""tfds DatasetBuilders bundled with nmt; importing this package registers them with tfds.

After `import nmt.datasets`, `tfds.load("multi30k/en-de")` works like any tfds dataset.
"""

from nmt.datasets.multi30k import Multi30k, Multi30kConfig

__all__ = ["Multi30k", "Multi30kConfig"]
