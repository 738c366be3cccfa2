"""bncli: Keras 3 BatchNormalization for data pipelines.

Example:
    >>> import numpy as np, bncli
    >>> bn = bncli.BatchNormalization(momentum=0.9)
    >>> y = bn(np.array([[1.0, 2.0], [3.0, 6.0]]), training=True)
"""

from __future__ import annotations

__version__ = "0.1.0"

from bncli.layer import BatchNormalization, FitSummary, load

__all__ = ["BatchNormalization", "FitSummary", "__version__", "load"]
