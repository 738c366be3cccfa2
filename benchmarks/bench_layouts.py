"""The rows of ``make bench`` for the kernel's pace, every layout and inspect.

- a fit of the 1 GiB NPY against one flat ``x.sum()`` over the same mapped
  bytes (the memory's pace on one thread);
- layouts, on 256 MiB float32 files generated once into ``benchmarks/data``:
  channels first ``(N, 64, 8, 8) --axis 1`` against the same bytes as
  channels last ``(N, 8, 8, 64)``; 1,024 and 1 channels against 16;
- the two Keras models that ``bncli inspect`` is timed on: a ResNet50
  ``.keras`` (103 MB, 53 BN layers) and a three-layer model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import data
import numpy as np

LAYOUT_BYTES = 256 << 20


def flat_sum(path: Path) -> None:
    np.load(path, mmap_mode="r").reshape(-1).sum()


def layout_file(name: str, shape_of: Callable[[int], tuple[int, ...]]) -> Path:
    """A float32 NPY of LAYOUT_BYTES, shaped by ``shape_of(values)``, made once."""
    path = data.DATA / f"layout-{name}.npy"
    values = LAYOUT_BYTES // 4
    if path.exists():
        return path
    rng = np.random.default_rng(7)
    pieces = (
        2.0 + rng.standard_normal(min(1 << 24, values - lo), dtype=np.float32)
        for lo in range(0, values, 1 << 24)
    )
    data.write_npy(path, shape_of(values), pieces)
    return path


def layouts() -> dict[str, Path]:
    return {
        "last": layout_file("cl", lambda v: (v // 4096, 8, 8, 64)),
        "first": layout_file("cf", lambda v: (v // 4096, 64, 8, 8)),
        "c16": layout_file("c16", lambda v: (v // 16, 16)),
        "c1024": layout_file("c1024", lambda v: (v // 1024, 1024)),
        "c1": layout_file("c1", lambda v: (v, 1)),
    }


def keras_models() -> tuple[Path, Path]:
    """A ResNet50 ``.keras`` (random weights) and a three-layer one, made once."""
    big = data.DATA / "resnet50.keras"
    small = data.DATA / "three-layers.keras"
    if not (big.exists() and small.exists()):
        code = (
            "import keras; "
            f"keras.applications.ResNet50(weights=None).save({str(big)!r}); "
            "keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), "
            "keras.layers.BatchNormalization(), keras.layers.Dense(2)])"
            f".save({str(small)!r})"
        )
        env = {**os.environ, "KERAS_BACKEND": "numpy"}
        subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return big, small
