"""Legacy ``.h5`` files: Keras 2, tf.keras, and Keras 3's ``model.save("m.h5")``.

A root attribute ``model_config`` and one group per layer under
``model_weights`` (at the root for weights-only files), datasets named by
variable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bncli.errors import (
    StateError,
    UnsupportedLayerError,
)
from bncli.keras_compat.config import normalize_batchnorm_config
from bncli.keras_compat.graph import find_batchnorms
from bncli.keras_compat.hdf5_reading import attr_strings, child_of, group_of, read_array
from bncli.keras_compat.records import RENORM_VARIABLES, VARIABLE_NAMES, KerasBatchNorm
from bncli.keras_compat.variables import layer_record, unsupported_record

__all__ = [
    "read_legacy",
    "variable_kind",
]


def variable_kind(weight_name: str) -> str:
    """``"model/bn/gamma:0"`` -> ``"gamma"``."""
    return re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])


def _owning_layer(weight_name: str) -> str:
    """``"model/bn/gamma:0"`` -> ``"bn"`` (the layer that made the variable)."""
    parts = weight_name.split("/")
    return parts[-2] if len(parts) >= 2 else ""


def _legacy_layer_weights(
    layer_group: h5py.Group, owner: str | None, layer: str, path: Path
) -> tuple[dict[str, np.ndarray], str]:
    """Read the BN variables of one layer group (only ``owner``'s if given).

    Returns:
        The variables by kind, and the group holding them relative to
        ``layer_group`` (``"inner/inner_bn"`` for ``"inner/inner_bn/gamma"``).
    """
    variables: dict[str, np.ndarray] = {}
    folder = ""
    for weight_name in attr_strings(layer_group, "weight_names", path):
        if owner is not None and _owning_layer(weight_name) != owner:
            continue
        kind = variable_kind(weight_name)
        if kind in variables:
            raise StateError(f"layer {layer!r} has two {kind} weights", path=path)
        dataset = child_of(layer_group, weight_name, path)
        variables[kind] = read_array(dataset, f"{layer_group.name}/{weight_name}", path)
        folder = weight_name.rpartition("/")[0]
    return variables, folder


def _is_batchnorm_weights(kinds: set[str]) -> bool:
    return {"moving_mean", "moving_variance"} <= kinds and kinds <= (
        set(VARIABLE_NAMES) | RENORM_VARIABLES
    )


def read_legacy(
    root: h5py.Group,
    root_path: str,
    model: Any,
    path: Path,
    hints: dict[str, bool | None],
) -> list[KerasBatchNorm]:
    """The BatchNormalization layers of a legacy ``.h5`` (with ``model`` its config, or None)."""
    layer_names = attr_strings(root, "layer_names", path)
    prefix = f"{root_path}/" if root_path else ""
    if model is None:
        return _read_legacy_weights_only(root, prefix, layer_names, path, hints)
    layers = []
    for found in find_batchnorms(model, path):
        top = found.outer[0] if found.outer else found.name
        if top not in layer_names:
            raise StateError(
                f"layer {top!r} of the model config has no weights group", path=path
            )
        group = group_of(root, top, path)
        owner = found.name if found.outer else None
        variables, folder = _legacy_layer_weights(group, owner, found.name, path)
        if not variables:
            raise StateError(
                f"layer {found.name!r} has no weights in {group.name}", path=path
            )
        rank = len(found.input_shape) if found.input_shape is not None else None
        file_config = found.entry.get("config") or {}
        where = f"{prefix}{top}/{folder}" if found.outer else f"{prefix}{top}"
        try:
            config = normalize_batchnorm_config(
                file_config,
                input_rank=rank,
                class_name=found.entry["class_name"],
                path=path,
            )
        except UnsupportedLayerError as problem:
            layers.append(
                unsupported_record(
                    file_config["name"],
                    where,
                    file_config,
                    variables,
                    found.input_shape,
                    problem,
                    path,
                )
            )
            continue
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
    return layers


def _read_legacy_weights_only(
    root: h5py.Group,
    prefix: str,
    layer_names: list[str],
    path: Path,
    hints: dict[str, bool | None],
) -> list[KerasBatchNorm]:
    layers = []
    for top in layer_names:
        group = group_of(root, top, path)
        weight_names = attr_strings(group, "weight_names", path)
        owners: dict[str, set[str]] = {}
        for weight_name in weight_names:
            owners.setdefault(_owning_layer(weight_name), set()).add(
                variable_kind(weight_name)
            )
        candidates = [o for o, kinds in owners.items() if _is_batchnorm_weights(kinds)]
        for owner in candidates:
            if len(owners) == 1 and (
                owner in ("", top) or not weight_names[0].startswith(f"{top}/")
            ):
                # The group holds one layer's weights: it is that layer, even
                # where tf.keras named its variables otherwise.
                name, only = top, None
            else:
                # A nested model's group: the owner names the inner layer.
                name, only = owner, owner
            variables, folder = _legacy_layer_weights(group, only, name, path)
            where = f"{prefix}{top}" if only is None else f"{prefix}{top}/{folder}"
            layers.append(layer_record(name, where, None, variables, None, path))
    return layers
