"""Pure NumPy kernels: batch moments, Chan's merge, the moving-average fold.

No I/O and no state here: arrays in, arrays out, statistics in float64.
The unmasked batch moments of float32 and float64 data take a compiled fast
path where it was built (:mod:`bncli.fast_moments`); :func:`numpy_moments`
is its reference.

Layout: a run of ``K`` batches is viewed as an array ``x`` of shape
``(K, R, C)``: ``R`` rows per batch (samples times the positions of every
axis other than the channel axis) and ``C`` channels. A mask, where given,
is a boolean array that broadcasts to ``x`` (``(K, R, 1)`` for a per-element
mask, ``(K, R, C)`` for a per-cell one); ``True`` keeps an element.

The moving statistics after ``K`` batches are an affine map of the ones
before, per channel: ``m <- decay * m + offset``. Affine maps compose
associatively (:func:`compose`), so any run of batches can be reduced to one
:class:`Fold` anywhere and the folds combined in order afterwards.

That is Keras's exponential moving average (``"ema"``). The population
statistics fold alike: ``"precise"`` (the equal-weight mean over batches of
the batch means and variances) as a :class:`MeanFold` of sums, and
``"exact"`` (the mean and variance of every value) as a
:class:`PopulationFold` of moments merged with Chan's formula. Every fold
maps a :class:`Moving` record to the next.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bncli.fast_moments import native_column_sums, native_ema_offsets, native_moments

__all__ = [
    "STATISTICS",
    "AnyFold",
    "Fold",
    "MeanFold",
    "Moments",
    "Moving",
    "PopulationFold",
    "batched_moments",
    "block_buffer",
    "combine_shards",
    "compose",
    "fold_batches",
    "fold_statistics",
    "from_rows",
    "identity_fold",
    "merge_moments",
    "merged_sample_moments",
    "moments",
    "numpy_moments",
    "population_moments",
    "replica_moments",
    "shard_bounds",
    "to_rows",
]

Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
Int64Array = npt.NDArray[np.int64]

#: The ways moving statistics sum up batches: Keras's exponential moving
#: average, the mean over batches of their statistics, the population's.
STATISTICS = ("ema", "precise", "exact")


@dataclasses.dataclass(frozen=True)
class Moments:
    """Counts, means and biased variances, each of shape ``(..., C)``."""

    count: Float64Array
    mean: Float64Array
    variance: Float64Array


@dataclasses.dataclass(frozen=True)
class Fold:
    """The moving-average update of a run of batches, per channel.

    Applying it maps ``(moving_mean, moving_variance)`` to
    ``(decay * moving_mean + mean_offset, decay * moving_variance +
    variance_offset)``. ``batches`` counts, per channel, the batches that
    updated it (a batch in which a channel had no unmasked value leaves it
    alone).
    """

    decay: Float64Array
    mean_offset: Float64Array
    variance_offset: Float64Array
    batches: npt.NDArray[np.int64]

    def apply(
        self, moving_mean: Float64Array, moving_variance: Float64Array
    ) -> tuple[Float64Array, Float64Array]:
        """Return the moving statistics after the folded batches."""
        return (
            self.decay * moving_mean + self.mean_offset,
            self.decay * moving_variance + self.variance_offset,
        )

    def apply_to(self, moving: Moving) -> Moving:
        """The moving statistics after the folded batches."""
        mean, variance = self.apply(moving.mean, moving.variance)
        return dataclasses.replace(
            moving, mean=mean, variance=variance, batches=moving.batches + self.batches
        )


@dataclasses.dataclass(frozen=True)
class Moving:
    """Moving statistics and what they are made of, per channel.

    Attributes:
        mean, variance: the moving statistics, float64.
        batches: the batches that updated each channel.
        count: the values that updated each channel (kept by ``"exact"``).
    """

    mean: Float64Array
    variance: Float64Array
    batches: Int64Array
    count: Float64Array


@dataclasses.dataclass(frozen=True)
class MeanFold:
    """``"precise"``: the sums over a run of batches of their means and variances.

    Applied, the moving statistics become the equal-weight mean over every
    batch seen: ``(m * n + mean_sum) / (n + batches)`` with ``n`` the
    batches before; a channel no batch updated keeps its values.
    """

    mean_sum: Float64Array
    variance_sum: Float64Array
    batches: Int64Array

    def apply_to(self, moving: Moving) -> Moving:
        """The moving statistics after the folded batches."""
        before = moving.batches.astype(np.float64)
        total = moving.batches + self.batches
        safe = np.maximum(total, 1).astype(np.float64)
        seen = total > 0
        return dataclasses.replace(
            moving,
            mean=np.where(
                seen, (moving.mean * before + self.mean_sum) / safe, moving.mean
            ),
            variance=np.where(
                seen,
                (moving.variance * before + self.variance_sum) / safe,
                moving.variance,
            ),
            batches=total,
        )


@dataclasses.dataclass(frozen=True)
class PopulationFold:
    """``"exact"``: the moments of every value of a run of batches.

    Applied, they are merged (Chan's formula) with the moments of the values
    seen before; a channel with no value keeps its values.
    """

    moments: Moments
    batches: Int64Array

    def apply_to(self, moving: Moving) -> Moving:
        """The moving statistics after the folded batches."""
        merged = merge_moments(
            Moments(moving.count, moving.mean, moving.variance), self.moments
        )
        seen = merged.count > 0
        return Moving(
            mean=np.where(seen, merged.mean, moving.mean),
            variance=np.where(seen, merged.variance, moving.variance),
            batches=moving.batches + self.batches,
            count=merged.count,
        )


AnyFold = Fold | MeanFold | PopulationFold


def identity_fold(channels: int, statistics: str = "ema") -> AnyFold:
    """The fold of no batch at all."""
    batches = np.zeros(channels, dtype=np.int64)
    if statistics == "precise":
        return MeanFold(np.zeros(channels), np.zeros(channels), batches)
    if statistics == "exact":
        zeros = np.zeros(channels)
        return PopulationFold(Moments(zeros, zeros, zeros), batches)
    return Fold(
        decay=np.ones(channels),
        mean_offset=np.zeros(channels),
        variance_offset=np.zeros(channels),
        batches=batches,
    )


def compose(first: AnyFold, second: AnyFold) -> AnyFold:
    """The fold of ``first``'s batches followed by ``second``'s (one mode).

    Keras's: ``second(first(m)) = d2 * (d1 * m + o1) + o2``; sums add; the
    moments of two runs merge with Chan's formula.
    """
    if isinstance(first, MeanFold) and isinstance(second, MeanFold):
        return MeanFold(
            first.mean_sum + second.mean_sum,
            first.variance_sum + second.variance_sum,
            first.batches + second.batches,
        )
    if isinstance(first, PopulationFold) and isinstance(second, PopulationFold):
        return PopulationFold(
            merge_moments(first.moments, second.moments),
            first.batches + second.batches,
        )
    if isinstance(first, Fold) and isinstance(second, Fold):
        return Fold(
            decay=first.decay * second.decay,
            mean_offset=second.decay * first.mean_offset + second.mean_offset,
            variance_offset=second.decay * first.variance_offset
            + second.variance_offset,
            batches=first.batches + second.batches,
        )
    raise TypeError(  # pragma: no cover - a programming error
        f"cannot compose a {type(first).__name__} with a {type(second).__name__}"
    )


def fold_statistics(
    stats: Moments,
    valid: BoolArray | None,
    momentum: float,
    statistics: str = "ema",
) -> AnyFold:
    """Fold the moving-statistics updates of ``K`` batches, in any mode.

    Args:
        stats: ``(K, C)`` batch moments: the statistics the moving update
            takes (for unsynchronized replicas, the mean over shards), except
            for ``"exact"``, which needs each batch's own population moments
            (count, mean, variance of its values).
        valid: ``(K, C)`` whether each batch updates each channel; None when
            all do.
        momentum: Keras's momentum (``"ema"`` only).
        statistics: ``"ema"``, ``"precise"`` or ``"exact"``.
    """
    if statistics == "ema":
        if valid is None:
            fast = native_ema_offsets(stats.mean, stats.variance, momentum)
            if fast is not None:
                num_batches, channels = np.shape(stats.mean)
                return Fold(
                    decay=np.power(
                        float(momentum), np.full(channels, float(num_batches))
                    ),
                    mean_offset=fast[0],
                    variance_offset=fast[1],
                    batches=np.full(channels, num_batches, dtype=np.int64),
                )
        return fold_batches(stats.mean, stats.variance, valid, momentum)
    num_batches, channels = np.shape(stats.mean)
    if valid is None:
        batches = np.full(channels, num_batches, dtype=np.int64)
    else:
        batches = np.asarray(valid, dtype=bool).sum(axis=0, dtype=np.int64)
    if statistics == "precise":
        mean, variance = stats.mean, stats.variance
        if valid is None:
            sums = native_column_sums(mean, variance)
            if sums is not None:
                return MeanFold(sums[0], sums[1], batches)
        else:
            mean = np.where(valid, mean, 0.0)
            variance = np.where(valid, variance, 0.0)
        return MeanFold(mean.sum(axis=0), variance.sum(axis=0), batches)
    if statistics != "exact":
        raise ValueError(f"unknown statistics {statistics!r}")
    return PopulationFold(population_moments(stats), batches)


def population_moments(batches: Moments) -> Moments:
    """The moments of every value of ``K`` batches, from each batch's ``(K, C)``.

    ``n = sum n_k``, ``mean = sum n_k m_k / n``, and ``M2 = sum n_k v_k +
    sum n_k (m_k - mean)**2``: deviations from the batch means, then the
    spread of those means, never ``E[x**2] - E[x]**2``.
    """
    count = np.asarray(batches.count, dtype=np.float64)
    n = count.sum(axis=0)
    safe = np.where(n > 0, n, 1.0)
    mean = (count * batches.mean).sum(axis=0) / safe
    spread = batches.mean - mean
    m2 = (count * batches.variance).sum(axis=0) + (count * spread * spread).sum(axis=0)
    return Moments(n, np.where(n > 0, mean, 0.0), np.where(n > 0, m2 / safe, 0.0))


def fold_batches(
    means: Float64Array,
    variances: Float64Array,
    valid: BoolArray | None,
    momentum: float,
) -> Fold:
    """Fold the moving-average updates of ``K`` batches into one affine map.

    Batch ``k`` updates a channel where ``valid[k]`` holds:
    ``m <- momentum * m + (1 - momentum) * means[k]``. The composition is
    ``m_K = momentum**n * m_0 + sum_k (1 - momentum) * momentum**n_k * means[k]``
    with ``n`` the valid batches in all and ``n_k`` those after ``k``: a
    weighted sum, computed at once rather than as a loop over batches.

    Args:
        means: ``(K, C)`` batch means.
        variances: ``(K, C)`` biased batch variances.
        valid: ``(K, C)`` whether each batch updates each channel; ``None``
            when every batch updates every channel (no mask).
        momentum: Keras's ``momentum``, in ``[0, 1]``.

    Returns:
        The :class:`Fold` of the ``K`` updates.
    """
    num_batches, channels = np.shape(means)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
    if valid is None or valid.all():
        # Every batch updates every channel (no mask): the weights are the
        # same for all channels, (1 - momentum) * momentum**(K - 1 - k).
        after = np.arange(num_batches - 1, -1, -1, dtype=np.float64)
        weights = (1.0 - momentum) * np.power(float(momentum), after)
        counts = np.full(channels, num_batches, dtype=np.int64)
        mean_offset = np.einsum("k,kc->c", weights, means)
        variance_offset = np.einsum("k,kc->c", weights, variances)
    else:
        counts = valid.sum(axis=0, dtype=np.int64)
        # Valid batches strictly after k, per channel: a reversed cumulative
        # sum, in [0, K]; momentum**after is looked up in a table of K + 1
        # powers rather than computed K * C times.
        after = counts - np.cumsum(valid, axis=0, dtype=np.int64)
        powers = np.power(float(momentum), np.arange(num_batches + 1, dtype=np.float64))
        weights = np.where(valid, (1.0 - momentum) * powers[after], 0.0)
        mean_offset = np.einsum("kc,kc->c", weights, np.where(valid, means, 0.0))
        variance_offset = np.einsum(
            "kc,kc->c", weights, np.where(valid, variances, 0.0)
        )
    return Fold(
        decay=np.power(float(momentum), counts.astype(np.float64)),
        mean_offset=mean_offset,
        variance_offset=variance_offset,
        batches=counts,
    )


#: Float64 elements of the working buffer the blocked kernels compute in:
#: 1 MiB, so that a block's float64 copy and its deviations stay in a core's
#: L2 cache and the data is read from memory once, while each NumPy call
#: (which releases the GIL) has enough work that worker threads rarely wait
#: on the GIL for the Python in between.
BLOCK_ELEMENTS = 1 << 17

#: Rows per batch from which channel-major data is taken a channel at a
#: time: below it, the per-batch passes are too short to beat gathering the
#: channels into row-major blocks.
_CHANNEL_MAJOR_ROWS = 32

_scratch = threading.local()


def block_buffer(size: int) -> Float64Array:
    """A float64 working buffer of ``size`` elements, reused within a thread.

    Not state: its contents never outlive a kernel call. Reusing it spares
    a fresh allocation per call, whose first touch of each page costs a
    page fault (the dearest part of a call on small batches).
    """
    buffer: Float64Array | None = getattr(_scratch, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = np.empty(max(size, BLOCK_ELEMENTS))
        _scratch.buffer = buffer
    return buffer[:size]


def batched_moments(
    x: npt.NDArray[np.floating],
    mask: BoolArray | None = None,
    *,
    out: tuple[Float64Array, Float64Array] | None = None,
) -> Moments:
    """Per-batch counts, means and biased variances, in float64, two-pass.

    ``mean = sum(x) / n``, then ``variance = sum((x - mean)**2) / n`` over the
    rows of each batch (never ``E[x**2] - E[x]**2``, which cancels). Masked
    elements count in neither. A channel with no unmasked element in a batch
    gets count 0, mean 0 and variance 0.

    Args:
        x: ``(K, R, C)`` data, any real dtype.
        mask: ``None`` or a boolean array broadcasting to ``x``.
        out: without a mask, ``(mean, variance)`` float64 arrays of shape
            ``(K, C)`` to write the moments into (the count is then a
            read-only view); a caller folding many blocks reuses them.

    Returns:
        :class:`Moments` with arrays of shape ``(K, C)``.
    """
    num_batches, rows, channels = x.shape
    if mask is None:
        if out is None:
            count = np.full((num_batches, channels), float(rows))
            mean, variance = _unmasked_moments(x)
        else:
            count = np.broadcast_to(float(rows), (num_batches, channels))
            mean, variance = _unmasked_moments(x, *out)
        return Moments(count, mean, variance)
    mask = np.broadcast_to(mask, (*x.shape[:2], mask.shape[-1]))
    count = np.broadcast_to(
        np.add.reduce(mask, axis=1, dtype=np.float64), (num_batches, channels)
    ).copy()
    safe = np.maximum(count, 1.0)
    kept = np.where(mask, x, 0.0).astype(np.float64, copy=False)
    mean = np.add.reduce(kept, axis=1) / safe
    deviation = np.where(mask, kept - mean[:, None, :], 0.0)
    np.square(deviation, out=deviation)
    variance = np.add.reduce(deviation, axis=1) / safe
    return Moments(count, mean, variance)


def _unmasked_moments(
    x: npt.NDArray[np.floating],
    mean: Float64Array | None = None,
    m2: Float64Array | None = None,
) -> tuple[Float64Array, Float64Array]:
    """``(mean, variance)``, each ``(K, C)``, of ``x`` ``(K, R, C)`` with no mask.

    The compiled kernel where it applies (:mod:`bncli.fast_moments`), else
    :func:`numpy_moments`.
    """
    native = native_moments(x, mean, m2)
    if native is not None:
        return native
    return numpy_moments(x, mean, m2)


def numpy_moments(
    x: npt.NDArray[np.floating],
    mean: Float64Array | None = None,
    m2: Float64Array | None = None,
) -> tuple[Float64Array, Float64Array]:
    """``(mean, variance)``, each ``(K, C)``, of ``x`` ``(K, R, C)`` with no mask.

    The same two passes as :func:`batched_moments`, ``mean = sum(x) / R`` and
    ``variance = sum((x - mean)**2) / R``, taken over blocks of whole batches
    copied to a float64 buffer of :data:`BLOCK_ELEMENTS`: both passes read
    the copy from cache, and no float64 copy of the whole input is made.
    Batches larger than the buffer are read twice, a piece at a time.
    """
    num_batches, rows, channels = x.shape
    mean = np.empty((num_batches, channels)) if mean is None else mean
    m2 = np.empty((num_batches, channels)) if m2 is None else m2
    if not (num_batches and rows and channels):
        mean.fill(0.0)
        m2.fill(0.0)
        return mean, m2
    if rows == 1:  # a batch of one element: its mean is itself, its variance 0
        np.copyto(mean, x[:, 0], casting="unsafe")
        m2.fill(0.0)
        return mean, m2
    per_batch = rows * channels
    itemsize = x.dtype.itemsize
    if (
        channels > 1
        and _CHANNEL_MAJOR_ROWS <= rows <= BLOCK_ELEMENTS
        and x.strides[1] == itemsize
        and x.strides[0] == rows * itemsize
    ):
        # Channel-major (table columns): each channel's (K, R) is contiguous,
        # so take the channels one at a time, with long contiguous passes,
        # rather than gather them into row-major blocks.
        group = min(BLOCK_ELEMENTS // rows, num_batches)
        buffer = block_buffer(group * rows)
        sums = np.empty(group)
        squares = np.empty(group)
        for c in range(channels):
            column = x[:, :, c]
            for lo in range(0, num_batches, group):
                hi = min(lo + group, num_batches)
                block = buffer[: (hi - lo) * rows].reshape(hi - lo, rows)
                np.copyto(block, column[lo:hi], casting="unsafe")
                block_mean = sums[: hi - lo]
                np.einsum("kr->k", block, out=block_mean)
                block_mean /= rows
                block -= block_mean[:, None]
                np.einsum("kr,kr->k", block, block, out=squares[: hi - lo])
                mean[lo:hi, c] = block_mean
                m2[lo:hi, c] = squares[: hi - lo]
    elif per_batch <= BLOCK_ELEMENTS:
        group = min(BLOCK_ELEMENTS // per_batch, num_batches)
        buffer = block_buffer(group * per_batch)
        for lo in range(0, num_batches, group):
            hi = min(lo + group, num_batches)
            batches = buffer[: (hi - lo) * per_batch].reshape(hi - lo, rows, channels)
            np.copyto(batches, x[lo:hi], casting="unsafe")
            block_mean = mean[lo:hi]
            np.einsum("krc->kc", batches, out=block_mean)
            block_mean /= rows
            batches -= block_mean[:, None, :]
            np.einsum("krc,krc->kc", batches, batches, out=m2[lo:hi])
    else:
        step = max(BLOCK_ELEMENTS // channels, 1)
        buffer = block_buffer(min(step, rows) * channels)
        mean.fill(0.0)
        m2.fill(0.0)
        for k in range(num_batches):
            batch = x[k]
            for lo in range(0, rows, step):
                piece = batch[lo : lo + step]
                block = buffer[: piece.size].reshape(piece.shape)
                np.copyto(block, piece, casting="unsafe")
                mean[k] += np.einsum("rc->c", block)
            mean[k] /= rows
            for lo in range(0, rows, step):
                piece = batch[lo : lo + step]
                block = buffer[: piece.size].reshape(piece.shape)
                np.copyto(block, piece, casting="unsafe")
                block -= mean[k]
                m2[k] += np.einsum("rc,rc->c", block, block)
    m2 /= rows
    return mean, m2


def merged_sample_moments(rows: npt.NDArray[Any], per_batch: int) -> Moments:
    """The moments of batches of ``per_batch`` samples, from each sample's own.

    ``rows`` is ``(n, P, C)``, any strides (channels-first data, whose batch
    is no single run of rows, is read in place). Each sample's two-pass
    moments over its ``P`` positions are merged per batch, all counts equal:
    ``mean = mean_b(mean_s)``, ``M2 = sum_b(M2_s) + P * sum_b((mean_s - mean)**2)``
    (Chan et al.'s merge; never ``E[x**2] - E[x]**2``).
    """
    n, positions, channels = rows.shape
    samples = batched_moments(rows)  # per sample: K = n, R = P
    k = n // per_batch
    means = samples.mean.reshape(k, per_batch, channels)
    mean = means.sum(axis=1) / per_batch
    spread = means - mean[:, None, :]
    np.square(spread, out=spread)
    m2 = samples.variance.reshape(k, per_batch, channels).sum(axis=1) * positions
    m2 += positions * spread.sum(axis=1)
    count = np.full((k, channels), float(per_batch * positions))
    return Moments(count, mean, m2 / (per_batch * positions))


def moments(x: npt.NDArray[np.floating], mask: BoolArray | None = None) -> Moments:
    """Counts, means and variances of one batch ``x`` of shape ``(R, C)``."""
    result = batched_moments(x[None], None if mask is None else mask[None])
    return Moments(result.count[0], result.mean[0], result.variance[0])


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise merge of the moments of two disjoint pieces.

    ``n = na + nb``, ``mean = mean_a + (mean_b - mean_a) * nb / n``,
    ``M2 = M2_a + M2_b + (mean_b - mean_a)**2 * na * nb / n``
    (Chan, Golub and LeVeque, 1979). Empty pieces merge as the identity.
    """
    n = a.count + b.count
    safe = np.where(n > 0, n, 1.0)
    delta = b.mean - a.mean
    mean = a.mean + delta * (b.count / safe)
    m2 = (
        a.variance * a.count
        + b.variance * b.count
        + delta * delta * (a.count * b.count / safe)
    )
    return Moments(n, np.where(n > 0, mean, 0.0), np.where(n > 0, m2 / safe, 0.0))


def shard_bounds(samples: int, replicas: int) -> list[tuple[int, int]]:
    """Sample ranges of the non-empty shards of a batch, as ``np.array_split``.

    The first ``samples % replicas`` shards hold one sample more; shards that
    would be empty (a batch smaller than ``replicas``) are left out.
    """
    base, extra = divmod(samples, replicas)
    bounds = []
    start = 0
    for r in range(min(replicas, samples)):  # the shards past `samples` are empty
        size = base + (1 if r < extra else 0)
        if size:
            bounds.append((start, start + size))
        start += size
    return bounds


def replica_moments(
    x: npt.NDArray[np.floating],
    mask: BoolArray | None,
    samples_per_batch: int,
    replicas: int,
) -> tuple[Moments, list[tuple[tuple[int, int], Moments]]]:
    """Batch statistics as ``replicas`` unsynchronized devices would use them.

    Each batch of ``x`` (``(K, R, C)`` with ``R = samples_per_batch * P``) is
    split into contiguous shards of samples; each shard has its own moments.
    The statistics that update the moving averages are the mean over the
    shards that saw a channel of their means and of their variances.

    Returns:
        ``(update, shards)``: the ``(K, C)`` moments for the moving update
        (count is the batch's total), and each shard's row range with its own
        moments, for the outputs.
    """
    per_sample = x.shape[1] // max(samples_per_batch, 1)
    shards = []
    for start, stop in shard_bounds(samples_per_batch, replicas):
        rows = slice(start * per_sample, stop * per_sample)
        shard_mask = None if mask is None else mask[:, rows]
        shards.append(((start, stop), batched_moments(x[:, rows], shard_mask)))
    return combine_shards([m for _, m in shards]), shards


def combine_shards(shards: Sequence[Moments]) -> Moments:
    """The statistics unsynchronized replicas update the moving averages with.

    Per channel, the mean over the shards that saw it (count above 0) of the
    shard means and of the shard variances; ``count`` is the shards' total.
    Each shard's arrays are ``(..., C)``; so is the result.
    """
    seen = np.stack([m.count > 0 for m in shards])
    num_seen = seen.sum(axis=0)
    safe = np.maximum(num_seen, 1)
    mean = np.stack([m.mean for m in shards]).sum(axis=0) / safe
    variance = np.stack([m.variance for m in shards]).sum(axis=0) / safe
    count = np.stack([m.count for m in shards]).sum(axis=0)
    return Moments(count, mean, variance)


def to_rows(data: npt.NDArray[np.generic], axis: int) -> npt.NDArray[np.generic]:
    """View ``(N, ...)`` data as ``(N, P, C)``: the channel axis last.

    A free reshape when the channel axis is already last; a copy otherwise.
    ``axis`` is normalized (non-negative, not 0).
    """
    # A plain ndarray view: views of an np.memmap run Python code
    # (__array_finalize__) under the GIL each time one is sliced.
    data = np.asarray(data)
    moved = data if axis == data.ndim - 1 else np.moveaxis(data, axis, -1)
    return moved.reshape(data.shape[0], -1, moved.shape[-1])


def from_rows(
    rows: npt.NDArray[np.generic], shape: tuple[int, ...], axis: int
) -> npt.NDArray[np.generic]:
    """Inverse of :func:`to_rows` for data of ``shape``."""
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    moved = rows.reshape(moved_shape)
    return moved if axis == len(shape) - 1 else np.moveaxis(moved, -1, axis)
