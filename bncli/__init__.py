"""bncli: Keras 3 BatchNormalization for data pipelines.

The public names are imported on first use (PEP 562), so that ``bncli
--help`` and other commands that need only part of the package start fast.

Example:
    >>> import numpy as np, bncli
    >>> bn = bncli.BatchNormalization(momentum=0.9)
    >>> y = bn(np.array([[1.0, 2.0], [3.0, 6.0]]), training=True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bncli.version import __version__

__all__ = [
    "BatchNormalization",
    "FitSummary",
    "__version__",
    "fit_part",
    "load",
    "merge",
]

#: Public name -> the module that defines it.
_LAZY = {
    "BatchNormalization": "bncli.layer",
    "FitSummary": "bncli.layer",
    "load": "bncli.layer",
    "fit_part": "bncli.parts",
    "merge": "bncli.parts",
}

#: Public names spelled otherwise in their module.
_ATTRIBUTES = {"merge": "merge_parts"}

if TYPE_CHECKING:
    from bncli.layer import BatchNormalization, FitSummary, load
    from bncli.parts import fit_part
    from bncli.parts import merge_parts as merge


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bncli' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), _ATTRIBUTES.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
