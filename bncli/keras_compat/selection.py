"""Choosing one BatchNormalization layer of a file: by name, or the only one."""

from __future__ import annotations

import os
from collections.abc import Sequence

from bncli.errors import (
    StateError,
    UsageError,
)
from bncli.keras_compat.records import KerasBatchNorm

__all__ = ["select_layer"]


def select_layer(
    layers: list[KerasBatchNorm], name: str | None, *, path: str | os.PathLike[str]
) -> KerasBatchNorm:
    """Pick one layer by name, or the only one when no name is given.

    Unsupported layers count like the others (an only supported layer among
    several is not guessed), but one is never returned: choosing it raises
    its problem.

    Args:
        layers: What :func:`read_batchnorm_layers` returned.
        name: The layer's name (or, where nested models repeat a name, its
            ``path``); None to take the only BatchNormalization layer.
        path: The file, for error messages.

    Returns:
        The chosen layer, a supported one.

    Raises:
        StateError: If the file has no BatchNormalization layer.
        UnsupportedLayerError: If the chosen layer is unsupported (renorm,
            virtual batches, ambiguous variables...): its ``problem``.
        UsageError: If ``name`` matches no layer (or several), or is None and
            there are several; the message lists the layers by name, marking
            the unsupported ones.

    Example:
        >>> bn = KerasBatchNorm("bn", "layers/batch_normalization", None, {}, None)
        >>> select_layer([bn], None, path="m.keras").name
        'bn'
    """
    chosen = _choose_layer(layers, name, path)
    if chosen.problem is not None:
        raise chosen.problem
    return chosen


def _choose_layer(
    layers: list[KerasBatchNorm], name: str | None, path: str | os.PathLike[str]
) -> KerasBatchNorm:
    if not layers:
        raise StateError("the file has no BatchNormalization layer", path=path)
    if name is None:
        if len(layers) == 1:
            return layers[0]
        raise UsageError(
            f"the file has {len(layers)} BatchNormalization layers: {_layer_listing(layers)}",
            path=path,
            hint="choose one with --layer NAME",
        )
    matches = [layer for layer in layers if layer.name == name]
    if len(matches) == 1:
        return matches[0]
    by_path = [layer for layer in layers if layer.path == name]
    if len(by_path) == 1:
        return by_path[0]
    if matches:
        raise UsageError(
            f"several BatchNormalization layers are named {name!r}: {_layer_listing(layers)}",
            path=path,
            hint="choose one by its path, given in parentheses",
        )
    raise UsageError(
        f"no BatchNormalization layer named {name!r}; the file has: {_layer_listing(layers)}",
        path=path,
    )


def _layer_listing(layers: Sequence[KerasBatchNorm]) -> str:
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.name] = counts.get(layer.name, 0) + 1
    return ", ".join(
        (layer.name if counts[layer.name] == 1 else f"{layer.name} ({layer.path})")
        + ("" if layer.problem is None else " [unsupported]")
        for layer in layers
    )
