"""The normalization: ``gamma * (x - mean) / sqrt(variance + epsilon) + beta``.

Computed in float64 whatever the data's dtype (the subtraction first, so
that data far from zero keeps its precision), in blocks of the kernels'
working buffer where the output has a place to go (:func:`normalize` with
``out``), and as one affine map per channel where a caller wants its
coefficients (:func:`affine_coefficients`). Arrays in the rows layout of
:mod:`bncli.kernels`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bncli import kernels
from bncli.kernels import Float64Array

__all__ = ["affine_coefficients", "normalize"]


def affine_coefficients(
    mean: Float64Array,
    variance: Float64Array,
    gamma: npt.NDArray[np.floating] | None,
    beta: npt.NDArray[np.floating] | None,
    epsilon: float,
) -> tuple[Float64Array, Float64Array]:
    """The normalization as one affine map per channel: ``y = x * a + b``.

    ``a = gamma / sqrt(variance + epsilon)`` and ``b = beta - mean * a``, with
    gamma 1 and beta 0 where absent. Broadcasts over leading axes.
    """
    inv = 1.0 / np.sqrt(np.asarray(variance, dtype=np.float64) + epsilon)
    scale = inv if gamma is None else inv * np.asarray(gamma, dtype=np.float64)
    shift = -np.asarray(mean, dtype=np.float64) * scale
    if beta is not None:
        shift = shift + np.asarray(beta, dtype=np.float64)
    return scale, shift


def normalize(
    x: npt.NDArray[np.floating],
    mean: Float64Array,
    variance: Float64Array,
    gamma: npt.NDArray[np.floating] | None,
    beta: npt.NDArray[np.floating] | None,
    epsilon: float,
    out: npt.NDArray[np.floating] | None = None,
) -> npt.NDArray[np.floating]:
    """``gamma * (x - mean) / sqrt(variance + epsilon) + beta``, in float64.

    ``x`` is ``(..., C)`` and the statistics broadcast against it (``(C,)`` or
    ``(K, 1, C)`` for per-batch statistics). The subtraction comes first so
    that data far from zero keeps its precision (Keras folds to ``x * a + b``
    in float32, which loses it).

    Args:
        x: the data.
        mean, variance: the statistics to normalize with.
        gamma, beta: the layer's scale and offset, or ``None`` (1 and 0).
        epsilon: added to the variance.
        out: where to write the result, of ``x``'s shape and any float dtype
            (it is computed in float64 and rounded once on the way in). With
            ``out``, rows layout ``(K, R, C)`` is computed a cache-sized block
            at a time, with no float64 copy of the whole of ``x``.

    Returns:
        The float64 result, or ``out``.
    """
    inv = 1.0 / np.sqrt(np.asarray(variance, dtype=np.float64) + epsilon)
    if gamma is not None:
        inv = inv * np.asarray(gamma, dtype=np.float64)
    mean64 = np.asarray(mean, dtype=np.float64)
    beta64 = None if beta is None else np.asarray(beta, dtype=np.float64)
    if out is not None and _blockable(x, mean64, inv, beta64):
        _normalize_blocks(x, mean64, inv, beta64, out)
        return out
    y: Float64Array = np.subtract(x, mean64, dtype=np.float64)
    y *= inv
    if beta64 is not None:
        y += beta64
    if out is None:
        return y
    np.copyto(out, y, casting="unsafe")
    return out


def _blockable(x: npt.NDArray[np.generic], *stats: Float64Array | None) -> bool:
    """Whether ``x`` is ``(K, R, C)`` and each statistic ``(C,)`` or ``(K', 1, C)``."""
    return x.ndim == 3 and all(
        s is None or s.ndim <= 1 or (s.ndim == 3 and s.shape[1] == 1) for s in stats
    )


def _normalize_blocks(
    x: npt.NDArray[np.floating],
    mean: Float64Array,
    scale: Float64Array,
    beta: Float64Array | None,
    out: npt.NDArray[np.floating],
) -> None:
    """``out = (x - mean) * scale + beta`` over cache-sized float64 blocks.

    Each block is copied to the float64 buffer, computed there in cache and
    rounded once into ``out``: the result is exactly the float64 one, cast.
    Computing in float32 instead would round ``x - mean`` itself, so outputs
    near zero (where ``x`` is close to the mean) would keep only an absolute
    precision of ``ulp(x) * scale``, and data far from zero (``|mean| / std``
    large) would lose its digits; in cache the float64 passes cost little
    next to reading and writing the data.
    """
    num_batches, rows, channels = x.shape
    if not x.size:
        return
    step = max(kernels.BLOCK_ELEMENTS // max(channels, 1), 1)

    def per_batch(s: Float64Array, lo: int, hi: int) -> Float64Array:
        return s if s.ndim < 3 or s.shape[0] == 1 else s[lo:hi]

    if rows * channels <= kernels.BLOCK_ELEMENTS:
        group = max(kernels.BLOCK_ELEMENTS // (rows * channels), 1)
        spans = [
            (lo, min(lo + group, num_batches), 0, rows)
            for lo in range(0, num_batches, group)
        ]
    else:
        spans = [
            (k, k + 1, lo, min(lo + step, rows))
            for k in range(num_batches)
            for lo in range(0, rows, step)
        ]
    buffer = kernels.block_buffer(
        max((hi - lo) * (r1 - r0) for lo, hi, r0, r1 in spans) * channels
    )
    for lo, hi, r0, r1 in spans:
        block = buffer[: (hi - lo) * (r1 - r0) * channels].reshape(
            hi - lo, r1 - r0, channels
        )
        np.copyto(block, x[lo:hi, r0:r1], casting="unsafe")
        block -= per_batch(mean, lo, hi)
        block *= per_batch(scale, lo, hi)
        if beta is not None:
            block += per_batch(beta, lo, hi)
        np.copyto(out[lo:hi, r0:r1], block, casting="unsafe")
