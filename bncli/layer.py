"""``BatchNormalization``: Keras 3's layer on NumPy arrays and on files.

Split as Keras splits it: the constructor checks and stores the config,
:meth:`BatchNormalization.build` allocates the variables once the channels
are known, :meth:`BatchNormalization.__call__` does the math (through
:mod:`bncli.kernels`), :meth:`BatchNormalization.get_config` returns JSON
data. Learned values (the variables, the float64 accumulators of the moving
statistics and the progress counters) are kept apart from the config.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from bncli import kernels, normalization
from bncli.engines.base import FitSummary
from bncli.errors import ConfigError, DataError, StateError
from bncli.keras_compat import compute, dtypes, specs

__all__ = ["CONFIG_KEYS", "BatchNormalization", "FitSummary", "load"]

_INITIALIZER_NAMES = (
    "gamma_initializer",
    "beta_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
)
#: The keys of Keras 3.15's ``BatchNormalization.get_config()``, in its order.
CONFIG_KEYS = (
    "name",
    "trainable",
    "dtype",
    "axis",
    "momentum",
    "epsilon",
    "center",
    "scale",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "synchronized",
    "renorm",
    "renorm_clipping",
    "renorm_momentum",
)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_statistics(value: Any) -> str:
    if value not in kernels.STATISTICS:
        raise ConfigError(
            f"statistics must be one of {', '.join(kernels.STATISTICS)}, got {value!r}"
        )
    return str(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return float(value)


class BatchNormalization:
    """Keras 3 ``BatchNormalization`` on NumPy arrays, with statistics in float64.

    Per channel (a position on ``axis``), over every other axis: in training
    mode ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta`` with the
    batch's mean and biased variance, and the moving statistics move toward
    them: ``moving = moving * momentum + batch * (1 - momentum)``. In
    inference mode the moving statistics replace the batch's.

    Args:
        axis: the channel axis of the input (not 0, the batch axis).
        momentum: of the moving average, in ``[0, 1]``.
        epsilon: added to the variance, positive.
        center: whether there is a ``beta`` offset.
        scale: whether there is a ``gamma`` factor.
        beta_initializer, gamma_initializer, moving_mean_initializer,
            moving_variance_initializer: a Keras initializer name, spec
            string (``"constant:0.5"``) or serialized config.
        beta_regularizer, gamma_regularizer: a Keras regularizer, or None.
        beta_constraint, gamma_constraint: a Keras constraint, or None.
        synchronized: statistics over all replicas (see ``fit(replicas=)``).
        trainable: False freezes the layer: training runs as inference.
        dtype: a dtype policy name (``"float32"``, ``"mixed_float16"``, ...).
        name: the layer's name.
        seed: seeds the random initializers that have no seed of their own
            (gamma, beta, moving mean, moving variance get seed, seed + 1,
            seed + 2, seed + 3), and is stored in their configs.

    Raises:
        ValueError: a bad argument (a :class:`bncli.errors.ConfigError`).

    Example:
        >>> import numpy as np, bncli
        >>> bn = bncli.BatchNormalization(momentum=0.9)
        >>> y = bn(np.array([[1.0, 2.0], [3.0, 6.0]]), training=True)
        >>> bn.moving_mean.tolist()
        [0.20000000298023224, 0.4000000059604645]
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: str | dict[str, Any] = "zeros",
        gamma_initializer: str | dict[str, Any] = "ones",
        moving_mean_initializer: str | dict[str, Any] = "zeros",
        moving_variance_initializer: str | dict[str, Any] = "ones",
        beta_regularizer: str | dict[str, Any] | None = None,
        gamma_regularizer: str | dict[str, Any] | None = None,
        beta_constraint: str | dict[str, Any] | None = None,
        gamma_constraint: str | dict[str, Any] | None = None,
        synchronized: bool = False,
        *,
        renorm: bool = False,
        renorm_clipping: dict[str, float] | None = None,
        renorm_momentum: float = 0.99,
        trainable: bool = True,
        dtype: str | dict[str, Any] | None = None,
        name: str | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(axis, bool) or not isinstance(axis, int | np.integer):
            raise ConfigError(f"axis must be an integer, got {axis!r}")
        self.axis = int(axis)
        self.momentum = _check_float("momentum", momentum)
        if not 0.0 <= self.momentum <= 1.0:
            raise ConfigError(f"momentum must lie in [0, 1], got {momentum!r}")
        self.epsilon = _check_float("epsilon", epsilon)
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ConfigError(f"epsilon must be positive, got {epsilon!r}")
        self.center = _check_bool("center", center)
        self.scale = _check_bool("scale", scale)
        self.synchronized = _check_bool("synchronized", synchronized)
        self.trainable = _check_bool("trainable", trainable)
        if _check_bool("renorm", renorm):
            # Batch renormalization is refused, never silently ignored.
            raise ConfigError("renorm=True (batch renormalization) is not supported")
        self.renorm_clipping = renorm_clipping
        self.renorm_momentum = _check_float("renorm_momentum", renorm_momentum)
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer)
        ):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.dtype_policy = dtypes.parse_policy(dtype)
        self.name = "batch_normalization" if name is None else str(name)
        initializers = {
            "gamma_initializer": gamma_initializer,
            "beta_initializer": beta_initializer,
            "moving_mean_initializer": moving_mean_initializer,
            "moving_variance_initializer": moving_variance_initializer,
        }
        parsed = {}
        for offset, key in enumerate(_INITIALIZER_NAMES):
            config = specs.parse_initializer(initializers[key])
            inner = config.get("config", {})
            if self.seed is not None and "seed" in inner and inner["seed"] is None:
                config = {**config, "config": {**inner, "seed": self.seed + offset}}
            parsed[key] = config
        self.gamma_initializer: dict[str, Any] = parsed["gamma_initializer"]
        self.beta_initializer: dict[str, Any] = parsed["beta_initializer"]
        self.moving_mean_initializer: dict[str, Any] = parsed["moving_mean_initializer"]
        self.moving_variance_initializer: dict[str, Any] = parsed[
            "moving_variance_initializer"
        ]
        self.beta_regularizer = specs.parse_regularizer(beta_regularizer)
        self.gamma_regularizer = specs.parse_regularizer(gamma_regularizer)
        self.beta_constraint = specs.parse_constraint(beta_constraint)
        self.gamma_constraint = specs.parse_constraint(gamma_constraint)

        # Learned values, set by build().
        self.built = False
        self.features: list[str] = []
        self.kind = "array"
        self.sample_shape: tuple[int, ...] = ()
        self._gamma: npt.NDArray[Any] | None = None
        self._beta: npt.NDArray[Any] | None = None
        self.moving_mean64 = np.zeros(0)
        self.moving_variance64 = np.zeros(0)
        self.channel_batches = np.zeros(0, dtype=np.int64)
        self.channel_count = np.zeros(0)
        self.batches_seen = 0
        self.samples_seen = 0
        self.epochs = 0
        self.resume: dict[str, Any] | None = None
        #: How the moving statistics sum up batches: "ema" (Keras's moving
        #: average), "precise" or "exact" (see :data:`bncli.kernels.STATISTICS`).
        self.statistics = "ema"
        #: Where the moving statistics started: "initializers", or "imported"
        #: values (the share of the initializers is then 0).
        self.statistics_start = "initializers"
        #: A partial state's part (see :mod:`bncli.parts`), None for a whole one.
        self.part: dict[str, Any] | None = None

    # ------------------------------------------------------------------ config

    def get_config(self) -> dict[str, Any]:
        """The layer's config, with Keras 3.15 ``get_config()`` keys, as JSON data."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": self.dtype_policy.to_config(),
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": self.beta_initializer,
            "gamma_initializer": self.gamma_initializer,
            "moving_mean_initializer": self.moving_mean_initializer,
            "moving_variance_initializer": self.moving_variance_initializer,
            "beta_regularizer": self.beta_regularizer,
            "gamma_regularizer": self.gamma_regularizer,
            "beta_constraint": self.beta_constraint,
            "gamma_constraint": self.gamma_constraint,
            "synchronized": self.synchronized,
            "renorm": False,
            "renorm_clipping": None,
            "renorm_momentum": self.renorm_momentum,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BatchNormalization:
        """Build a layer from a Keras ``get_config()`` dict.

        Raises:
            ValueError: unknown keys or bad values (a ConfigError), as Keras.
        """
        if not isinstance(config, dict):
            raise ConfigError("a layer config must be a JSON object")
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ConfigError(f"unrecognized config keys: {', '.join(unknown)}")
        return cls(**config)

    # -------------------------------------------------------------- variables

    @property
    def channels(self) -> int:
        """C, the size of the channel axis (0 before build)."""
        return len(self.features)

    @property
    def channel_axis(self) -> int:
        """The channel axis as an index into the full input shape ``(N, ...)``."""
        return self._normalize_axis(len(self.sample_shape) + 1)

    def _normalize_axis(self, ndim: int) -> int:
        axis = self.axis + ndim if self.axis < 0 else self.axis
        if not 0 <= axis < ndim:
            raise ConfigError(
                f"axis {self.axis} is out of bounds for inputs of rank {ndim}"
            )
        if axis == 0:
            raise ConfigError(
                "axis 0 is the sample (batch) axis and cannot be the channel axis"
            )
        return axis

    def build(
        self,
        sample_shape: Sequence[int],
        features: Sequence[str] | None = None,
        kind: str = "array",
    ) -> None:
        """Allocate the variables for samples of ``sample_shape``.

        Args:
            sample_shape: the shape of one sample (the input without its first
                axis); its channel axis gives C.
            features: the channels' names; default ``"0"`` .. ``"C-1"``.
            kind: ``"table"`` or ``"array"``, the kind of input fitted.
        """
        sample_shape = tuple(int(d) for d in sample_shape)
        if not sample_shape:
            raise ConfigError(
                "inputs need at least 2 dimensions (samples and channels)"
            )
        self.sample_shape = sample_shape
        axis = self.channel_axis
        channels = sample_shape[axis - 1]
        if channels < 1:
            raise ConfigError("the channel axis is empty")
        self.features = (
            [str(i) for i in range(channels)] if features is None else list(features)
        )
        if len(self.features) != channels:
            raise ConfigError(f"{len(self.features)} feature names for {channels}")
        self.kind = kind
        shape = (channels,)

        def init(name: str) -> npt.NDArray[Any]:
            config = getattr(self, f"{name}_initializer")
            value = compute.initial_value(config, shape, np.dtype(np.float64), None)
            return self._in_variable_dtype(
                np.asarray(value, dtype=np.float64), f"{name}_initializer"
            )

        self._gamma = init("gamma") if self.scale else None
        self._beta = init("beta") if self.center else None
        self.built = True
        self.reset_statistics()

    def _cast(self, value: npt.NDArray[Any]) -> npt.NDArray[Any]:
        # Values beyond the variable dtype's range become inf, as in Keras;
        # the float64 accumulators keep them, and inspect flags the channel.
        with np.errstate(over="ignore"):
            return np.asarray(value).astype(self.dtype_policy.variable_dtype)

    def _in_variable_dtype(
        self, value: npt.NDArray[Any], name: str
    ) -> npt.NDArray[Any]:
        """``value`` in the variable dtype, refusing values it cannot hold.

        For initial values and for gamma and beta, which have no float64
        accumulator behind them: an overflow would leave an infinite variable.
        """
        cast = self._cast(value)
        overflow = np.isfinite(value) & ~np.isfinite(cast)
        if overflow.any():
            dtype = np.dtype(self.dtype_policy.variable_dtype)
            raise ConfigError(
                f"{name}: {np.abs(np.asarray(value)[overflow]).max():.6g} does not "
                f"fit the {dtype.name} variables of dtype policy "
                f"{self.dtype_policy.name!r}; use a smaller value or a wider policy"
            )
        return cast

    @property
    def gamma(self) -> npt.NDArray[Any] | None:
        """The scale variable, ``(C,)``; None when ``scale`` is off."""
        return None if self._gamma is None else self._gamma.copy()

    @gamma.setter
    def gamma(self, value: npt.ArrayLike) -> None:
        if not self.scale:
            raise ConfigError("the layer has no gamma (scale is off)")
        self._gamma = self._in_variable_dtype(
            compute.apply_constraint(
                self.gamma_constraint, self._vector(value, "gamma")
            ),
            "gamma",
        )

    @property
    def beta(self) -> npt.NDArray[Any] | None:
        """The offset variable, ``(C,)``; None when ``center`` is off."""
        return None if self._beta is None else self._beta.copy()

    @beta.setter
    def beta(self, value: npt.ArrayLike) -> None:
        if not self.center:
            raise ConfigError("the layer has no beta (center is off)")
        self._beta = self._in_variable_dtype(
            compute.apply_constraint(self.beta_constraint, self._vector(value, "beta")),
            "beta",
        )

    @property
    def moving_mean(self) -> npt.NDArray[Any]:
        """The moving mean, ``(C,)``, in the policy's variable dtype."""
        return self._cast(self.moving_mean64)

    @moving_mean.setter
    def moving_mean(self, value: npt.ArrayLike) -> None:
        self.moving_mean64 = self._vector(value, "moving_mean")

    @property
    def moving_variance(self) -> npt.NDArray[Any]:
        """The moving variance, ``(C,)``, in the policy's variable dtype."""
        return self._cast(self.moving_variance64)

    @moving_variance.setter
    def moving_variance(self, value: npt.ArrayLike) -> None:
        array = self._vector(value, "moving_variance")
        # Inference divides by sqrt(moving_variance + epsilon): a value below
        # -epsilon would make every output of its channel NaN.
        low = np.flatnonzero(array + self.epsilon <= 0)
        if low.size:
            channel = int(low[0])
            raise ConfigError(
                f"moving_variance must be non-negative: channel {channel} has "
                f"{array[channel]:g} (with epsilon {self.epsilon:g}, the outputs "
                "would be NaN)"
            )
        self.moving_variance64 = array

    def _vector(self, value: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
        self.require_built()
        array = np.asarray(value, dtype=np.float64)
        if array.shape != (self.channels,):
            raise ConfigError(
                f"{name} needs {self.channels} values, got shape {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ConfigError(f"{name} has NaN or infinite values")
        return array

    def require_built(self) -> None:
        """Raise ConfigError unless the variables exist (built by data or a fit)."""
        if not self.built:
            raise ConfigError("the layer is not built: call it on data or fit it")

    def require_whole(self) -> None:
        """Raise StateError for a partial state: only its merge is a layer to use."""
        if self.part is not None:
            record = self.part["record"]
            raise StateError(
                f"a partial state (rows {record.get('start')}:{record.get('stop')} "
                f"of {record.get('rows')}); merge the parts first",
                hint="bncli merge STATE PART...",
            )

    def reset_statistics(self, statistics: str | None = None) -> None:
        """Start the moving statistics and the progress again, from the initializers.

        The moving mean and variance take their initializers' values again,
        the counters go to 0 and ``statistics`` (if given) becomes the mode;
        the config, gamma and beta are kept.
        """
        self.require_built()
        if statistics is not None:
            self.statistics = _check_statistics(statistics)
        shape = (self.channels,)

        def initial(name: str) -> npt.NDArray[np.float64]:
            config = getattr(self, f"{name}_initializer")
            value = compute.initial_value(config, shape, np.dtype(np.float64), None)
            # Start where Keras's variables do: the value in the variable dtype.
            fitted = self._in_variable_dtype(np.asarray(value), f"{name}_initializer")
            return fitted.astype(np.float64)

        # The accumulators start from the stored variables, so that a float64
        # run starts exactly where Keras's float32 variables do.
        self.moving_mean64 = initial("moving_mean")
        self.moving_variance64 = initial("moving_variance")
        self.channel_batches = np.zeros(self.channels, dtype=np.int64)
        self.channel_count = np.zeros(self.channels)
        self.batches_seen = self.samples_seen = self.epochs = 0
        self.resume = None
        self.statistics_start = "initializers"

    def initializer_share(self) -> npt.NDArray[np.float64]:
        """Per channel, the weight of the initial value still in the moving statistics.

        ``momentum ** n`` with ``n`` the batches that updated the channel, for
        ``"ema"``; in the population modes 1 until a channel has a batch,
        then 0. Imported statistics are no initializer: 0.
        """
        if self.statistics_start == "imported":
            return np.zeros(self.channels)
        if self.statistics != "ema":
            return np.where(self.channel_batches > 0, 0.0, 1.0)
        return np.power(self.momentum, self.channel_batches.astype(np.float64))

    def regularization_penalties(self) -> dict[str, float]:
        """The regularizers' penalties on the current gamma and beta (0.0 if none)."""
        return {
            "gamma": compute.regularization_penalty(
                self.gamma_regularizer, self._gamma
            ),
            "beta": compute.regularization_penalty(self.beta_regularizer, self._beta),
        }

    # ------------------------------------------------------------------- math

    def __call__(
        self,
        inputs: npt.ArrayLike,
        training: bool = False,
        mask: npt.ArrayLike | None = None,
    ) -> npt.NDArray[Any]:
        """Normalize ``inputs`` (NumPy in, NumPy out), as Keras's ``layer(x)``.

        Args:
            inputs: ``(N, ...)`` real data.
            training: use the batch's statistics and update the moving ones
                (ignored when the layer is frozen, as in Keras).
            mask: booleans shaped like ``inputs`` without the channel axis (or
                broadcasting to that); False elements count in no statistic.

        Returns:
            The normalized array, in the policy's compute dtype.
        """
        x = np.asarray(inputs)
        if x.dtype.kind not in "fiub":
            raise DataError(f"inputs must be numeric, got dtype {x.dtype}")
        if x.ndim < 2:
            raise DataError(
                f"inputs need at least 2 dimensions (samples and channels), "
                f"got shape {x.shape}"
            )
        if not self.built:
            self.build(x.shape[1:])
        axis = self.channel_axis
        if x.ndim != len(self.sample_shape) + 1 or x.shape[axis] != self.channels:
            raise DataError(
                f"inputs of shape {x.shape} do not match the layer's "
                f"{self.channels} channels on axis {self.axis}"
            )
        rows = cast(
            "npt.NDArray[np.floating[Any]]",
            kernels.to_rows(x, axis).reshape(1, -1, self.channels),
        )
        row_mask = None if mask is None else self._rows_mask(mask, x.shape, axis)
        if training and self.trainable:
            stats = kernels.batched_moments(rows, row_mask)
            if not np.isfinite(stats.mean).all():
                raise DataError("NaN or infinity in the inputs")
            self.apply_fold(
                kernels.fold_statistics(
                    stats, stats.count > 0, self.momentum, self.statistics
                ),
                batches=1,
                samples=x.shape[0],
            )
            seen = stats.count[0] > 0
            mean = np.where(seen, stats.mean[0], self.moving_mean64)
            variance = np.where(seen, stats.variance[0], self.moving_variance64)
        else:
            mean, variance = self.moving_mean64, self.moving_variance64
        y = normalization.normalize(
            rows, mean, variance, self._gamma, self._beta, self.epsilon
        )
        shaped = cast("npt.NDArray[np.float64]", kernels.from_rows(y, x.shape, axis))
        return self.cast_output(shaped)

    def _rows_mask(
        self, mask: npt.ArrayLike, shape: tuple[int, ...], axis: int
    ) -> npt.NDArray[np.bool_]:
        mask_array = np.asarray(mask)
        without = shape[:axis] + shape[axis + 1 :]
        if mask_array.ndim != len(without):
            raise DataError(
                f"mask of shape {mask_array.shape} must have one dimension less "
                f"than the inputs {shape} (the inputs' shape without the channel axis)"
            )
        try:
            full = np.broadcast_to(mask_array.astype(bool), without)
        except ValueError as e:
            raise DataError(
                f"mask of shape {mask_array.shape} does not match the inputs' "
                f"shape without the channel axis {without}"
            ) from e
        return full.reshape(1, -1, 1)

    def output_dtype(self, name: str | None = None) -> np.dtype[Any]:
        """The outputs' dtype: ``name`` (``"bfloat16"`` too), else the policy's compute dtype."""
        chosen: np.dtype[Any] = np.dtype(
            self.dtype_policy.compute_dtype
            if name is None
            else dtypes.numpy_dtype(name)
        )
        return chosen

    def cast_output(
        self, y: npt.NDArray[np.float64], dtype: npt.DTypeLike | None = None
    ) -> npt.NDArray[Any]:
        """Cast float64 results to the output dtype, refusing a silent overflow."""
        target = np.dtype(self.dtype_policy.compute_dtype if dtype is None else dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            out = y.astype(target)
        if target.itemsize < 4 and not np.isfinite(out).all():
            bad = np.isfinite(y) & ~np.isfinite(out)
            if bad.any():
                raise DataError(
                    f"outputs overflow {target.name} (largest magnitude "
                    f"{np.abs(y[bad]).max():.4g})",
                    hint="use a wider output dtype, e.g. --output-dtype float32",
                )
        return out

    def apply_fold(self, fold: kernels.AnyFold, *, batches: int, samples: int) -> None:
        """Advance the moving statistics by ``fold`` and the counters."""
        moving = fold.apply_to(
            kernels.Moving(
                self.moving_mean64,
                self.moving_variance64,
                self.channel_batches,
                self.channel_count,
            )
        )
        self.moving_mean64, self.moving_variance64 = moving.mean, moving.variance
        self.channel_batches, self.channel_count = moving.batches, moving.count
        self.batches_seen += batches
        self.samples_seen += samples

    # ------------------------------------------------------------ files, fit

    def fit(
        self,
        inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
        batch_size: int = 32,
        epochs: int = 1,
        *,
        drop_remainder: bool = False,
        columns: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        mask_column: str | None = None,
        mask: Sequence[str | os.PathLike[str]] | None = None,
        replicas: int = 1,
        nan_policy: str = "error",
        workers: int | None = None,
        checkpoint_every: int | None = None,
        checkpoint: Callable[[BatchNormalization], None] | None = None,
        progress: Any = None,
        resume: bool = False,
        engine: str = "local",
        scheduler: str | None = None,
        stats: str | None = None,
        reset_statistics: bool = False,
        until_share: float | None = None,
        max_epochs: int = 1000,
        delimiter: str = ",",
        array: str | None = None,
    ) -> FitSummary:
        """Stream batches from files and update the moving statistics as Keras.

        The same as ``bncli fit`` (the same fit session, :mod:`bncli.engines.session`):
        batches of exactly ``batch_size`` consecutive samples across file and
        row-group boundaries, each epoch batched on its own, a final partial
        batch counted unless ``drop_remainder``. ``engine="dask"`` computes
        on a Dask cluster (``scheduler``, or a local one of ``workers``
        processes).

        ``stats`` is ``"ema"`` (Keras's moving average), ``"precise"`` (the
        equal-weight mean over batches of the batch means and biased
        variances) or ``"exact"`` (the mean and biased variance of every
        value); None keeps the layer's own. ``reset_statistics`` starts the
        moving statistics and the counters again first. ``until_share`` goes
        on with whole epochs until the initializers weigh under it in every
        channel, for at most ``max_epochs`` epochs. ``delimiter`` (CSV) and
        ``array`` (an NPZ archive's) are ``--delimiter`` and ``--array``.

        Returns:
            A :class:`FitSummary`.

        Raises:
            StateFrozenError: the layer is frozen.
            StateMismatchError: ``stats`` unlike the mode of a layer that has
                seen batches (without ``reset_statistics``).
            NotConvergedError: ``until_share`` not reached in ``max_epochs``
                (the layer keeps what it fitted).
            DataError: unreadable or inconsistent inputs.
        """
        from bncli.engines.base import FitOptions
        from bncli.engines.registry import make_engine
        from bncli.engines.session import fit_layer
        from bncli.io.sources import ReadOptions

        paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
        options = FitOptions(
            batch_size=batch_size,
            epochs=epochs,
            drop_remainder=drop_remainder,
            columns=columns,
            exclude=exclude,
            mask_column=mask_column,
            mask=mask,
            replicas=replicas,
            nan_policy=nan_policy,
            workers=workers,
            statistics=stats,
            reset_statistics=reset_statistics,
            until_share=until_share,
            max_epochs=max_epochs,
            read=ReadOptions(delimiter, array),
        )
        return fit_layer(
            self,
            paths,
            options,
            make_engine(engine, scheduler=scheduler, workers=workers),
            checkpoint_every=checkpoint_every,
            checkpoint=checkpoint,
            progress=progress,
            resume=resume,
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the layer to a state file, atomically."""
        from bncli.state import write_state

        write_state(path, self.to_state())

    def to_state(self) -> Any:
        """The layer as a :class:`bncli.state.State` record."""
        from bncli.state import State

        self.require_built()
        variables = {}
        if self._gamma is not None:
            variables["gamma"] = self._gamma
        if self._beta is not None:
            variables["beta"] = self._beta
        variables["moving_mean"] = self.moving_mean
        variables["moving_variance"] = self.moving_variance
        return State(
            config=self.get_config(),
            features=list(self.features),
            kind=self.kind,
            axis=self.channel_axis,
            sample_shape=self.sample_shape,
            variables=variables,
            moving_mean64=self.moving_mean64,
            moving_variance64=self.moving_variance64,
            channel_batches=self.channel_batches,
            batches_seen=self.batches_seen,
            samples_seen=self.samples_seen,
            epochs=self.epochs,
            resume=self.resume,
            statistics=self.statistics,
            statistics_start=self.statistics_start,
            channel_count=self.channel_count,
            part=self.part,
        )

    @classmethod
    def from_state(cls, state: Any, path: str | os.PathLike[str] | None = None) -> Any:
        """Rebuild a layer from a :class:`bncli.state.State` record."""
        config = dict(state.config)
        if config.get("renorm"):
            raise StateError(
                "renorm=True (batch renormalization) is not supported", path=path
            )
        try:
            layer = cls.from_config(config)
            layer.sample_shape = tuple(state.sample_shape)
            if layer.channel_axis != state.axis:
                raise ConfigError("the stored axis does not match the config")
        except ConfigError as e:
            raise StateError(f"invalid config in state ({e.message})", path=path) from e
        layer.features = list(state.features)
        layer.kind = state.kind
        expected = {"moving_mean", "moving_variance"}
        expected |= {"gamma"} if layer.scale else set()
        expected |= {"beta"} if layer.center else set()
        if set(state.variables) != expected:
            raise StateError(
                "variables do not match the config's center/scale", path=path
            )
        layer._gamma = layer._cast(state.variables["gamma"]) if layer.scale else None
        layer._beta = layer._cast(state.variables["beta"]) if layer.center else None
        layer.moving_mean64 = np.asarray(state.moving_mean64, dtype=np.float64)
        layer.moving_variance64 = np.asarray(state.moving_variance64, dtype=np.float64)
        layer.channel_batches = np.asarray(state.channel_batches, dtype=np.int64)
        layer.batches_seen = int(state.batches_seen)
        layer.samples_seen = int(state.samples_seen)
        layer.epochs = int(state.epochs)
        layer.resume = state.resume
        layer.statistics = state.statistics
        layer.statistics_start = state.statistics_start
        layer.part = state.part
        layer.channel_count = (
            np.zeros(len(layer.features))
            if state.channel_count is None
            else np.asarray(state.channel_count, dtype=np.float64)
        )
        layer.built = True
        return layer


def load(path: str | os.PathLike[str]) -> BatchNormalization:
    """Read a layer from a state file written by :meth:`BatchNormalization.save`.

    Raises:
        StateNotFoundError, StateError: missing, corrupt or foreign file.
    """
    from bncli.state import read_state

    layer: BatchNormalization = BatchNormalization.from_state(read_state(path), path)
    return layer
