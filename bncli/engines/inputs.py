"""Opening an engine's inputs against a layer: every engine's first step.

A fit opens its inputs with the layer's axis and, once the layer is built,
its channels (building it on a first fit); a transform opens them with the
state's channels and checks its output against every file it reads. Both
engines start here, so that they check alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bncli.engines.base import EngineLayer, FitOptions, FitParams, TransformOptions
from bncli.errors import ChannelMismatchError, DataError, StateMismatchError, UsageError
from bncli.io.dataset import Dataset, open_dataset
from bncli.io.outputs import OutputTarget

__all__ = [
    "chunk_bytes",
    "open_fit_dataset",
    "open_layer_inputs",
    "open_transform_dataset",
]


def chunk_bytes(
    dataset: Dataset, outputs: bool = False, params: FitParams | None = None
) -> tuple[int, int]:
    """``(sample_bytes, target_bytes)`` for :func:`block_rows`: how much to read at once.

    Sized in float64 samples. NPY chunks are windows on one mapping of the
    file, whose pages leave the resident set once computed. A fit whose
    kernel reads the window in place (``params`` given, no mask: no copy of
    it is made) takes 64 MiB (32 MiB of float32): each chunk costs a
    hand-off between threads, a kernel call's ramp and a fold, about 0.2 ms
    in all, and a 1 GiB fit ran 1.45x faster on 2 workers than on 1 with
    16 MiB chunks, 1.75x with 64 MiB (128 MiB gained nothing more), for a
    peak resident set of 106 MiB against 56. Otherwise 16 MiB: masked
    batches are computed on float64 copies, unsynchronized replicas keep
    moments per shard. Table chunks are decoded copies, and a transform's
    also hold their outputs and the record batch while a few are in flight:
    4 MiB for a fit (a fit on Parquet runs about 1.25x faster than with 2 MiB
    chunks) and 2 MiB for a transform (whose writing sets the pace), to keep
    the peak memory well under a quarter of a 1 GiB input.
    """
    sample_bytes = int(np.prod(dataset.sample_shape)) * 8
    if dataset.kind != "table":
        return sample_bytes, (64 << 20 if _in_place(dataset, params) else 16 << 20)
    return sample_bytes, (2 << 20 if outputs else 4 << 20)


def _in_place(dataset: Dataset, params: FitParams | None) -> bool:
    """Whether a fit's blocks of ``dataset`` are read in place, unmasked."""
    return (
        params is not None
        and params.one_shard
        and dataset.masks is None
        and dataset.nan_policy != "mask"
    )


def open_layer_inputs(
    layer: EngineLayer, paths: Sequence[str | os.PathLike[str]], **options: Any
) -> Dataset:
    """Open ``paths`` with the layer's axis (and, once built, its channels)."""
    try:
        dataset = open_dataset(
            paths,
            axis=layer.axis,
            features=layer.features if layer.built else None,
            sample_shape=layer.sample_shape
            if layer.built and layer.kind == "array"
            else None,
            **options,
        )
    except ChannelMismatchError as e:
        if layer.built:
            raise StateMismatchError(
                f"channels differ from the state's ({e.message})", path=e.path
            ) from e
        raise
    _require_values(dataset)
    return dataset


def _require_values(dataset: Dataset) -> None:
    """Refuse samples of no values (an empty axis beside the channels)."""
    if 0 in dataset.sample_shape:
        # Every batch would be empty: no moment to fold, nothing to normalize.
        raise DataError(
            f"samples of shape {tuple(dataset.sample_shape)} hold no values",
            path=dataset.sources[0].path,
        )


def open_fit_dataset(
    layer: EngineLayer,
    paths: Sequence[str | os.PathLike[str]],
    options: FitOptions,
    *,
    replay: bool,
) -> Dataset:
    """Open a fit's inputs against ``layer``, and build the layer on a first fit.

    Args:
        layer: the layer to fit (built or not).
        paths: the inputs.
        options: the fit's options (columns, exclude, masks, NaN policy).
        replay: whether the stream will be read more than once (stdin cannot).

    Returns:
        The opened inputs.

    Raises:
        StateMismatchError: inputs that contradict the layer's channels or kind.
        UsageError: stdin with ``replay``.
        DataError: unreadable or empty inputs.
    """
    if replay and any(os.fspath(p) == "-" for p in paths):
        # Refused before stdin is read: an interactive shell would wait on it.
        raise UsageError(
            "'-' (stdin) cannot be replayed: not with --epochs above 1 or --resume"
        )
    columns, exclude = options.columns, options.exclude
    if layer.built and (columns or exclude) and layer.kind == "table":
        chosen = list(columns) if columns else None
        if chosen is not None and chosen != layer.features:
            raise StateMismatchError(
                f"--columns {','.join(chosen)} contradicts the state's channels "
                f"{','.join(layer.features)}"
            )
        columns = exclude = None
    dataset = open_layer_inputs(
        layer,
        paths,
        columns=columns,
        exclude=exclude,
        mask_column=options.mask_column,
        masks=options.mask,
        nan_policy=options.nan_policy,
        read=options.read,
    )
    if layer.built and layer.kind != dataset.kind:
        raise StateMismatchError(
            f"the state was fitted on {layer.kind}s, the input is an {dataset.kind}",
            path=dataset.sources[0].path,
        )
    if dataset.num_samples == 0:
        raise DataError("empty input: no sample to fit", path=dataset.sources[0].path)
    if not layer.built:
        layer.build(dataset.sample_shape, dataset.features, dataset.kind)
    return dataset


def open_transform_dataset(
    layer: EngineLayer,
    paths: Sequence[str | os.PathLike[str]],
    output: str,
    options: TransformOptions,
    *,
    folder: bool = False,
) -> tuple[Dataset, OutputTarget]:
    """Open a transform's inputs with the state's channels, and check ``output``.

    Returns:
        The dataset, and the output checked by
        :func:`bncli.io.outputs.check_output` against every file read.

    Raises:
        UsageError: the output exists (without ``overwrite``), is an input,
            or its folder is missing; nothing is created.
        DataError: unreadable or empty inputs, or channels unlike the state's.
    """
    from bncli.io.outputs import check_output
    from bncli.io.sinks import check_writable

    # A state's channels unlike the inputs' are a data error here (exit 3),
    # where a fit refuses to change the state (exit 4).
    dataset = open_dataset(
        paths,
        axis=layer.axis,
        features=layer.features,
        sample_shape=layer.sample_shape if layer.kind == "array" else None,
        mask_column=options.mask_column,
        masks=options.mask,
        nan_policy=options.nan_policy,
        read=options.read,
    )
    _require_values(dataset)
    if dataset.kind == "table":
        dataset.check_same_columns()
    reads: list[str | os.PathLike[str]] = [s.path for s in dataset.sources]
    reads += [*(options.mask or ()), *options.reads]
    target = check_output(output, reads, options.overwrite, folder=folder)
    check_writable(output, dataset)
    if dataset.num_samples == 0:
        raise DataError(
            "empty input: nothing to transform", path=dataset.sources[0].path
        )
    return dataset, target
