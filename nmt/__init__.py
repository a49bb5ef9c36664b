"""nmt: a Keras 3 / TensorFlow toolkit for neural machine translation (Cho et al. 2014)."""

__version__ = "0.1.0"
