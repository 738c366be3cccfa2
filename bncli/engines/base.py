"""What every engine shares: the option records, the summaries, the checks,
and :class:`EngineLayer`, all an engine may know of a layer.

Engines see a layer only through :class:`EngineLayer` (which
:class:`bncli.BatchNormalization` satisfies) and never import
:mod:`bncli.layer`: the layer imports the engines, never the other way round.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bncli import kernels
from bncli.errors import StateFrozenError, UsageError
from bncli.io.sources import ReadOptions

__all__ = [
    "RESUMABLE_CHANGES",
    "RESUMED_OPTIONS",
    "BlockFold",
    "EngineLayer",
    "FitOptions",
    "FitParams",
    "FitSummary",
    "TransformOptions",
    "TransformSummary",
    "check_positive",
    "require_trainable",
]


class EngineLayer(Protocol):
    """What an engine needs of a layer, and all it may touch.

    :class:`bncli.BatchNormalization` is one. The config and shape come
    first, then the statistics in float64, and the two things a fit changes:
    :meth:`apply_fold` and the progress record (``epochs``, ``resume``).
    """

    @property
    def axis(self) -> int: ...
    @property
    def momentum(self) -> float: ...
    @property
    def epsilon(self) -> float: ...
    @property
    def synchronized(self) -> bool: ...
    @property
    def trainable(self) -> bool: ...
    @property
    def built(self) -> bool: ...
    @property
    def kind(self) -> str: ...
    @property
    def features(self) -> list[str]: ...
    @property
    def sample_shape(self) -> tuple[int, ...]: ...
    @property
    def channels(self) -> int: ...
    @property
    def gamma(self) -> npt.NDArray[Any] | None: ...
    @property
    def beta(self) -> npt.NDArray[Any] | None: ...
    @property
    def moving_mean64(self) -> npt.NDArray[np.float64]: ...
    @property
    def moving_variance64(self) -> npt.NDArray[np.float64]: ...

    #: Epochs fitted in all.
    epochs: int
    #: The record of an interrupted fit (see :data:`RESUMED_OPTIONS`), or None.
    resume: dict[str, Any] | None
    #: How the moving statistics sum up batches (:data:`bncli.kernels.STATISTICS`).
    statistics: str
    #: Batches fitted in all (since the statistics last started).
    batches_seen: int

    def require_whole(self) -> None:
        """Raise a state error for a partial state."""

    def reset_statistics(self, statistics: str | None = None) -> None:
        """Start the moving statistics and the progress again (in ``statistics``)."""

    def initializer_share(self) -> npt.NDArray[np.float64]:
        """Per channel, the initial values' weight still in the moving statistics."""

    def require_built(self) -> None:
        """Raise a state error unless the layer has its variables."""

    def build(
        self,
        sample_shape: Sequence[int],
        features: Sequence[str] | None = None,
        kind: str = "array",
    ) -> None:
        """Allocate the variables for samples of ``sample_shape``."""

    def apply_fold(self, fold: kernels.AnyFold, *, batches: int, samples: int) -> None:
        """Advance the moving statistics by ``fold``, and the counters."""

    def output_dtype(self, name: str | None = None) -> np.dtype[Any]:
        """The outputs' dtype: ``name``, else the layer's compute dtype."""


def require_trainable(layer: EngineLayer) -> None:
    """Refuse to fit a frozen layer (exit 4)."""
    if not layer.trainable:
        raise StateFrozenError(
            "state is frozen (trainable=False), so fit would not change it",
            hint="unfreeze it first with: bncli unfreeze STATE",
        )


@dataclasses.dataclass(frozen=True)
class BlockFold:
    """What an engine hands the fit session for a run of whole batches.

    Attributes:
        fold: the affine map of the batches on the moving statistics.
        batches: how many batches it sums up.
        samples: how many samples they hold.
        end: the stream position just after them, in the epoch (where a
            checkpoint taken after them resumes).
    """

    fold: kernels.AnyFold
    batches: int
    samples: int
    end: int


def check_positive(name: str, value: int) -> int:
    """``value`` as an int, or a usage error unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class FitSummary:
    """What one call of :meth:`BatchNormalization.fit` did."""

    batches: int
    samples: int
    epochs: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class FitParams:
    """What a worker needs to fold a block."""

    batch_size: int
    momentum: float
    replicas: int
    synchronized: bool
    channels: int
    #: ``"ema"``, ``"precise"`` or ``"exact"``.
    statistics: str = "ema"

    @property
    def one_shard(self) -> bool:
        """Whether each batch's moments are taken whole, not per replica's shard
        (one replica, synchronized ones, or ``"exact"``, which takes every value)."""
        return self.replicas == 1 or self.synchronized or self.statistics == "exact"


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How a fit reads and batches its inputs: the data options of ``bncli fit``.

    One record for the CLI, the Python API and both engines (the layer's own
    options, momentum and the rest, live on the layer). ``workers`` left at
    ``None`` means every core.
    """

    batch_size: int = 32
    epochs: int = 1
    drop_remainder: bool = False
    columns: Sequence[str] | None = None
    exclude: Sequence[str] | None = None
    mask_column: str | None = None
    mask: Sequence[str | os.PathLike[str]] | None = None
    replicas: int = 1
    nan_policy: str = "error"
    workers: int | None = None
    #: ``"ema"``, ``"precise"`` or ``"exact"``; None keeps the layer's mode.
    statistics: str | None = None
    #: Start the moving statistics and the progress again before the fit.
    reset_statistics: bool = False
    #: Go on with whole epochs until the initializers' largest share is
    #: under this (``"ema"`` only), for at most ``max_epochs`` in all.
    until_share: float | None = None
    max_epochs: int = 1000
    #: CSV's delimiter, an NPZ archive's array.
    read: ReadOptions = dataclasses.field(default_factory=ReadOptions)

    def checked(self) -> FitOptions:
        """These options, with every count checked to be a positive integer."""
        if self.statistics is not None and self.statistics not in kernels.STATISTICS:
            raise UsageError(
                f"statistics must be one of {', '.join(kernels.STATISTICS)}, "
                f"got {self.statistics!r}"
            )
        return dataclasses.replace(
            self,
            batch_size=check_positive("batch size", self.batch_size),
            epochs=check_positive("epochs", self.epochs),
            max_epochs=check_positive("max epochs", self.max_epochs),
            replicas=check_positive("replicas", self.replicas),
            workers=None
            if self.workers is None
            else check_positive("workers", self.workers),
        )


#: The options a checkpoint records and ``fit --resume`` restores.
#: Options a resumed fit may change: they change nothing already folded.
RESUMABLE_CHANGES = frozenset({"nan_policy"})


RESUMED_OPTIONS = (
    "batch_size",
    "epochs",
    "drop_remainder",
    "replicas",
    "mask_column",
    "mask",
    "nan_policy",
)

#: How the inputs are read (``FitOptions.read``): a resumed fit reads them
#: as the interrupted one did (records from before these were kept: as given).
RESUMED_READ_OPTIONS = ("delimiter", "array")


@dataclasses.dataclass(frozen=True)
class TransformOptions:
    """How a transform normalizes its inputs: the options of ``bncli transform``.

    ``training`` on a frozen layer runs as inference, as in Keras.
    ``workers`` left at ``None`` means every core.
    """

    training: bool = False
    batch_size: int = 32
    replicas: int = 1
    output_dtype: str | None = None
    overwrite: bool = False
    mask_column: str | None = None
    mask: Sequence[str | os.PathLike[str]] | None = None
    nan_policy: str = "error"
    workers: int | None = None
    #: Other files the transform reads (its state): the output may not be one.
    reads: Sequence[str | os.PathLike[str]] = ()
    #: CSV's delimiter (inputs and a CSV output), an NPZ archive's array.
    read: ReadOptions = dataclasses.field(default_factory=ReadOptions)

    def checked(self) -> TransformOptions:
        """These options, with every count checked to be a positive integer."""
        return dataclasses.replace(
            self,
            batch_size=check_positive("batch size", self.batch_size),
            replicas=check_positive("replicas", self.replicas),
            workers=None
            if self.workers is None
            else check_positive("workers", self.workers),
        )


@dataclasses.dataclass(frozen=True)
class TransformSummary:
    """What one transform did."""

    samples: int
    output: str
    seconds: float
