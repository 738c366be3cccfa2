"""Which Keras format a path holds, by its magic bytes before its name.

A ``.keras`` zip (or an unzipped ``.keras`` folder), a Keras 3 ``.weights.h5``,
or a legacy ``.h5``; bncli's own states are HDF5 too and are told apart by
their sealed user block.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import h5py

from bncli.errors import (
    BncliError,
)
from bncli.io.detect import HDF5_SIGNATURE, SEAL_MAGIC, ZIP_MAGICS

__all__ = ["hdf5_kind", "is_keras_file", "sniff_keras_format"]


def sniff_keras_format(path: Path) -> str:
    """Return "dir", "zip", "hdf5" or "other" from the file's content."""
    if path.is_dir():
        return "dir"
    with open(path, "rb") as f:
        head = f.read(len(SEAL_MAGIC))
    if head[:4] in ZIP_MAGICS:
        return "zip"
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(SEAL_MAGIC):  # told by its user block: never parsed here
        return "state"
    # An HDF5 file may start after a user block (512, 1024, ... bytes).
    try:
        if h5py.is_hdf5(os.fspath(path)):
            return "hdf5"
    except OSError:
        pass
    return "other"


def hdf5_kind(f: h5py.File) -> str | None:
    """Classify an open HDF5 file: "legacy", "legacy_weights", "weights" or None."""
    attrs = f.attrs
    if "model_config" in attrs:
        return "legacy"
    if "layer_names" in attrs or "layer_names0" in attrs:
        return "legacy_weights"
    if "format" in attrs:  # a bncli state, or another tool's file
        return None
    for key in ("layers", "vars", "_layer_checkpoint_dependencies"):
        link = f.get(key, getlink=True)
        if isinstance(link, h5py.HardLink) and isinstance(f.get(key), h5py.Group):
            return "weights"
    return None


def is_keras_file(path: str | os.PathLike[str]) -> bool:
    """Tell cheaply whether ``path`` is a Keras model or weights file.

    True for ``.keras`` zips (and unzipped ``.keras`` folders) with a
    ``config.json`` or ``model.weights.h5`` member, and for HDF5 files laid out
    as Keras models or weights (legacy ``.h5``, Keras 3 ``.weights.h5``). False
    for anything else, including bncli states and missing files; never raises.

    Args:
        path: The file to look at.

    Returns:
        Whether the file looks like a Keras file. Its content is not validated.

    Example:
        >>> is_keras_file("does-not-exist.keras")
        False
    """
    target = Path(path)
    try:
        kind = sniff_keras_format(target)
        if kind == "dir":
            return (target / "config.json").is_file()
        if kind == "zip":
            with zipfile.ZipFile(target) as zf:
                names = set(zf.namelist())
            return bool(names & {"config.json", "model.weights.h5"})
        if kind == "hdf5":
            from bncli.io.child import bounded

            def classify() -> bool:
                with h5py.File(target, "r") as f:
                    return hdf5_kind(f) is not None

            keras: bool = bounded(classify, path=target, encode=bool, decode=bool)
            return keras
    except BncliError:
        return False
    except (
        OSError,
        ValueError,
        zipfile.BadZipFile,
        RuntimeError,
        KeyError,  # h5py: a damaged object ("unable to determine object type")
        TypeError,
        AttributeError,
    ):
        return False
    return False
