"""Limits on what one input may make bncli allocate (documented in the README),
and the cores this process may use."""

import os

#: Most channels a layer may have: 16,777,216 (a float64 vector of them is 128 MiB).
MAX_CHANNELS = 1 << 24


def available_cores() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1
