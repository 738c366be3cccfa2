"""When to compute the unmasked batch moments with the compiled kernel.

:mod:`bncli.native.moments` is built by the install when a C compiler is
there; this module imports it once and calls it for float32 and float64 data
in native byte order, aligned, with strides a whole number of elements apart.
For anything else, when it was not built, or when the environment variable
``BNCLI_KERNEL=numpy`` was set at import, :func:`native_moments` returns
``None`` and :mod:`bncli.kernels` computes with NumPy
(:func:`bncli.kernels.numpy_moments`, the reference).

The C kernel computes what the NumPy one does, ``mean = sum(x) / R`` then
``variance = sum((x - mean)**2) / R`` in float64, in its own fixed summation
order: the same input gives the same bits on every call, within rounding of
the NumPy result.
"""

from __future__ import annotations

import os
from types import ModuleType

import numpy as np
import numpy.typing as npt

__all__ = [
    "AVAILABLE",
    "KERNEL",
    "native_column_sums",
    "native_ema_offsets",
    "native_moments",
]

compiled: ModuleType | None
try:
    from bncli.native import moments as compiled
except ImportError:  # not built: the NumPy kernels serve
    compiled = None

#: Whether the compiled kernel was built and imports.
AVAILABLE = compiled is not None

#: ``"native"`` or ``"numpy"``: the kernel the unmasked moments use, read once
#: from ``BNCLI_KERNEL`` (``numpy`` forces NumPy; the C kernel where built).
KERNEL = (
    "native"
    if AVAILABLE and os.environ.get("BNCLI_KERNEL", "").strip().lower() != "numpy"
    else "numpy"
)

Float64Array = npt.NDArray[np.float64]


def native_moments(
    x: npt.NDArray[np.floating],
    mean: Float64Array | None = None,
    m2: Float64Array | None = None,
    *,
    force: bool = False,
) -> tuple[Float64Array, Float64Array] | None:
    """``(mean, variance)``, each ``(K, C)``, of ``x`` ``(K, R, C)`` in C.

    ``None`` where the C kernel does not apply: not built, ``x`` not
    float32/float64 in native byte order, unaligned, or ``BNCLI_KERNEL=numpy``
    (unless ``force``, which only tests use). ``mean`` and ``m2``, where given,
    are float64 ``(K, C)`` arrays to write into, as for
    :func:`bncli.kernels.batched_moments`; any layout will do.
    """
    if compiled is None or not (force or KERNEL == "native"):
        return None
    if x.ndim != 3 or x.dtype.char not in "fd" or not x.dtype.isnative:
        return None
    itemsize = x.dtype.itemsize
    if not x.flags.aligned or any(s % itemsize for s in x.strides):
        return None
    num_batches, rows, channels = x.shape
    shape = (num_batches, channels)
    mean_out = _writable(mean, shape, x)
    m2_out = _writable(m2, shape, x)
    if np.may_share_memory(m2_out, mean_out):
        m2_out = np.empty(shape)
    stride_k, stride_r, stride_c = (s // itemsize for s in x.strides)
    compiled.moments(
        x,
        mean_out,
        m2_out,
        num_batches,
        rows,
        channels,
        stride_k,
        stride_r,
        stride_c,
        x.dtype.char,
    )
    if mean is None:
        mean = mean_out
    elif mean_out is not mean:
        np.copyto(mean, mean_out)
    if m2 is None:
        m2 = m2_out
    elif m2_out is not m2:
        np.copyto(m2, m2_out)
    return mean, m2


def _writable(
    out: Float64Array | None, shape: tuple[int, int], x: npt.NDArray[np.floating]
) -> Float64Array:
    """``out`` if the kernel can write into it directly, else a fresh array."""
    if (
        out is not None
        and out.shape == shape
        and out.dtype == np.float64
        and out.flags.c_contiguous
        and out.flags.writeable
        and out.flags.aligned
        and not np.may_share_memory(out, x)
    ):
        return out
    return np.empty(shape)


def native_ema_offsets(
    mean: Float64Array,
    variance: Float64Array,
    momentum: float,
    weight: float | None = None,
) -> tuple[Float64Array, Float64Array] | None:
    """The moving-average offsets of ``K`` batches' ``(K, C)`` moments, in C.

    ``sum_k (1 - momentum) * momentum**(K-1-k) * statistic_k`` per channel,
    as :func:`bncli.kernels.fold_batches` computes it for unmasked batches,
    summed in batch order (Horner's form; ``weight`` in place of
    ``1 - momentum`` where given). None where the kernel does not
    serve (not built, ``BNCLI_KERNEL=numpy``, other layouts) or where a
    statistic or an offset is not finite: the NumPy fold then decides.
    """
    if compiled is None or KERNEL != "native":
        return None
    if mean.ndim != 2 or mean.dtype != np.float64 or variance.dtype != np.float64:
        return None
    if not (mean.flags.c_contiguous and variance.flags.c_contiguous):
        return None
    num_batches, channels = mean.shape
    mean_offset = np.empty(channels)
    variance_offset = np.empty(channels)
    finite = compiled.ema_fold(
        mean,
        variance,
        num_batches,
        channels,
        float(momentum),
        mean_offset,
        variance_offset,
        *(() if weight is None else (float(weight),)),
    )
    return (mean_offset, variance_offset) if finite else None


def native_column_sums(
    mean: Float64Array, variance: Float64Array
) -> tuple[Float64Array, Float64Array] | None:
    """Per-channel sums of ``K`` batches' ``(K, C)`` moments, in C.

    The fold of momentum and weight 1 (a product by 1 is exact), in batch
    order: NumPy's ``sum(axis=0)`` over so narrow an array costs 5x more.
    None as for :func:`native_ema_offsets`.
    """
    return native_ema_offsets(mean, variance, 1.0, 1.0)
