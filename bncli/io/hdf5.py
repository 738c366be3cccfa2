"""Safe access to HDF5 files that may be hostile.

An HDF5 file can point outside itself: a soft or external link names another
object or another file, a dataset with *external storage* keeps its bytes in
any local file (a mode-600 key, a FIFO that never answers), a *virtual*
dataset maps other files' datasets. bncli reads states and Keras files with
these functions only: hard links, datasets whose bytes are in the file, and
sizes checked from the metadata before any byte is read.
"""

from __future__ import annotations

import math
import os
from typing import Any

from bncli.errors import StateError

__all__ = ["check_dataset", "plain_child", "read_dataset"]


def plain_child(parent: Any, name: str, path: str | os.PathLike[str]) -> Any:
    """The group or dataset at ``name`` below ``parent``, following hard links only.

    Raises:
        StateError: a part of ``name`` is missing, or is a soft or external link.
    """
    import h5py

    current = parent
    parts = [part for part in name.split("/") if part]
    if not parts:
        raise StateError(f"empty HDF5 path below {parent.name}", path=path)
    for part in parts:
        link = (
            current.get(part, getlink=True) if isinstance(current, h5py.Group) else None
        )
        if link is None:
            raise StateError(f"{parent.name.rstrip('/')}/{name} is missing", path=path)
        if not isinstance(link, h5py.HardLink):
            raise StateError(
                f"{current.name.rstrip('/')}/{part} is a "
                f"{type(link).__name__}; only plain groups and datasets are read",
                path=path,
            )
        current = current[part]
    return current


def check_dataset(
    dataset: Any, where: str, path: str | os.PathLike[str], max_elements: int
) -> None:
    """Refuse a dataset bncli must not read, before reading any of it.

    Raises:
        StateError: not a dataset; external storage or a virtual dataset
            (data outside the file); more than ``max_elements`` elements.
    """
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        raise StateError(f"{where} is not a dataset", path=path)
    # One creation property list for both questions (each of h5py's
    # properties makes its own: the dearest part of reading a small dataset).
    plist = dataset.id.get_create_plist()
    if plist.get_external_count() > 0:
        raise StateError(
            f"{where} keeps its data in external files; bncli reads only data "
            "stored in the file itself",
            path=path,
        )
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise StateError(
            f"{where} is a virtual dataset (its data lives in other files); bncli "
            "reads only data stored in the file itself",
            path=path,
        )
    shape = dataset.shape
    if shape is None or math.prod(shape) > max_elements:
        raise StateError(
            f"{where} has shape {shape}: more than {max_elements:,} values",
            path=path,
        )


def read_dataset(
    dataset: Any, where: str, path: str | os.PathLike[str], max_elements: int
) -> Any:
    """The values of a dataset that :func:`check_dataset` accepts."""
    check_dataset(dataset, where, path, max_elements)
    return dataset[()]
