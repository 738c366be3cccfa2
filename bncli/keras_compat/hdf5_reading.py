"""Reading Keras HDF5 files safely: hard links only, bounded sizes and walks.

Every group, attribute and dataset of a Keras file is reached through these
helpers, which refuse soft and external links, datasets stored outside the
file, and more values per file than a budget allows.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5py import h5a, h5d, h5g, h5l, h5t

from bncli.errors import (
    StateError,
)
from bncli.io.hdf5 import check_dataset, plain_child
from bncli.limits import MAX_CHANNELS

__all__ = [
    "attr_strings",
    "attr_text",
    "child_of",
    "group_of",
    "read_array",
    "read_budget",
    "read_plain_vars",
    "read_plain_vector",
]


def group_of(parent: h5py.Group, name: str, path: Path) -> h5py.Group:
    """The group at ``name`` below ``parent``, following hard links only."""
    obj = child_of(parent, name, path)
    if not isinstance(obj, h5py.Group):
        raise StateError(f"{parent.name}/{name} is not a group", path=path)
    return obj


def child_of(parent: h5py.Group, name: str, path: Path) -> h5py.Group | h5py.Dataset:
    """The object at ``name`` below ``parent``, following hard links only."""
    return plain_child(parent, name, path)


#: Values a model file may make bncli read in all, over every layer: a
#: crafted file can hard-link one large dataset into thousands of layers.
_MAX_VALUES_READ = 1 << 25


_values_left: contextvars.ContextVar[list[int]] = contextvars.ContextVar("_values_left")


@contextlib.contextmanager
def read_budget() -> Iterator[None]:
    """Bound the values read from one file (see :data:`_MAX_VALUES_READ`)."""
    token = _values_left.set([_MAX_VALUES_READ])
    try:
        yield
    finally:
        _values_left.reset(token)


def _spend_values(values: int, where: str, path: Path) -> None:
    left = _values_left.get(None)
    if left is None:
        return
    left[0] -= values
    if left[0] < 0:
        raise StateError(
            f"{where}: the file's BatchNormalization variables hold more than "
            f"{_MAX_VALUES_READ:,} values in all; refused as a crafted file",
            path=path,
        )


def attr_text(obj: h5py.HLObject, name: str) -> str | None:
    """An attribute of ``obj`` as text, or None if absent or not text."""
    if name not in obj.attrs:
        return None
    value = obj.attrs[name]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None


def attr_strings(obj: h5py.HLObject, name: str, path: Path) -> list[str]:
    """A list-of-strings attribute, joined from ``name0``, ``name1``... if chunked."""
    if name in obj.attrs:
        chunks = [obj.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in obj.attrs:
            chunks.append(obj.attrs[f"{name}{len(chunks)}"])
    values: list[str] = []
    for chunk in chunks:
        array = np.asarray(chunk)
        if array.size == 0:
            continue
        for item in array.reshape(-1):
            if isinstance(item, bytes | np.bytes_):
                values.append(bytes(item).decode("utf-8", errors="replace"))
            elif isinstance(item, str):
                values.append(item)
            else:
                raise StateError(
                    f"attribute {name!r} of {obj.name} is not a list of names",
                    path=path,
                )
    return values


#: Datasets a ``vars`` group may hold for the low-level path (BatchNormalization
#: has 2 to 4; anything more is for the checked path to judge).
_PLAIN_VARS_MAX = 16


def read_plain_vars(
    file: h5py.File, vars_path: str, path: Path
) -> tuple[str | None, list[np.ndarray]] | None:
    """A layer's ``vars`` group in the common case, through h5py's low-level calls.

    ``(its "name" attribute or None, [datasets 0..n-1])`` when every link on
    the way is hard, the group holds exactly the datasets ``0``..``n-1`` and
    each is a plain vector (:func:`read_plain_vector`). None for anything
    else (a missing group, a soft link, other members, a name that is not
    one string): the checked path, :func:`group_of`, :func:`attr_text` and
    :func:`read_array`, then reads it or says why not. A third of the
    high-level calls' cost: a ResNet's 53 layers are read in about 30 ms,
    most of it libhdf5's own parsing.
    """
    try:
        group = h5g.open(file.id, b"/")
        for part in vars_path.split("/"):
            key = part.encode()
            links = group.links
            if not links.exists(key) or links.get_info(key).type != h5l.TYPE_HARD:
                return None
            group = h5g.open(group, key)  # a dataset here: an error, None
        count = group.get_num_objs()
        if count > _PLAIN_VARS_MAX:
            return None
        name: str | None = None
        if h5a.exists(group, b"name"):
            attr = h5a.open(group, b"name")
            if attr.shape != () or h5t.check_string_dtype(attr.dtype) is None:
                return None
            value = np.empty((), attr.dtype)
            attr.read(value)
            text = value[()]
            if isinstance(text, bytes):
                text = text.decode("utf-8", errors="replace")
            if not isinstance(text, str):
                return None
            name = text
    except (KeyError, ValueError, TypeError, OSError, RuntimeError):
        return None
    arrays = []
    for i in range(count):
        values = read_plain_vector(group, str(i), f"/{vars_path}/{i}", path)
        if values is None:
            return None
        arrays.append(values)
    return name, arrays


def read_plain_vector(
    group: Any, name: str, where: str, path: Path
) -> np.ndarray | None:
    """The common case of :func:`read_array`, through h5py's low-level calls.

    ``group`` is a low-level group (``h5py.h5g.GroupID``). A hard-linked 1-D
    dataset of floats stored in the file itself, of at most ``MAX_CHANNELS``
    values: read with a handful of library calls, about a third of the
    high-level path's cost (a ResNet has 212 such variables). None for
    anything else (a missing or soft link, a group, external or virtual
    storage, another shape or dtype): the checked path, :func:`child_of` and
    :func:`read_array`, then reads it or says why not.
    """
    key = name.encode()
    links = group.links
    if not links.exists(key) or links.get_info(key).type != h5l.TYPE_HARD:
        return None
    try:
        dataset = h5d.open(group, key)
    except (KeyError, ValueError, TypeError, OSError):
        return None  # not a dataset
    plist = dataset.get_create_plist()
    if plist.get_external_count() > 0 or plist.get_layout() == h5d.VIRTUAL:
        return None
    space = dataset.get_space()
    if space.get_simple_extent_ndims() != 1:
        return None
    (size,) = space.get_simple_extent_dims()
    dtype = dataset.dtype
    if size > MAX_CHANNELS or dtype.kind != "f":
        return None
    _spend_values(size, where, path)
    values = np.empty(size, dtype=dtype)
    if size:
        dataset.read(space, space, values)
    return values


def read_array(dataset: Any, where: str, path: Path) -> np.ndarray:
    """A checked BatchNormalization variable: 1-D, bounded, in its stored dtype."""
    check_dataset(dataset, where, path, max_elements=MAX_CHANNELS)
    shape: tuple[int, ...] = tuple(dataset.shape or ())
    if len(shape) != 1:
        raise StateError(
            f"{where} has shape {dataset.shape}; a BatchNormalization variable is 1-D",
            path=path,
        )
    _spend_values(shape[0], where, path)
    dtype = dataset.dtype
    # Keras stores bfloat16 as 2-byte opaque values marked by a "dtype"
    # attribute: read only for such values (an attribute costs a lookup).
    if dtype.itemsize == 2 and dtype.kind == "V":
        if attr_text(dataset, "dtype") == "bfloat16":
            import ml_dtypes  # only for bfloat16: importing it costs 0.5 s

            return np.asarray(dataset[()]).view(ml_dtypes.bfloat16)
    if dtype.kind != "f":
        raise StateError(
            f"{where} holds {dtype}, not floating-point numbers", path=path
        )
    return np.asarray(dataset[()])
