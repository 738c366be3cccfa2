"""The health of moving statistics: dead and exploding channels, initializer share.

A channel is *dead* when its moving variance is under
:data:`DEAD_SHARE_OF_EPSILON` of epsilon (epsilon then dominates the
denominator, and the channel's outputs are squashed toward beta), and
*exploding* when it is above :data:`EXPLODING_VARIANCE` or not finite. A
state's moving statistics still lean on their initializers while
:meth:`bncli.BatchNormalization.initializer_share` is above
:data:`SHARE_WARNING`. The same rules serve states (``bncli inspect``) and the
BatchNormalization layers of Keras files.

Example:
    >>> import numpy as np
    >>> channel_flags(np.array([1e-9, 1.0, np.inf]), epsilon=1e-3)
    ['dead', '', 'exploding']
    >>> batches_to_share(0.99)
    459
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEAD_SHARE_OF_EPSILON",
    "EXPLODING_VARIANCE",
    "SHARE_WARNING",
    "StateHealth",
    "batches_to_share",
    "channel_flags",
    "convergence",
    "state_health",
    "variables_health",
]

#: Initializer share above which a state is said to need more batches.
SHARE_WARNING = 0.01
#: A channel is dead when its moving variance is under this share of epsilon.
DEAD_SHARE_OF_EPSILON = 0.01
#: A channel is exploding when its moving variance is above this.
EXPLODING_VARIANCE = 1e12


def channel_flags(moving_variance: npt.ArrayLike, epsilon: float) -> list[str]:
    """Per channel: ``""``, ``"dead"`` or ``"exploding"``."""
    variance = np.asarray(moving_variance, dtype=np.float64)
    dead = variance < DEAD_SHARE_OF_EPSILON * epsilon
    exploding = ~dead & ((variance > EXPLODING_VARIANCE) | ~np.isfinite(variance))
    return [
        "dead" if d else "exploding" if e else ""
        for d, e in zip(dead.tolist(), exploding.tolist(), strict=True)
    ]


def batches_to_share(momentum: float, share: float = SHARE_WARNING) -> int:
    """Batches after which the initial values weigh under ``share``: ``momentum ** n``."""
    if momentum <= 0:
        return 1
    if momentum >= 1:
        return 0
    return math.ceil(math.log(share) / math.log(momentum))


def variables_health(
    moving_mean: npt.ArrayLike, moving_variance: npt.ArrayLike, epsilon: float
) -> str:
    """One line on a layer's moving statistics, as ``inspect`` shows a Keras file's."""
    variance = np.asarray(moving_variance, dtype=np.float64)
    mean = np.asarray(moving_mean, dtype=np.float64)
    if len(variance) and np.all(variance == 1.0) and np.all(mean == 0.0):
        return "moving statistics at their initial values (never trained?)"
    flags = channel_flags(variance, epsilon)
    dead, exploding = flags.count("dead"), flags.count("exploding")
    if dead or exploding:
        return f"{dead} dead, {exploding} exploding channel(s)"
    if not len(variance):
        return "ok"
    std = np.sqrt(variance)
    return f"ok: moving std {std.min():.3g} .. {std.max():.3g}"


@dataclasses.dataclass(frozen=True)
class StateHealth:
    """The health of a state's moving statistics.

    Attributes:
        flags: per channel, ``""``, ``"dead"`` or ``"exploding"``.
        share: per channel, the initializers' weight in the moving statistics.
        leaning: the features whose share is above :data:`SHARE_WARNING`.
        momentum: the layer's momentum.
        batches_needed: batches of that momentum for a share under
            :data:`SHARE_WARNING`, from the start.
    """

    flags: list[str]
    share: npt.NDArray[np.float64]
    leaning: list[str]
    momentum: float
    batches_needed: int

    @property
    def warning(self) -> str | None:
        """The advice to fit on more batches, or None when no channel leans."""
        if not self.leaning:
            return None
        listed = ", ".join(self.leaning[:8]) + (
            f" and {len(self.leaning) - 8} more" if len(self.leaning) > 8 else ""
        )
        return (
            f"the initializers still weigh {self.share.max():.1%} in the moving "
            f"statistics of {listed}; fit on more batches (momentum {self.momentum} "
            f"needs about {self.batches_needed} batches to fall under 1%)"
        )


def state_health(layer: Any) -> StateHealth:
    """The health of a built :class:`bncli.BatchNormalization`'s statistics."""
    share = np.asarray(layer.initializer_share(), dtype=np.float64)
    features: Sequence[str] = layer.features
    return StateHealth(
        flags=channel_flags(layer.moving_variance64, layer.epsilon),
        share=share,
        leaning=[f for f, s in zip(features, share, strict=True) if s > SHARE_WARNING],
        momentum=layer.momentum,
        batches_needed=batches_to_share(layer.momentum),
    )


#: Initializers whose value is a constant, so that their share can be taken out.
_CONSTANT_INITIALIZERS = frozenset({"Zeros", "Ones", "Constant"})


def convergence(layer: Any) -> dict[str, Any]:
    """How far a state's moving statistics have come from their start.

    As ``inspect --json`` shows it under ``"convergence"``:

    - ``window``: ``1 / (1 - momentum)`` batches, the moving average's
      effective window (None for momentum 1, and outside ``"ema"``);
    - ``share``: per channel, the initializers' weight still in the moving
      statistics (:meth:`bncli.BatchNormalization.initializer_share`);
    - ``batches_to_1_percent``: batches still needed for the largest share to
      fall under 1%: ``ceil(log(0.01) / log(momentum))`` less the fewest
      batches any channel has seen, 0 once under (None for momentum 1);
    - ``debiased``: ``(moving - share * initial) / (1 - share)`` per channel,
      the moving statistics with the initial values taken out, where both
      moving initializers are constants (else None); None for a channel
      whose share is still 1.
    """
    share = np.asarray(layer.initializer_share(), dtype=np.float64)
    largest = float(share.max()) if len(share) else 0.0
    momentum = float(layer.momentum)
    ema = layer.statistics == "ema"
    window = 1.0 / (1.0 - momentum) if ema and momentum < 1 else None
    if largest < SHARE_WARNING:
        needed: int | None = 0
    elif not ema:
        needed = 1  # one batch of each channel not yet seen
    elif momentum >= 1:
        needed = None
    else:
        fewest = int(np.min(layer.channel_batches)) if len(share) else 0
        needed = max(batches_to_share(momentum) - fewest, 0)
    return {
        "window": window,
        "share": [float(v) for v in share],
        "batches_to_1_percent": needed,
        "debiased": _debiased(layer, share),
    }


def _debiased(layer: Any, share: npt.NDArray[np.float64]) -> dict[str, Any] | None:
    from bncli.keras_compat.compute import initial_value

    initial = {}
    for name in ("moving_mean", "moving_variance"):
        config = getattr(layer, f"{name}_initializer")
        if config.get("class_name") not in _CONSTANT_INITIALIZERS:
            return None
        value = initial_value(config, (layer.channels,), np.dtype(np.float64), None)
        initial[name] = np.asarray(value, dtype=np.float64)
    moving = {
        "moving_mean": np.asarray(layer.moving_mean64, dtype=np.float64),
        "moving_variance": np.asarray(layer.moving_variance64, dtype=np.float64),
    }
    left = 1.0 - share
    out: dict[str, Any] = {}
    for name, values in moving.items():
        safe = np.where(left > 0, left, 1.0)
        debiased = (values - share * initial[name]) / safe
        out[name] = [
            None if gone <= 0 else float(v)
            for v, gone in zip(debiased, left, strict=True)
        ]
    return out
