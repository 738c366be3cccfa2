"""Keras model configs: finding the BatchNormalization layers and their input shapes.

Walks a serialized model (Functional, Sequential, nested models), bounded in
depth, and works out each BatchNormalization layer's input shape from its
build config, Keras 3 node shapes, or by propagation through layers that keep
or change shapes in known ways.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bncli.errors import (
    StateError,
)
from bncli.keras_compat.records import BATCHNORM_CLASSES, MAX_DEPTH, MAX_RANK, Shape

__all__ = ["FoundLayer", "find_batchnorms", "find_custom_layers", "snake_case"]


@dataclasses.dataclass
class FoundLayer:
    """A BatchNormalization layer located in a model config."""

    entry: dict[str, Any]
    name: str
    weights_path: (
        str  # Keras 3 path, e.g. "layers/sequential/layers/batch_normalization"
    )
    outer: tuple[str, ...]  # names of the models around it, outermost first
    input_shape: Shape | None


def snake_case(name: str) -> str:
    # keras.src.utils.naming.to_snake_case
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_name(entry: Mapping[str, Any]) -> str:
    name = entry.get("name")
    if not isinstance(name, str):
        config = entry.get("config")
        name = config.get("name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else ""


def _model_layers(entry: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    config = entry.get("config")
    if not isinstance(config, dict):
        return None
    layers = config.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        return None
    return layers


#: Config keys every BatchNormalization has: a subclass of it keeps them.
_BATCHNORM_KEYS = frozenset(
    {"momentum", "epsilon", "moving_mean_initializer", "moving_variance_initializer"}
)


def _is_batchnorm(entry: Mapping[str, Any]) -> bool:
    """A BatchNormalization layer, or a subclass of one (by its config's keys)."""
    if entry.get("class_name") in BATCHNORM_CLASSES:
        return True
    config = entry.get("config")
    return isinstance(config, dict) and _BATCHNORM_KEYS <= set(config)


def _is_custom(entry: Mapping[str, Any]) -> bool:
    """A layer of a class registered outside Keras."""
    module = entry.get("module")
    return bool(entry.get("registered_name")) or (
        isinstance(module, str) and not module.startswith("keras")
    )


def find_custom_layers(model: Any, path: Path) -> list[tuple[str, str]]:
    """``(name, weights path)`` of the custom layers of a model (not models, not BN)."""
    customs: list[tuple[str, str]] = []
    if isinstance(model, dict) and _model_layers(model) is not None:
        _walk_layers(model, "", (), [], 0, path, customs)
    return customs


def find_batchnorms(model: Any, path: Path) -> list[FoundLayer]:
    """The BatchNormalization layers of a serialized model, outermost first."""
    if not isinstance(model, dict) or not isinstance(model.get("class_name"), str):
        raise StateError("the model config is not a serialized Keras object", path=path)
    if _is_batchnorm(model):
        # A bare layer saved with layer.save(): its variables are at the root.
        return [FoundLayer(model, _layer_name(model), "", (), _build_shape(model))]
    found: list[FoundLayer] = []
    _walk_layers(model, "", (), found, 0, path)
    return found


def _walk_layers(
    model: dict[str, Any],
    prefix: str,
    outer: tuple[str, ...],
    found: list[FoundLayer],
    depth: int,
    path: Path,
    customs: list[tuple[str, str]] | None = None,
) -> None:
    if depth > MAX_DEPTH:
        raise StateError(f"models nested over {MAX_DEPTH} deep", path=path)
    layers = _model_layers(model)
    if layers is None:
        return
    sequential = model.get("class_name") == "Sequential"
    shapes = _propagate(model, depth)[0]
    counters: dict[str, int] = {}
    for index, entry in enumerate(layers):
        class_name = entry.get("class_name")
        if not isinstance(class_name, str):
            raise StateError("a layer of the model config has no class_name", path=path)
        if sequential and class_name == "InputLayer":
            continue  # Sequential.layers leaves its InputLayer out
        snake = snake_case("Functional" if class_name == "Model" else class_name)
        k = counters.get(snake, 0)
        counters[snake] = k + 1
        segment = snake if k == 0 else f"{snake}_{k}"
        weights_path = f"{prefix}layers/{segment}"
        if _is_batchnorm(entry):
            found.append(
                FoundLayer(
                    entry, _layer_name(entry), weights_path, outer, shapes[index]
                )
            )
        elif _model_layers(entry) is not None:
            _walk_layers(
                entry,
                f"{weights_path}/",
                (*outer, _layer_name(entry)),
                found,
                depth + 1,
                path,
                customs,
            )
        elif customs is not None and _is_custom(entry):
            customs.append((_layer_name(entry), weights_path))


#: Layers whose output shape is their input shape.
_SAME_SHAPE = frozenset(
    {
        "BatchNormalization", "SyncBatchNormalization", "LayerNormalization",
        "GroupNormalization", "UnitNormalization", "Dropout", "SpatialDropout1D",
        "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise",
        "AlphaDropout", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU",
        "Softmax", "ThresholdedReLU", "ActivityRegularization", "Masking",
        "Rescaling", "Normalization",
    }
)  # fmt: skip


#: Layers that keep the rank and set (conv) or keep (pooling) the channels.
_SAME_RANK = re.compile(
    r"^(Conv[123]D|Conv[123]DTranspose|Convolution[123]D|SeparableConv[12]D|"
    r"DepthwiseConv[12]D|(Max|Average)Pooling[123]D|UpSampling[123]D|"
    r"ZeroPadding[123]D|Cropping[123]D|LocallyConnected[12]D)$"
)


_GLOBAL_POOLING = re.compile(r"^Global(Max|Average)Pooling[123]D$")


def _as_shape(value: Any) -> Shape | None:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_RANK:
        return None
    shape: list[int | None] = []
    for dim in value:
        if dim is None:
            shape.append(None)
        elif isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0:
            shape.append(dim)
        else:
            return None
    return tuple(shape)


def _build_shape(entry: Mapping[str, Any]) -> Shape | None:
    build = entry.get("build_config")
    if isinstance(build, dict):
        return _as_shape(build.get("input_shape"))
    return None


def _node_shape(entry: Mapping[str, Any]) -> Shape | None:
    """The input shape of a Keras 3 functional node (a ``__keras_tensor__``)."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list) or not nodes or not isinstance(nodes[0], dict):
        return None
    args = nodes[0].get("args")
    if not isinstance(args, list) or not args or not isinstance(args[0], dict):
        return None
    tensor = args[0]
    if tensor.get("class_name") != "__keras_tensor__":
        return None
    config = tensor.get("config")
    return _as_shape(config.get("shape")) if isinstance(config, dict) else None


def _inbound_name(entry: Mapping[str, Any]) -> str | None:
    """The layer feeding a Keras 2 functional node: ``[[["dense", 0, 0, {}]]]``."""
    nodes = entry.get("inbound_nodes")
    try:
        name = nodes[0][0][0]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return None
    return name if isinstance(name, str) else None


def _declared_input(entry: Mapping[str, Any]) -> Shape | None:
    config = entry.get("config")
    if not isinstance(config, dict):
        return None
    for key in ("batch_shape", "batch_input_shape"):
        shape = _as_shape(config.get(key))
        if shape is not None:
            return shape
    return None


def _output_shape(
    entry: Mapping[str, Any], shape: Shape | None, depth: int
) -> Shape | None:
    """The output shape of a common layer, as far as its config tells it."""
    class_name = entry.get("class_name")
    config = entry.get("config")
    if not isinstance(class_name, str) or not isinstance(config, dict):
        return None
    if class_name == "InputLayer":
        return _declared_input(entry)
    if class_name == "Reshape":
        target = config.get("target_shape")
        if not isinstance(target, list | tuple):
            return None
        dims = _as_shape([None if d == -1 else d for d in target])
        batch = shape[0] if shape else None
        return (batch, *dims) if dims is not None else None
    if _model_layers(entry) is not None:
        return _propagate(entry, depth + 1)[1]
    if shape is None:
        return None
    if class_name in _SAME_SHAPE:
        return shape
    if class_name == "Dense":
        units = config.get("units")
        return (*shape[:-1], units) if isinstance(units, int) else None
    channels_first = config.get("data_format") == "channels_first"
    channel = 1 if channels_first else len(shape) - 1
    if _SAME_RANK.match(class_name) and len(shape) >= 3:
        out: list[int | None] = [shape[0]] + [None] * (len(shape) - 1)
        filters = config.get("filters")
        if "Depthwise" in class_name:
            multiplier = config.get("depth_multiplier", 1)
            channels = shape[channel]
            if isinstance(channels, int) and isinstance(multiplier, int):
                out[channel] = channels * multiplier
        elif "Conv" in class_name or "LocallyConnected" in class_name:
            out[channel] = filters if isinstance(filters, int) else None
        else:
            out[channel] = shape[channel]
        return tuple(out)
    if class_name == "Flatten":
        rest = [d for d in shape[1:] if d is not None]
        size = math.prod(rest) if len(rest) == len(shape) - 1 else None
        return (shape[0], size)
    if _GLOBAL_POOLING.match(class_name) and len(shape) >= 3:
        if config.get("keepdims"):
            kept: list[int | None] = [shape[0]] + [1] * (len(shape) - 1)
            kept[channel] = shape[channel]
            return tuple(kept)
        return (shape[0], shape[channel])
    return None


def _output_layer_name(config: Mapping[str, Any]) -> str | None:
    """The first output of a functional config: Keras 3 ``["bn", 0, 0]``, Keras 2
    ``[["bn", 0, 0]]``."""
    outputs = config.get("output_layers")
    while isinstance(outputs, list) and outputs and isinstance(outputs[0], list):
        outputs = outputs[0]
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], str):
        return outputs[0]
    return None


def _propagate(
    model: Mapping[str, Any], depth: int = 0
) -> tuple[list[Shape | None], Shape | None]:
    """The input shape of each layer of a model config, and the model's output
    shape, where the config tells them.

    A Keras 3 ``.keras`` config gives every layer's ``build_config``; legacy
    ``.h5`` configs do not, so shapes are carried from the model's input
    through the layers whose output shape follows from their config (Keras 3
    functional nodes also record their input shapes).
    """
    layers = _model_layers(model) or []
    config = model.get("config")
    if depth > MAX_DEPTH or not isinstance(config, dict):
        return [None] * len(layers), None
    sequential = model.get("class_name") == "Sequential"
    shapes: list[Shape | None] = [None] * len(layers)
    outputs: dict[str, Shape | None] = {}
    current: Shape | None = None
    if sequential:
        current = _as_shape(config.get("build_input_shape"))
        if current is None and layers:
            current = _declared_input(layers[0])
    for index, entry in enumerate(layers):
        shape = _build_shape(entry) or _node_shape(entry)
        if shape is None:
            if sequential:
                shape = current
            else:
                source = _inbound_name(entry)
                shape = outputs.get(source) if source is not None else None
        if entry.get("class_name") == "InputLayer":
            output = _declared_input(entry)
        else:
            shapes[index] = shape
            output = _output_shape(entry, shape, depth)
        outputs[_layer_name(entry)] = output
        current = output
    if sequential:
        return shapes, current
    name = _output_layer_name(config)
    return shapes, outputs.get(name) if name is not None else None
