"""The precise reference: Keras 3 ``BatchNormalization`` as the README states it.

A plain per-batch loop in NumPy float64, written from the formulas the README states and
nothing else: it imports no part of bncli, so that bncli's kernels, layer
and engines are checked against an independent source.

- Moments per channel over every axis but the channel axis, two-pass
  (``mean = sum(x) / n``, then ``variance = sum((x - mean)**2) / n``, the
  biased variance), each sum taken exactly with :func:`math.fsum`. Masked-out
  elements count in neither.
- After each batch: ``moving = moving * momentum + batch * (1 - momentum)``,
  for the mean and the variance. A channel with no unmasked value in a batch
  keeps its moving statistics for that batch.
- Batches of ``batch_size`` consecutive samples; every epoch is batched on
  its own; a final partial batch counts unless ``drop_remainder``.
- ``replicas``: a batch is split as :func:`numpy.array_split` splits it, and
  empty shards are skipped. Synchronized, the statistics are the whole
  batch's; otherwise each shard uses its own for its outputs, and the moving
  update takes the mean over the shards (those that saw the channel) of the
  shard means and of the shard variances.
- Training-mode outputs use the batch's (shard's) statistics; a channel with
  no unmasked value falls back on the moving statistics.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = [
    "Stats",
    "batch_bounds",
    "cells",
    "exact_reference",
    "fit",
    "inference",
    "moments",
    "precise_reference",
    "shard_indexes",
    "train_step",
    "training_outputs",
]


@dataclasses.dataclass
class Stats:
    """Moving statistics and progress counters, all float64 / int."""

    moving_mean: np.ndarray
    moving_variance: np.ndarray
    channel_batches: np.ndarray
    batches_seen: int = 0
    samples_seen: int = 0

    @classmethod
    def initial(cls, channels: int, mean: float = 0.0, variance: float = 1.0) -> Stats:
        return cls(
            moving_mean=np.full(channels, float(mean)),
            moving_variance=np.full(channels, float(variance)),
            channel_batches=np.zeros(channels, dtype=np.int64),
        )

    def copy(self) -> Stats:
        return Stats(
            self.moving_mean.copy(),
            self.moving_variance.copy(),
            self.channel_batches.copy(),
            self.batches_seen,
            self.samples_seen,
        )


def _positive_axis(axis: int, ndim: int) -> int:
    axis = axis + ndim if axis < 0 else axis
    assert 0 < axis < ndim, "the channel axis is not the sample axis"
    return axis


def _cells(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` as ``(N, P, C)`` float64: per sample, P positions of C channels."""
    moved = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    return moved.reshape(moved.shape[0], -1, moved.shape[-1])


def _keep(mask: np.ndarray | None, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The mask as ``(N, P, C)`` booleans (True keeps a cell).

    ``mask`` is shaped like the data without the channel axis (or broadcasts
    to that), as Keras takes it; or, for tables, like the data itself, one
    flag per cell.
    """
    n, channels = shape[0], shape[axis]
    without = shape[:axis] + shape[axis + 1 :]
    if mask is None:
        return np.ones((n, int(np.prod(without[1:], dtype=int)), channels), bool)
    mask = np.asarray(mask).astype(bool)
    if mask.shape == shape and len(shape) == 2:
        return mask.reshape(n, 1, channels)
    flags = np.broadcast_to(mask, without).reshape(n, -1, 1)
    return np.broadcast_to(flags, (*flags.shape[:2], channels))


def moments(
    x: np.ndarray, mask: np.ndarray | None = None, axis: int = -1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, means and biased variances per channel of one batch ``x``.

    A channel with no unmasked value has count 0 and NaN moments.
    """
    axis = _positive_axis(axis, x.ndim)
    return _cell_moments(_cells(x, axis), _keep(mask, x.shape, axis))


def _cell_moments(
    cells: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    channels = cells.shape[-1]
    count = np.zeros(channels)
    mean = np.full(channels, np.nan)
    variance = np.full(channels, np.nan)
    for c in range(channels):
        values = cells[..., c][keep[..., c]]
        n = values.size
        count[c] = n
        if n:
            mu = math.fsum(values.tolist()) / n
            mean[c] = mu
            variance[c] = math.fsum(((values - mu) ** 2).tolist()) / n
    return count, mean, variance


def batch_bounds(
    samples: int, batch_size: int, drop_remainder: bool = False
) -> list[tuple[int, int]]:
    """The ``[start, stop)`` sample ranges of one epoch's batches."""
    bounds = [
        (start, min(start + batch_size, samples))
        for start in range(0, samples, batch_size)
    ]
    if drop_remainder and bounds and bounds[-1][1] - bounds[-1][0] < batch_size:
        bounds.pop()
    return bounds


def shard_indexes(samples: int, replicas: int) -> list[np.ndarray]:
    """The sample indexes of the non-empty shards, as ``np.array_split``."""
    return [s for s in np.array_split(np.arange(samples), replicas) if s.size]


def _normalize(cells, mean, variance, gamma, beta, epsilon):
    g = 1.0 if gamma is None else np.asarray(gamma, dtype=np.float64)
    b = 0.0 if beta is None else np.asarray(beta, dtype=np.float64)
    return g * (cells - mean) / np.sqrt(variance + epsilon) + b


def _uncells(cells: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return np.moveaxis(cells.reshape(moved_shape), -1, axis)


def train_step(
    stats: Stats,
    x: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    axis: int = -1,
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    replicas: int = 1,
    synchronized: bool = False,
    update: bool = True,
) -> np.ndarray:
    """One batch in training mode: return its outputs, update ``stats`` in place.

    With ``update=False`` the statistics are left alone (``transform
    --training``).
    """
    axis = _positive_axis(axis, x.ndim)
    cells = _cells(x, axis)
    keep = _keep(mask, x.shape, axis)
    groups = (
        [np.arange(len(x))]
        if replicas == 1 or synchronized
        else shard_indexes(len(x), replicas)
    )
    out = np.empty_like(cells)
    shard_means, shard_variances = [], []
    for index in groups:
        count, mean, variance = _cell_moments(cells[index], keep[index])
        seen = count > 0
        use_mean = np.where(seen, mean, stats.moving_mean)
        use_variance = np.where(seen, variance, stats.moving_variance)
        out[index] = _normalize(
            cells[index], use_mean, use_variance, gamma, beta, epsilon
        )
        shard_means.append(mean)
        shard_variances.append(variance)
    if update:
        means = np.array(shard_means)
        variances = np.array(shard_variances)
        for c in range(cells.shape[-1]):
            seen = ~np.isnan(means[:, c])
            if not seen.any():
                continue  # no unmasked value: keep the moving statistics
            batch_mean = float(np.mean(means[seen, c]))
            batch_variance = float(np.mean(variances[seen, c]))
            stats.moving_mean[c] = stats.moving_mean[c] * momentum + batch_mean * (
                1.0 - momentum
            )
            stats.moving_variance[c] = stats.moving_variance[
                c
            ] * momentum + batch_variance * (1.0 - momentum)
            stats.channel_batches[c] += 1
        stats.batches_seen += 1
        stats.samples_seen += len(x)
    return _uncells(out, x.shape, axis)


def fit(
    data: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    axis: int = -1,
    momentum: float = 0.99,
    batch_size: int = 32,
    epochs: int = 1,
    drop_remainder: bool = False,
    replicas: int = 1,
    synchronized: bool = False,
    stats: Stats | None = None,
) -> Stats:
    """The moving statistics after fitting ``data`` (from ``stats``, or the
    Keras initial values: mean 0, variance 1)."""
    axis = _positive_axis(axis, data.ndim)
    stats = Stats.initial(data.shape[axis]) if stats is None else stats.copy()
    for _ in range(epochs):
        for start, stop in batch_bounds(len(data), batch_size, drop_remainder):
            train_step(
                stats,
                data[start:stop],
                None if mask is None else mask[start:stop],
                axis=axis,
                momentum=momentum,
                replicas=replicas,
                synchronized=synchronized,
            )
    return stats


def training_outputs(
    data: np.ndarray,
    stats: Stats,
    mask: np.ndarray | None = None,
    *,
    axis: int = -1,
    epsilon: float = 1e-3,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    batch_size: int = 32,
    replicas: int = 1,
    synchronized: bool = False,
) -> np.ndarray:
    """Training-mode outputs of one pass over ``data`` with ``stats`` fixed
    (``transform --training``): every batch, the last partial one too."""
    axis = _positive_axis(axis, data.ndim)
    parts = [
        train_step(
            stats,
            data[start:stop],
            None if mask is None else mask[start:stop],
            axis=axis,
            epsilon=epsilon,
            gamma=gamma,
            beta=beta,
            replicas=replicas,
            synchronized=synchronized,
            update=False,
        )
        for start, stop in batch_bounds(len(data), batch_size)
    ]
    return np.concatenate(parts)


def inference(
    data: np.ndarray,
    moving_mean: np.ndarray,
    moving_variance: np.ndarray,
    *,
    axis: int = -1,
    epsilon: float = 1e-3,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
) -> np.ndarray:
    """``gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta``."""
    axis = _positive_axis(axis, data.ndim)
    cells = _cells(data, axis)
    mean = np.asarray(moving_mean, dtype=np.float64)
    variance = np.asarray(moving_variance, dtype=np.float64)
    out = _normalize(cells, mean, variance, gamma, beta, epsilon)
    return _uncells(out, data.shape, axis)


# ------------------------------------------ population statistics (--stats)


def _batch_slices(n: int, batch_size: int, drop_remainder: bool = False) -> list[slice]:
    """The batches of ``n`` samples, as slices."""
    stops = list(range(batch_size, n + 1, batch_size))
    if not drop_remainder and (not stops or stops[-1] < n):
        stops.append(n)
    starts = [0, *stops[:-1]]
    return [slice(a, b) for a, b in zip(starts, stops, strict=True)]


def cells(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` as ``(N, P, C)`` float64: the channel axis last."""
    return _cells(x, axis)


def precise_reference(
    x: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    axis: int = -1,
    batch_size: int = 32,
    replicas: int = 1,
    drop_remainder: bool = False,
    epochs: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's ``momentum=None``: ``running += (batch - running) / (n + 1)``."""
    values_of = cells(x, axis)
    keep = np.ones(values_of.shape, bool) if mask is None else mask
    channels = values_of.shape[-1]
    running_mean = np.zeros(channels)
    running_var = np.ones(channels)
    n = np.zeros(channels)
    for _ in range(epochs):
        for batch in _batch_slices(len(values_of), batch_size, drop_remainder):
            shards = np.array_split(np.arange(batch.start, batch.stop), replicas)
            for c in range(channels):
                means, variances = [], []
                for shard in shards:
                    values = values_of[shard, :, c][keep[shard, :, c]]
                    if len(shard) and len(values):
                        means.append(values.mean())
                        variances.append(((values - values.mean()) ** 2).mean())
                if not means:
                    continue  # no value of this channel in the batch
                n[c] += 1
                running_mean[c] += (np.mean(means) - running_mean[c]) / n[c]
                running_var[c] += (np.mean(variances) - running_var[c]) / n[c]
    return running_mean, running_var


def exact_reference(
    x: np.ndarray, mask: np.ndarray | None = None, *, axis: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """The mean and biased variance of every unmasked value, per channel."""
    values_of = cells(x, axis)
    keep = np.ones(values_of.shape, bool) if mask is None else mask
    means, variances = [], []
    for c in range(values_of.shape[-1]):
        values = values_of[..., c][keep[..., c]]
        means.append(values.mean())
        variances.append(values.var())
    return np.array(means), np.array(variances)
