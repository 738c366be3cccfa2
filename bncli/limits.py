"""Limits on what one input may make bncli allocate (documented in the README)."""

#: Most channels a layer may have: 16,777,216 (a float64 vector of them is 128 MiB).
MAX_CHANNELS = 1 << 24
