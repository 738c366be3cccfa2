"""Compiled kernels, built by the package's install when a C compiler is there.

``bncli.native.moments`` (``moments.c``, the Python C API and the buffer
protocol only) computes the unmasked per-batch moments of float32 and float64
data; :mod:`bncli.fast_moments` decides when to call it, and
:func:`bncli.kernels.numpy_moments` stays the reference and the fallback.
``bncli.native.crc`` (``crc.c``) sums zlib's CRC-32 by carry-less
multiplication for :mod:`bncli.io.checksums`, ``zlib.crc32`` its fallback.
"""
