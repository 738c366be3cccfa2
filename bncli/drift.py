"""How far data's statistics are from a state's moving statistics.

Per channel: the standardized mean shift ``(mean - moving_mean) /
sqrt(moving_variance + epsilon)`` and the variance ratio ``variance /
(moving_variance + epsilon)``. A channel drifts when the shift's magnitude
exceeds ``shift_threshold`` or the ratio leaves ``[1 / ratio_threshold,
ratio_threshold]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from bncli import kernels
from bncli.errors import DataError

__all__ = ["DEFAULT_RATIO_THRESHOLD", "DEFAULT_SHIFT_THRESHOLD", "measure_drift"]

DEFAULT_SHIFT_THRESHOLD = 0.5
DEFAULT_RATIO_THRESHOLD = 2.0


def data_moments(
    layer: Any, paths: Sequence[str | os.PathLike[str]], **options: Any
) -> tuple[kernels.Moments, int]:
    """Whole-data moments per channel (Chan-merged over chunks), and the sample count."""
    from bncli.io.dataset import open_dataset

    dataset = open_dataset(
        paths,
        axis=layer.axis,
        features=layer.features,
        sample_shape=layer.sample_shape if layer.kind == "array" else None,
        **options,
    )
    total = kernels.Moments(
        np.zeros(layer.channels), np.zeros(layer.channels), np.zeros(layer.channels)
    )
    samples = 0
    for chunk in dataset.chunks():
        rows = kernels.to_rows(chunk.data, chunk.axis)
        x = cast("npt.NDArray[np.floating[Any]]", rows.reshape(1, -1, rows.shape[-1]))
        mask = (
            None
            if chunk.mask is None
            else chunk.mask.reshape(1, -1, chunk.mask.shape[-1])
        )
        part = kernels.batched_moments(x, mask)
        if not np.isfinite(part.mean[part.count > 0]).all():
            chunk.raise_nonfinite()
        total = kernels.merge_moments(
            total, kernels.Moments(part.count[0], part.mean[0], part.variance[0])
        )
        samples += len(chunk)
    if samples == 0:
        raise DataError(
            "empty input: no sample to compare", path=dataset.sources[0].path
        )
    return total, samples


def measure_drift(
    layer: Any,
    paths: Sequence[str | os.PathLike[str]],
    *,
    shift_threshold: float = DEFAULT_SHIFT_THRESHOLD,
    ratio_threshold: float = DEFAULT_RATIO_THRESHOLD,
    **options: Any,
) -> dict[str, Any]:
    """Compare the data in ``paths`` with the layer's moving statistics.

    Returns:
        ``{"samples", "drift" (any channel drifts), "thresholds",
        "channels": [{"feature", "count", "mean", "variance", "mean_shift",
        "variance_ratio", "drift"}, ...]}``. ``count`` is the channel's
        values compared (nulls and masked values left out); a channel with
        none has ``None`` for its statistics and does not drift.
    """
    moments, samples = data_moments(layer, paths, **options)
    scale = np.sqrt(layer.moving_variance64 + layer.epsilon)
    shift = (moments.mean - layer.moving_mean64) / scale
    ratio = moments.variance / (layer.moving_variance64 + layer.epsilon)
    channels = []
    for c, feature in enumerate(layer.features):
        seen = moments.count[c] > 0
        drift = bool(
            seen
            and (
                abs(shift[c]) > shift_threshold
                or not 1 / ratio_threshold <= ratio[c] <= ratio_threshold
            )
        )
        channels.append(
            {
                "feature": feature,
                "count": int(moments.count[c]),
                "mean": float(moments.mean[c]) if seen else None,
                "variance": float(moments.variance[c]) if seen else None,
                "mean_shift": float(shift[c]) if seen else None,
                "variance_ratio": float(ratio[c]) if seen else None,
                "drift": drift,
            }
        )
    return {
        "samples": samples,
        "drift": any(ch["drift"] for ch in channels),
        "thresholds": {
            "mean_shift": shift_threshold,
            "variance_ratio": ratio_threshold,
        },
        "channels": channels,
    }
