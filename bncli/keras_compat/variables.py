"""BatchNormalization variables as a file holds them: named, checked, made a record.

Matches stored arrays to ``gamma``, ``beta``, ``moving_mean`` and
``moving_variance`` (by name, or by position and the config's center and
scale), checks each is a 1-D float array of one length, and builds the
:class:`KerasBatchNorm` record, or an unsupported one saying why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncli.errors import (
    StateError,
    UnsupportedLayerError,
)
from bncli.keras_compat.records import (
    RENORM_ORDER,
    RENORM_VARIABLES,
    VARIABLE_NAMES,
    KerasBatchNorm,
    Shape,
)

__all__ = [
    "expected_names",
    "layer_record",
    "name_variables",
    "positional_variables",
    "unsupported_record",
]


def name_variables(
    arrays: Sequence[np.ndarray],
    layer: str,
    center: bool | None,
    scale: bool | None,
    path: Path,
) -> dict[str, np.ndarray]:
    """Name datasets "0".."n-1" (Keras 3 order) from center/scale."""
    count = len(arrays)
    if count > 4:
        raise UnsupportedLayerError(
            f"layer {layer!r} has {count} variables: renormalization "
            "(renorm=True) is not supported",
            reason=f"batch renormalization ({count} variables)",
            path=path,
        )
    if count in (2, 4):
        # The count says it all: the hints matter only for 3 variables.
        center = scale = count == 4
    elif count == 3:
        if center is None and scale is None:
            raise UnsupportedLayerError(
                f"layer {layer!r} has 3 variables and the file no config: they "
                "are (gamma, moving_mean, moving_variance) with center=False or "
                "(beta, moving_mean, moving_variance) with scale=False",
                reason="3 variables and no config: gamma or beta is ambiguous",
                path=path,
                hint="say which with center=False or scale=False",
            )
        center = not scale if center is None else center
        scale = not center if scale is None else scale
        if center == scale:
            raise UnsupportedLayerError(
                f"layer {layer!r} has 3 variables, which contradicts "
                f"center={center} and scale={scale}",
                reason=f"3 variables contradict center={center}, scale={scale}",
                path=path,
            )
    else:
        raise StateError(
            f"layer {layer!r} has {count} variables; BatchNormalization has 2 to 4",
            path=path,
        )
    expected = expected_names(center, scale)
    return dict(zip(expected, arrays, strict=True))


def expected_names(center: bool, scale: bool) -> list[str]:
    """The variables a layer of ``center`` and ``scale`` stores, in Keras's order."""
    return [
        name
        for name in VARIABLE_NAMES
        if (name != "gamma" or scale) and (name != "beta" or center)
    ]


def _check_variables(
    variables: Mapping[str, np.ndarray],
    config: Mapping[str, Any] | None,
    layer: str,
    input_shape: Shape | None,
    path: Path,
) -> None:
    """Validate names, ranks, dtypes and lengths against the config.

    Renormalization variables are an :class:`UnsupportedLayerError`, raised
    only once everything else is sound (damage refuses the whole file).
    """
    renorm = sorted(set(variables) & RENORM_VARIABLES)
    unknown = set(variables) - set(VARIABLE_NAMES) - RENORM_VARIABLES
    if unknown:
        raise StateError(
            f"layer {layer!r} has unexpected variables {sorted(unknown)}", path=path
        )
    for required in ("moving_mean", "moving_variance"):
        if required not in variables:
            raise StateError(f"layer {layer!r} has no {required}", path=path)
    if config is not None:
        expected = expected_names(config["center"], config["scale"])
        if sorted(expected) != sorted(set(variables) - RENORM_VARIABLES):
            raise StateError(
                f"layer {layer!r} stores {sorted(variables)} but its config "
                f"(center={config['center']}, scale={config['scale']}) needs "
                f"{sorted(expected)}",
                path=path,
            )
    lengths = set()
    for name, array in variables.items():
        if array.ndim != 1:
            raise StateError(
                f"layer {layer!r}: {name} has shape {array.shape}, not (C,)", path=path
            )
        if not (array.dtype.kind == "f" or array.dtype.name == "bfloat16"):
            raise StateError(
                f"layer {layer!r}: {name} holds {array.dtype}, not floats", path=path
            )
        lengths.add(array.shape[0])
    if len(lengths) != 1:
        raise StateError(
            f"layer {layer!r}: variables of different lengths {sorted(lengths)}",
            path=path,
        )
    (channels,) = lengths
    if channels == 0:
        raise StateError(f"layer {layer!r} has no channels", path=path)
    if config is not None and input_shape is not None:
        axis = config["axis"]
        if -len(input_shape) <= axis < len(input_shape):
            declared = input_shape[axis]
            if declared is not None and declared != channels:
                raise StateError(
                    f"layer {layer!r}: input shape {input_shape} has "
                    f"{declared} channels on axis {axis}, variables have {channels}",
                    path=path,
                )
    if renorm:
        raise UnsupportedLayerError(
            f"layer {layer!r} has renormalization variables: renorm=True is "
            "not supported",
            reason=f"batch renormalization ({', '.join(renorm)})",
            path=path,
        )


def _fill_channels(
    shape: Shape | None, config: Mapping[str, Any] | None, channels: int
) -> Shape | None:
    """Put the known channel count into a partly known input shape."""
    if shape is None or config is None:
        return shape
    axis = config["axis"]
    if not -len(shape) <= axis < len(shape) or shape[axis] is not None:
        return shape
    dims = list(shape)
    dims[axis] = channels
    return tuple(dims)


def layer_record(
    name: str,
    where: str,
    config: dict[str, Any] | None,
    variables: dict[str, np.ndarray],
    input_shape: Shape | None,
    path: Path,
    *,
    file_config: Any = None,
) -> KerasBatchNorm:
    """The checked layer; unsupported (renorm variables) rather than refused."""
    try:
        _check_variables(variables, config, name, input_shape, path)
    except UnsupportedLayerError as problem:
        return unsupported_record(
            name, where, file_config, variables, input_shape, problem, path
        )
    channels = next(iter(variables.values())).shape[0]
    ordered = {key: variables[key] for key in VARIABLE_NAMES if key in variables}
    return KerasBatchNorm(
        name=name,
        path=where,
        config=config,
        variables=ordered,
        input_shape=_fill_channels(input_shape, config, channels),
    )


def unsupported_record(
    name: str,
    where: str,
    file_config: Any,
    variables: dict[str, np.ndarray],
    input_shape: Shape | None,
    problem: UnsupportedLayerError,
    path: Path,
) -> KerasBatchNorm:
    """A layer bncli cannot use, kept for listings with ``problem``.

    Its arrays were read as every variable is (1-D floats, bounded); they must
    still have one length: a layer that fails that is damaged, and so is the
    file.
    """
    lengths = {array.shape[0] for array in variables.values()}
    if not lengths:
        raise StateError(f"layer {name!r} has no variables", path=path)
    if len(lengths) != 1:
        raise StateError(
            f"layer {name!r}: variables of different lengths {sorted(lengths)}",
            path=path,
        )
    if lengths == {0}:
        raise StateError(f"layer {name!r} has no channels", path=path)
    return KerasBatchNorm(
        name=name,
        path=where,
        config=None,
        variables=dict(variables),
        input_shape=input_shape,
        problem=problem,
        file_config=dict(file_config) if isinstance(file_config, Mapping) else None,
    )


def positional_variables(
    arrays: Sequence[np.ndarray], file_config: Any
) -> dict[str, np.ndarray]:
    """Name an unsupported layer's datasets "0".."n-1" where the count tells how.

    Keras creates gamma (if scale), beta (if center), the moving statistics,
    then the renorm variables; a count that fits neither keeps the positions.
    """
    settings = file_config if isinstance(file_config, Mapping) else {}
    center, scale = settings.get("center", True), settings.get("scale", True)
    if isinstance(center, bool) and isinstance(scale, bool):
        plain = expected_names(center, scale)
        for names in (plain, [*plain, *RENORM_ORDER]):
            if len(names) == len(arrays):
                return dict(zip(names, arrays, strict=True))
    return {str(index): array for index, array in enumerate(arrays)}
