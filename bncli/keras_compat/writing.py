"""Writing a state as a Keras 3 model (``.keras``) or weights file (``.weights.h5``).

The layout is Keras 3.15's own: a one-layer Functional model whose
BatchNormalization has the state's config and variables, loadable with no
bncli installed.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bncli.errors import (
    StateError,
)
from bncli.io.atomic import atomic_path
from bncli.keras_compat.config import normalize_batchnorm_config
from bncli.keras_compat.records import KERAS_VERSION_WRITTEN, RENORM_KEYS
from bncli.keras_compat.variables import expected_names

__all__ = ["write_keras_model", "write_weights_h5"]


def _export_config(config: Mapping[str, Any], target: Path) -> dict[str, Any]:
    """The config written into an exported model: the renorm keys left out."""
    normalized = normalize_batchnorm_config(config, path=target)
    # Older Keras (before the renorm keys) refuses unknown keys: leave them out
    # while renorm is off. synchronized=True only loads on TensorFlow, and
    # inference is the same either way (the caller warns).
    for key in RENORM_KEYS:
        normalized.pop(key)
    normalized["synchronized"] = False
    return normalized


#: By name: bfloat16's dtype is ml_dtypes', imported only where it is used.
_WRITABLE_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16"})


def _ordered_variables(
    config: Mapping[str, Any], variables: Mapping[str, np.ndarray], target: Path
) -> list[tuple[str, np.ndarray]]:
    layer = config["name"]
    expected = expected_names(config["center"], config["scale"])
    if sorted(variables) != sorted(expected):
        raise StateError(
            f"layer {layer!r}: variables {sorted(variables)} do not match "
            f"center={config['center']}, scale={config['scale']} "
            f"(which need {sorted(expected)})",
            path=target,
        )
    ordered = []
    lengths = set()
    for name in expected:
        array = np.asarray(variables[name])
        if array.ndim != 1 or array.dtype.name not in _WRITABLE_DTYPES:
            raise StateError(
                f"layer {layer!r}: {name} is {array.dtype} of shape {array.shape}; "
                "expected a 1-D float16/bfloat16/float32/float64 array",
                path=target,
            )
        lengths.add(array.shape[0])
        ordered.append((name, np.ascontiguousarray(array)))
    if len(lengths) != 1 or 0 in lengths:
        raise StateError(
            f"layer {layer!r}: variables of lengths {sorted(lengths)}", path=target
        )
    return ordered


def _write_weights(
    f: h5py.File,
    model_name: str,
    input_name: str,
    layer_name: str,
    ordered: Sequence[tuple[str, np.ndarray]],
) -> None:
    """Write Keras 3.15's weights layout of Functional([InputLayer, BN])."""
    f.create_group("vars").attrs["name"] = model_name
    f.create_group("layers/input_layer/vars").attrs["name"] = input_name
    group = f.create_group("layers/batch_normalization/vars")
    group.attrs["name"] = layer_name
    for index, (_, array) in enumerate(ordered):
        dataset = group.create_dataset(str(index), data=array)
        if array.dtype.name == "bfloat16":
            # h5py stores bfloat16 as 2-byte opaque data; Keras marks it so.
            dataset.attrs["dtype"] = "bfloat16"


def _model_names(config: Mapping[str, Any]) -> tuple[str, str, str]:
    layer = config["name"]
    input_name = "input_layer" if layer != "input_layer" else "input_layer_1"
    model = "functional" if "functional" not in (layer, input_name) else "model"
    return model, input_name, layer


def _compute_dtype(config: Mapping[str, Any]) -> str:
    policy = config["dtype"]["config"]["name"]
    return str(policy).removeprefix("mixed_")


def _model_config(
    config: dict[str, Any], sample_shape: Sequence[int | None]
) -> dict[str, Any]:
    model_name, input_name, layer_name = _model_names(config)
    batch_shape = [None, *sample_shape]
    dtype = _compute_dtype(config)
    input_layer: dict[str, Any] = {
        "module": "keras.layers",
        "class_name": "InputLayer",
        # "ragged" and "optional" are left at their defaults: older Keras
        # InputLayers do not know them.
        "config": {
            "batch_shape": batch_shape,
            "dtype": dtype,
            "sparse": False,
            "name": input_name,
        },
        "registered_name": None,
        "name": input_name,
        "inbound_nodes": [],
    }
    tensor = {
        "class_name": "__keras_tensor__",
        "config": {
            "shape": batch_shape,
            "dtype": dtype,
            "keras_history": [input_name, 0, 0],
        },
    }
    batchnorm = {
        "module": "keras.layers",
        "class_name": "BatchNormalization",
        "config": config,
        "registered_name": None,
        "build_config": {"input_shape": batch_shape},
        "name": layer_name,
        "inbound_nodes": [{"args": [tensor], "kwargs": {"mask": None}}],
    }
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {
            "name": model_name,
            "trainable": True,
            "layers": [input_layer, batchnorm],
            "input_layers": [input_name, 0, 0],
            "output_layers": [layer_name, 0, 0],
        },
        "registered_name": "Functional",
        "build_config": {"input_shape": None},
    }


def _check_sample_shape(
    config: Mapping[str, Any],
    sample_shape: Sequence[int | None],
    channels: int,
    target: Path,
) -> tuple[int | None, ...]:
    """Validate the per-sample shape; None marks a dimension of any size."""
    shape = tuple(sample_shape)
    if not shape or not all(
        d is None
        or (isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0)
        for d in shape
    ):
        raise StateError(
            f"bad per-sample shape {shape}: expected positive ints or None",
            path=target,
        )
    shape = tuple(None if d is None else int(d) for d in shape)
    rank = len(shape) + 1
    axis = config["axis"]
    if not -rank <= axis < rank or axis in (0, -rank):
        raise StateError(
            f"axis {axis} is not a channel axis of inputs shaped (batch, "
            f"{', '.join(map(str, shape))})",
            path=target,
        )
    declared = shape[axis - 1 if axis > 0 else axis]
    if declared != channels:
        raise StateError(
            f"per-sample shape {shape} has {declared} channels on axis {axis}, "
            f"the variables {channels}",
            path=target,
        )
    return shape


def write_keras_model(
    path: str | os.PathLike[str],
    config: dict[str, Any],
    variables: Mapping[str, np.ndarray],
    sample_shape: tuple[int | None, ...],
) -> None:
    """Write a ``.keras`` model: an Input, then one BatchNormalization.

    The archive holds ``metadata.json``, ``config.json`` (a Functional model:
    an InputLayer with ``batch_shape [None, *sample_shape]``, then the layer)
    and ``model.weights.h5``, as Keras 3.15 writes them, so that
    ``keras.saving.load_model`` loads it without bncli. The config leaves out
    the renorm keys and writes ``synchronized: false``.

    Args:
        path: The ``.keras`` file to write (replaced atomically).
        config: The layer's config in :func:`normalize_batchnorm_config` form.
        variables: ``gamma`` (if scale), ``beta`` (if center), ``moving_mean``
            and ``moving_variance``, 1-D arrays of length C in the dtype to
            store (float32 normally; float16, bfloat16, float64 too).
        sample_shape: The shape of one sample, without the batch dimension;
            its channel axis must have C entries.

    Raises:
        StateError: If the config asks for renorm, or the variables do not
            match the config or the sample shape.

    Example:
        >>> write_keras_model("bn.keras", cfg, weights, (5,))  # doctest: +SKIP
    """
    target = Path(path)
    exported = _export_config(config, target)
    ordered = _ordered_variables(exported, variables, target)
    channels = ordered[0][1].shape[0]
    shape = _check_sample_shape(exported, sample_shape, channels, target)
    model_name, input_name, layer_name = _model_names(exported)
    config_json = json.dumps(_model_config(exported, shape))
    metadata_json = json.dumps(
        {
            "keras_version": KERAS_VERSION_WRITTEN,
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
    )
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        _write_weights(f, model_name, input_name, layer_name, ordered)
    with atomic_path(path) as tmp:
        # Keras writes its archives uncompressed (ZIP_STORED) in this order.
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr("metadata.json", metadata_json)
            zf.writestr("config.json", config_json)
            zf.writestr("model.weights.h5", buffer.getvalue())


def write_weights_h5(
    path: str | os.PathLike[str],
    config: dict[str, Any],
    variables: Mapping[str, np.ndarray],
) -> None:
    """Write the Keras 3 weights file of the model :func:`write_keras_model` writes.

    It loads with ``model.load_weights(path)`` into
    ``Sequential([Input(shape), BatchNormalization(**config)])`` or the
    Functional equivalent: Keras matches weights by position
    (``layers/batch_normalization/vars``), not by name.

    Args:
        path: The ``.weights.h5`` file to write (replaced atomically).
        config: The layer's config in :func:`normalize_batchnorm_config` form.
        variables: As for :func:`write_keras_model`.

    Raises:
        StateError: If the config asks for renorm or the variables do not
            match it.

    Example:
        >>> write_weights_h5("bn.weights.h5", cfg, weights)  # doctest: +SKIP
    """
    target = Path(path)
    exported = _export_config(config, target)
    ordered = _ordered_variables(exported, variables, target)
    model_name, input_name, layer_name = _model_names(exported)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_weights(f, model_name, input_name, layer_name, ordered)
