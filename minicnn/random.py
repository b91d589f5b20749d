"""The random number generator behind parameter initialisation (seed it for reproducibility)."""
import numpy as np

_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator that ``minicnn.nn`` layers draw their initial weights from."""
    global _rng
    _rng = np.random.default_rng(seed)


def generator():
    """The current ``numpy.random.Generator``."""
    return _rng
