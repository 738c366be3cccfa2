"""Writing a state's variables into one BatchNormalization layer of a model file.

``export --into``: the output is a copy of the model (``.keras``,
``.weights.h5`` or legacy ``.h5``) in which only that layer's four variables
change, cast to the dtype each is stored in. A ``.keras`` archive's other
members are copied byte for byte; in an HDF5 file only those datasets' values
change. The layer is found by :func:`bncli.keras_compat.files.read_batchnorm_layers`
(by name or path), its datasets located in the file, and the values read
there checked against the reader's before anything is written: a layer is
never written in the wrong place.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bncli.errors import StateError, StateMismatchError
from bncli.io.atomic import atomic_path
from bncli.keras_compat.detect import sniff_keras_format
from bncli.keras_compat.hdf5_reading import child_of, read_array
from bncli.keras_compat.keras3 import vars_group
from bncli.keras_compat.legacy import variable_kind
from bncli.keras_compat.records import MAX_GROUPS, SPOOL_BYTES, KerasBatchNorm
from bncli.keras_compat.variables import expected_names

__all__ = ["Writes", "check_fits", "write_into"]


def check_fits(
    layer: KerasBatchNorm,
    config: Mapping[str, Any],
    channels: int,
    sample_rank: int,
    path: str,
) -> list[str]:
    """Refuse a state that does not fit ``layer`` (exit 4 naming the key).

    Returns:
        Notes for the user: a different momentum, which changes nothing
        written.
    """
    if layer.problem is not None:
        raise StateError(
            f"layer {layer.name!r} cannot be written: {layer.problem.reason}", path=path
        )
    if layer.channels != channels:
        raise StateMismatchError(
            f"channels: the state has {channels}, layer {layer.name!r} has "
            f"{layer.channels}",
            path=path,
        )
    if layer.config is None:  # a weights-only file: its variables tell the rest
        theirs: Mapping[str, Any] = {
            "center": "beta" in layer.variables,
            "scale": "gamma" in layer.variables,
        }
        for key in ("center", "scale"):
            if bool(config[key]) != theirs[key]:
                raise StateMismatchError(
                    f"{key}: the state's is {config[key]}, layer {layer.name!r} has "
                    f"{theirs[key]}",
                    path=path,
                )
        return []
    theirs = layer.config
    rank = sample_rank + 1 if layer.input_shape is None else len(layer.input_shape)
    mine_axis = _axis(config["axis"], sample_rank + 1)
    their_axis = _axis(theirs["axis"], rank)
    if mine_axis != their_axis:
        raise StateMismatchError(
            f"axis: the state's is {config['axis']}, layer {layer.name!r} has "
            f"{theirs['axis']}",
            path=path,
        )
    for key in ("center", "scale"):
        if bool(config[key]) != bool(theirs[key]):
            raise StateMismatchError(
                f"{key}: the state's is {config[key]}, layer {layer.name!r} has "
                f"{theirs[key]}",
                path=path,
            )
    if not math.isclose(
        float(config["epsilon"]), float(theirs["epsilon"]), rel_tol=1e-6
    ):
        raise StateMismatchError(
            f"epsilon: the state's is {config['epsilon']}, layer {layer.name!r} has "
            f"{theirs['epsilon']}",
            path=path,
        )
    notes = []
    if float(config["momentum"]) != float(theirs["momentum"]):
        notes.append(
            f"the state's momentum {config['momentum']} differs from the "
            f"{theirs['momentum']} of layer {layer.name!r}; the layer keeps its own"
        )
    return notes


def _axis(axis: Any, rank: int) -> Any:
    values = axis if isinstance(axis, list) else [axis]
    return sorted(a + rank if a < 0 else a for a in values)


#: Layers and the values to write into each (float64, by variable name; the
#: variables left out keep theirs).
Writes = Sequence[tuple[KerasBatchNorm, Mapping[str, np.ndarray]]]


def write_into(model: str | Path, output: str | Path, writes: Writes) -> None:
    """Write each layer's values into a copy of ``model``, as ``output``.

    ``output`` is replaced atomically; it may be ``model`` itself.
    """
    model, output = Path(model), Path(output)
    kind = sniff_keras_format(model)
    if kind == "zip":
        _write_zip(model, output, writes)
    elif kind == "hdf5":
        with atomic_path(output) as tmp:
            shutil.copyfile(model, tmp)
            with h5py.File(tmp, "r+") as f:
                for layer, values in writes:
                    _write_datasets(f, layer, values, model)
    else:
        raise StateError(
            "export --into writes .keras archives and .h5 files, not folders",
            path=model,
        )


def _write_zip(model: Path, output: Path, writes: Writes) -> None:
    """Copy every member as it is, but the weights, written anew."""
    with zipfile.ZipFile(model) as source, atomic_path(output) as tmp:
        with (
            zipfile.ZipFile(tmp, "w") as target,
            tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as weights,
        ):
            for info in source.infolist():
                if info.filename != "model.weights.h5":
                    target.writestr(info, source.read(info))
                    continue
                with source.open(info) as member:
                    shutil.copyfileobj(member, weights, 1 << 20)
                weights.seek(0)
                with h5py.File(weights, "r+") as f:
                    for layer, values in writes:
                        _write_datasets(f, layer, values, model)
                weights.seek(0)
                with target.open(info, "w") as out:
                    shutil.copyfileobj(weights, out, 1 << 20)


def _write_datasets(
    f: h5py.File, layer: KerasBatchNorm, values: Mapping[str, np.ndarray], path: Path
) -> None:
    datasets = _locate(f, layer, path)
    for name, dataset in datasets.items():
        stored = read_array(dataset, f"{dataset.name}", path)
        if not np.array_equal(
            np.asarray(stored, dtype=np.float64),
            np.asarray(layer.variables[name], dtype=np.float64),
            equal_nan=True,
        ):
            raise StateError(
                f"cannot place layer {layer.name!r}'s {name} in the file: "
                f"{dataset.name} holds other values",
                path=path,
            )
    for name, dataset in datasets.items():
        if name not in values:
            continue
        value = np.asarray(values[name], dtype=np.float64)
        if dataset.dtype.kind == "V":  # bfloat16, stored as 2 raw bytes
            import ml_dtypes

            dataset[...] = value.astype(ml_dtypes.bfloat16).view(dataset.dtype)
        else:
            with np.errstate(over="ignore"):
                dataset[...] = value.astype(dataset.dtype)


def _locate(f: h5py.File, layer: KerasBatchNorm, path: Path) -> dict[str, Any]:
    """The datasets of ``layer``'s variables, by name."""
    names = [
        name
        for name in ("gamma", "beta", "moving_mean", "moving_variance")
        if name in layer.variables
    ]
    if "layers" in f or "vars" in f or "_layer_checkpoint_dependencies" in f:
        group = vars_group(f, "" if layer.path == "vars" else layer.path, path)
        order = expected_names("beta" in layer.variables, "gamma" in layer.variables)
        return {name: child_of(group, str(order.index(name)), path) for name in names}
    # Legacy .h5: the datasets are named by variable, below the layer's group.
    found: dict[str, list[Any]] = {}
    visits = [MAX_GROUPS]

    def walk(group: h5py.Group) -> None:
        for key in group:
            visits[0] -= 1
            if visits[0] < 0:
                raise StateError("too many groups to walk", path=path)
            if not isinstance(group.get(key, getlink=True), h5py.HardLink):
                continue
            child = group[key]
            if isinstance(child, h5py.Group):
                walk(child)
            elif variable_kind(key) in names:
                found.setdefault(variable_kind(key), []).append(child)

    top = child_of(f, layer.path, path)
    if isinstance(top, h5py.Group):
        walk(top)
    if sorted(found) != sorted(names) or any(len(v) != 1 for v in found.values()):
        raise StateError(
            f"cannot place layer {layer.name!r}'s variables in {layer.path}",
            path=path,
        )
    return {name: found[name][0] for name in names}
