"""Keras 3 weights: the ``model.weights.h5`` member of a ``.keras`` archive and ``.weights.h5`` files.

Variables live at ``layers/<snake_case(ClassName)>[_k]/vars/0..n``: paths come
from classes, not layer names, so they are matched to the config's layers in
Keras's own order.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bncli.errors import (
    StateError,
    UnsupportedLayerError,
)
from bncli.keras_compat.config import normalize_batchnorm_config
from bncli.keras_compat.graph import FoundLayer, find_batchnorms, find_custom_layers
from bncli.keras_compat.hdf5_reading import (
    attr_text,
    child_of,
    group_of,
    read_array,
    read_plain_vars,
    read_plain_vector,
)
from bncli.keras_compat.records import MAX_DEPTH, MAX_GROUPS, KerasBatchNorm
from bncli.keras_compat.variables import (
    expected_names,
    layer_record,
    name_variables,
    positional_variables,
    unsupported_record,
)

__all__ = ["read_bare_weights", "read_with_config", "vars_group", "vars_path"]


def vars_path(weights_path: str) -> str:
    """Where a layer's variables are below its weights path (Keras 3's spelling)."""
    return f"{weights_path}/vars" if weights_path else "vars"


def vars_group(f: h5py.File, weights_path: str, path: Path) -> h5py.Group:
    """The ``vars`` group of a layer, with Keras 2.13's alternative spelling."""
    candidates = [vars_path(weights_path)]
    if weights_path.startswith("layers/"):
        # Keras 2.13 to 2.15 .keras files: "_layer_checkpoint_dependencies".
        candidates.append(
            weights_path.replace("layers", "_layer_checkpoint_dependencies") + "/vars"
        )
    for candidate in candidates:
        try:
            return group_of(f, candidate, path)
        except StateError:
            continue
    raise StateError(
        f"the weights have no {candidates[0]} group: the file does not match "
        "its config",
        path=path,
    )


def _vars_arrays(group: h5py.Group, path: Path) -> list[np.ndarray]:
    keys = list(group.keys())
    if sorted(keys, key=lambda k: int(k) if k.isdigit() else -1) != [
        str(i) for i in range(len(keys))
    ]:
        raise StateError(
            f"{group.name} holds {sorted(keys)}, not datasets 0..n-1", path=path
        )
    arrays = []
    for i in range(len(keys)):
        where = f"{group.name}/{i}"
        values = read_plain_vector(group.id, str(i), where, path)
        if values is None:
            values = read_array(child_of(group, str(i), path), where, path)
        arrays.append(values)
    return arrays


def _layer_arrays(
    f: h5py.File, found: FoundLayer, name: str, path: Path
) -> list[np.ndarray]:
    """The datasets of a layer's ``vars`` group, which must carry its name."""
    plain = read_plain_vars(f, vars_path(found.weights_path), path)
    if plain is not None:
        stored, arrays = plain
    else:
        group = vars_group(f, found.weights_path, path)
        stored = attr_text(group, "name")
        arrays = _vars_arrays(group, path)
    if stored is not None and stored != name:
        raise StateError(
            f"{found.weights_path} holds layer {stored!r}, the config says "
            f"{name!r}: the weights do not match the config",
            path=path,
        )
    return arrays


def read_with_config(
    model: Any, f: h5py.File, path: Path, hints: dict[str, bool | None]
) -> list[KerasBatchNorm]:
    """The layers a model config names, with their variables from a Keras 3 weights file."""
    layers = []
    for found in find_batchnorms(model, path):
        rank = len(found.input_shape) if found.input_shape is not None else None
        file_config = found.entry.get("config") or {}
        where = found.weights_path or "vars"
        problem: UnsupportedLayerError | None = None
        config: dict[str, Any] | None = None
        try:
            config = normalize_batchnorm_config(
                file_config,
                input_rank=rank,
                class_name=found.entry["class_name"],
                path=path,
            )
        except UnsupportedLayerError as exc:
            problem = exc
        # Normalizing checks first that the config is a dict with a string name.
        name = file_config["name"]
        arrays = _layer_arrays(f, found, name, path)
        if problem is None and len(arrays) > 4:
            problem = UnsupportedLayerError(
                f"layer {name!r} has {len(arrays)} variables: "
                "renormalization is not supported",
                reason=f"batch renormalization ({len(arrays)} variables)",
                path=path,
            )
        if problem is not None:
            variables = positional_variables(arrays, file_config)
            layers.append(
                unsupported_record(
                    name,
                    where,
                    file_config,
                    variables,
                    found.input_shape,
                    problem,
                    path,
                )
            )
            continue
        assert config is not None  # normalizing returned, or raised the problem
        expected = expected_names(config["center"], config["scale"])
        if len(arrays) != len(expected):
            raise StateError(
                f"layer {config['name']!r} stores {len(arrays)} variables, its "
                f"config needs {len(expected)} ({', '.join(expected)})",
                path=path,
            )
        variables = dict(zip(expected, arrays, strict=True))
        layers.append(
            layer_record(
                config["name"],
                where,
                config,
                variables,
                found.input_shape,
                path,
                file_config=file_config,
            )
        )
    layers.extend(_inside_custom_layers(model, f, path))
    return layers


def _inside_custom_layers(model: Any, f: h5py.File, path: Path) -> list[KerasBatchNorm]:
    """BatchNormalization layers that custom layers hold as attributes.

    Their configs are not in the file (a custom layer's config is its own), so
    they are found by their weights' layout, a ``vars`` group of exactly four
    1-D float arrays of one length (gamma, beta, moving mean and variance),
    and listed as unsupported, saying so: never silently missed.
    """
    found = []
    visits = [MAX_GROUPS]
    for owner, weights_path in find_custom_layers(model, path):
        if weights_path not in f:
            continue
        for where, group in _scan_weights_by_layout(
            f[weights_path], weights_path, 0, path, visits
        ):
            if sorted(group.keys()) != ["0", "1", "2", "3"]:
                continue
            shapes = {getattr(child_of(group, k, path), "shape", None) for k in group}
            if len(shapes) != 1 or len(next(iter(shapes)) or ()) != 1:
                continue  # not four 1-D variables of one length
            arrays = _vars_arrays(group, path)
            if any(a.dtype.kind not in "fV" for a in arrays):
                continue
            name = where.removeprefix(weights_path.rpartition("/")[0] + "/")
            problem = UnsupportedLayerError(
                f"layer {name!r} is held inside custom layer {owner!r}: its config "
                "is not in the file",
                reason=f"inside custom layer {owner!r} (found by its weights; no config)",
                path=path,
            )
            found.append(
                unsupported_record(
                    name.replace("layers/", ""),
                    where,
                    None,
                    positional_variables(arrays, None),
                    None,
                    problem,
                    path,
                )
            )
    return found


def _scan_weights_by_layout(
    group: h5py.Group, prefix: str, depth: int, path: Path, visits: list[int]
) -> Iterator[tuple[str, h5py.Group]]:
    """``(path, vars group)`` of every group below ``group`` that has a ``vars``."""
    if depth > MAX_DEPTH:
        raise StateError(f"groups nested over {MAX_DEPTH} deep", path=path)
    for key in sorted(group.keys()):
        visits[0] -= 1
        if visits[0] < 0:
            raise StateError(
                f"more than {MAX_GROUPS:,} groups to walk; refused as a crafted file",
                path=path,
            )
        if key == "vars" or not isinstance(group.get(key, getlink=True), h5py.HardLink):
            continue
        child = group[key]
        if not isinstance(child, h5py.Group):
            continue
        here = f"{prefix}/{key}"
        if "vars" in child and isinstance(
            child.get("vars", getlink=True), h5py.HardLink
        ):
            yield here, group_of(child, "vars", path)
        yield from _scan_weights_by_layout(child, here, depth + 1, path, visits)


_BN_SEGMENT = re.compile(r"^(sync_)?batch_normalization(_\d+)?$")


def _natural_key(name: str) -> tuple[str, int]:
    match = re.match(r"^(.*?)(?:_(\d+))?$", name)
    assert match is not None
    return (match.group(1), int(match.group(2) or 0))


def _scan_weights(
    group: h5py.Group,
    prefix: str,
    depth: int,
    path: Path,
    visits: list[int] | None = None,
) -> Iterator[tuple[str, h5py.Group]]:
    """Yield (weights path, vars group) of every batch_normalization[_k] group.

    At most :data:`MAX_GROUPS` groups are visited: hard links can make a
    small file a graph whose paths are exponential in its depth.
    """
    if visits is None:
        visits = [MAX_GROUPS]
    if depth > MAX_DEPTH:
        raise StateError(f"groups nested over {MAX_DEPTH} deep", path=path)
    visits[0] -= 1
    if visits[0] < 0:
        raise StateError(
            f"more than {MAX_GROUPS:,} groups to walk; refused as a crafted file",
            path=path,
        )
    for key in sorted(group.keys(), key=_natural_key):
        if key == "vars" or not isinstance(group.get(key, getlink=True), h5py.HardLink):
            continue
        child = group[key]
        if not isinstance(child, h5py.Group):
            continue
        here = f"{prefix}{key}"
        if _BN_SEGMENT.match(key) and "vars" in child:
            yield here, group_of(child, "vars", path)
        else:
            yield from _scan_weights(child, f"{here}/", depth + 1, path, visits)


def read_bare_weights(
    f: h5py.File, path: Path, hints: dict[str, bool | None]
) -> list[KerasBatchNorm]:
    """The layers of a ``.weights.h5`` file without a config, found by their paths."""
    layers = []
    for where, group in _scan_weights(f, "", 0, path):
        name = attr_text(group, "name") or where
        arrays = _vars_arrays(group, path)
        try:
            variables = name_variables(
                arrays, name, hints["center"], hints["scale"], path
            )
        except UnsupportedLayerError as problem:
            variables = positional_variables(arrays, None)
            layers.append(
                unsupported_record(name, where, None, variables, None, problem, path)
            )
            continue
        layers.append(layer_record(name, where, None, variables, None, path))
    return layers
