"""What Keras computes from an initializer, regularizer or constraint config, in NumPy.

:func:`initial_value` draws a variable's initial value (random initializers
follow Keras's laws with NumPy's generator), :func:`regularization_penalty`
gives a regularizer's penalty, and :func:`apply_constraint` projects a
variable as a constraint does. Configs come from :mod:`bncli.keras_compat.specs`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bncli.errors import ConfigError
from bncli.keras_compat.dtypes import numpy_dtype
from bncli.keras_compat.specs import (
    ArgumentError,
    describe,
    parse_constraint,
    parse_initializer,
    parse_regularizer,
    seed_argument,
)

__all__ = ["apply_constraint", "initial_value", "regularization_penalty"]

#: ``keras.backend.epsilon()``'s default, which Keras's norm constraints add.
_KERAS_EPSILON = 1e-7

#: Keras's correction for a normal truncated at two standard deviations: the
#: standard deviation of a standard normal truncated to [-2, 2].
_TRUNCATED_NORMAL_STDDEV = 0.87962566103423978

#: The variance-scaling presets: (scale, mode, distribution), as Keras's
#: subclasses of ``VarianceScaling`` pass them to it.
_PRESETS: dict[str, tuple[float, str, str]] = {
    "GlorotNormal": (1.0, "fan_avg", "truncated_normal"),
    "GlorotUniform": (1.0, "fan_avg", "uniform"),
    "HeNormal": (2.0, "fan_in", "truncated_normal"),
    "HeUniform": (2.0, "fan_in", "uniform"),
    "LecunNormal": (1.0, "fan_in", "truncated_normal"),
    "LecunUniform": (1.0, "fan_in", "uniform"),
}


def _compute_fans(
    shape: tuple[int, ...],
    input_axes: list[int] | None,
    output_axes: list[int] | None,
) -> tuple[int, int]:
    """Keras's ``compute_fans``; for a 1-D shape ``(C,)`` both fans are C."""
    if input_axes is not None and output_axes is not None:
        return (
            math.prod(shape[axis] for axis in input_axes),
            math.prod(shape[axis] for axis in output_axes),
        )
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def _truncated_normal(
    rng: np.random.Generator, mean: float, stddev: float, shape: tuple[int, ...]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Normal draws, redrawing those beyond two stddevs (Keras's NumPy backend)."""
    size = math.prod(shape)
    low, high = mean - 2 * stddev, mean + 2 * stddev
    kept = np.empty(0)
    while kept.size < size:
        draw = rng.normal(mean, stddev, size=size)
        kept = np.concatenate([kept, draw[(draw >= low) & (draw <= high)]])
    return kept[:size].reshape(shape)


def _variance_scaling(
    rng: np.random.Generator,
    options: dict[str, Any],
    scale: float,
    mode: str,
    distribution: str,
    shape: tuple[int, ...],
) -> np.ndarray[Any, np.dtype[np.float64]]:
    fan_in, fan_out = _compute_fans(
        shape, options.get("input_axes"), options.get("output_axes")
    )
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
    scale = scale / max(1.0, fan[mode])
    if distribution == "truncated_normal":
        return _truncated_normal(
            rng, 0.0, math.sqrt(scale) / _TRUNCATED_NORMAL_STDDEV, shape
        )
    if distribution == "untruncated_normal":
        return rng.normal(0.0, math.sqrt(scale), size=shape)
    limit = math.sqrt(3.0 * scale)
    return rng.uniform(-limit, limit, size=shape)


def _orthogonal(
    rng: np.random.Generator, gain: float, shape: tuple[int, ...]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Keras's ``Orthogonal``: Q of a normal matrix's QR, signs fixed by R."""
    if len(shape) < 2:
        raise ConfigError(
            f"the orthogonal initializer needs a variable of at least 2 dimensions, "
            f"got shape {shape} (Keras refuses it too); use zeros, ones, constant "
            "or a random initializer instead"
        )
    num_rows = math.prod(shape[:-1])
    num_cols = shape[-1]
    matrix = rng.normal(size=(max(num_rows, num_cols), min(num_rows, num_cols)))
    q, r = np.linalg.qr(matrix)
    q = q * np.sign(np.diag(r))
    if num_rows < num_cols:
        q = q.T
    return gain * q.reshape(shape)


def initial_value(
    config: dict[str, Any],
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    seed: int | None,
) -> np.ndarray[Any, Any]:
    """Draws a variable's initial value as a Keras initializer would.

    Random initializers draw from Keras's distributions with
    ``numpy.random.default_rng``: the values are not Keras's, but their law
    is, including the truncation at two standard deviations and
    ``variance_scaling``'s fans (for a 1-D shape ``(C,)``, fan_in = fan_out =
    C). Values are computed in float64, then cast to ``dtype``.

    Args:
        config: An initializer config or spec (anything
            :func:`parse_initializer` takes).
        shape: The variable's shape, e.g. ``(C,)``.
        dtype: The variable's dtype.
        seed: The seed to use when the config has none; ``None`` draws a
            fresh one.

    Returns:
        An array of ``shape`` and ``dtype``.

    Raises:
        ConfigError: For a bad config or seed, or an initializer Keras
            refuses for this shape (``orthogonal`` and ``identity`` on 1-D).

    Example:
        >>> initial_value({"class_name": "Constant", "config": {"value": 0.5}},
        ...               (3,), np.dtype("float32"), None)
        array([0.5, 0.5, 0.5], dtype=float32)
    """
    parsed = parse_initializer(config)
    class_name: str = parsed["class_name"]
    options: dict[str, Any] = parsed["config"]
    shape = tuple(int(dim) for dim in shape)
    try:
        chosen_seed = seed_argument(
            options.get("seed") if options.get("seed") is not None else seed
        )
    except ArgumentError as exc:
        raise ConfigError(f"bad seed: {exc}") from None
    rng = np.random.default_rng(chosen_seed)
    values: np.ndarray[Any, Any]
    if class_name == "Zeros":
        values = np.zeros(shape)
    elif class_name == "Ones":
        values = np.ones(shape)
    elif class_name == "Constant":
        values = np.full(shape, float(options["value"]))
    elif class_name == "RandomNormal":
        values = rng.normal(options["mean"], options["stddev"], size=shape)
    elif class_name == "RandomUniform":
        values = rng.uniform(options["minval"], options["maxval"], size=shape)
    elif class_name == "TruncatedNormal":
        values = _truncated_normal(rng, options["mean"], options["stddev"], shape)
    elif class_name == "VarianceScaling":
        values = _variance_scaling(
            rng,
            options,
            options["scale"],
            options["mode"],
            options["distribution"],
            shape,
        )
    elif class_name in _PRESETS:
        values = _variance_scaling(rng, options, *_PRESETS[class_name], shape)
    elif class_name == "Orthogonal":
        values = _orthogonal(rng, options["gain"], shape)
    else:  # Identity
        if len(shape) != 2:
            raise ConfigError(
                f"the identity initializer needs a 2-D variable, got shape {shape} "
                "(Keras refuses it too); use zeros, ones or constant instead"
            )
        values = np.eye(*shape)
    return np.asarray(values, dtype=np.float64).astype(dtype)


def regularization_penalty(
    config: dict[str, Any] | None, value: np.ndarray[Any, Any] | None
) -> float:
    """The penalty a Keras regularizer puts on a value.

    ``l1 * sum(|x|) + l2 * sum(x**2)`` with the factors of ``config`` (a term
    whose factor is 0 is left out, as in Keras), accumulated in float64 where
    Keras uses the value's dtype.

    Args:
        config: A regularizer config or spec, or ``None``.
        value: The variable's value, or ``None`` for an absent variable.

    Returns:
        The penalty; 0.0 when ``config`` or ``value`` is ``None``.

    Raises:
        ConfigError: For a bad config.

    Example:
        >>> regularization_penalty({"class_name": "L2", "config": {"l2": 0.5}},
        ...                        np.array([1.0, 2.0]))
        2.5
    """
    parsed = parse_regularizer(config)
    if parsed is None or value is None:
        return 0.0
    x = np.asarray(value, dtype=np.float64)
    factors: dict[str, float] = parsed["config"]
    penalty = 0.0
    if factors.get("l1", 0.0) != 0.0:
        penalty += factors["l1"] * float(np.sum(np.abs(x)))
    if factors.get("l2", 0.0) != 0.0:
        penalty += factors["l2"] * float(np.sum(np.square(x)))
    return penalty


def apply_constraint(
    config: dict[str, Any] | None, value: np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    """Projects a value as a Keras constraint does after an update.

    The norm constraints take the Euclidean norm over ``axis`` (for a 1-D
    variable with Keras's default ``axis=0``, the norm of the whole vector)
    and divide by ``epsilon + norm`` with Keras's epsilon, 1e-7. The result
    is computed in float64 and has the value's dtype.

    Args:
        config: A constraint config or spec, or ``None`` (no constraint).
        value: The variable's value.

    Returns:
        The projected value; ``value`` itself when ``config`` is ``None``.

    Raises:
        ConfigError: For a bad config, or an axis out of the value's range.

    Example:
        >>> apply_constraint("non_neg", np.array([-1.0, 2.0]))
        array([0., 2.])
    """
    parsed = parse_constraint(config)
    if parsed is None:
        return value
    array = np.asarray(value)
    floating = array.dtype.kind == "f" or array.dtype == numpy_dtype("bfloat16")
    out_dtype = array.dtype if floating else np.dtype(np.float64)
    x = array.astype(np.float64)
    class_name: str = parsed["class_name"]
    options: dict[str, Any] = parsed["config"]
    if class_name == "NonNeg":
        return np.maximum(x, 0.0).astype(out_dtype)
    axis = options["axis"]
    axes = tuple(np.atleast_1d(axis).tolist())
    if any(not -x.ndim <= item < x.ndim for item in axes):
        raise ConfigError(
            f"bad constraint {describe(parsed)!r}: axis {axis} is out of range for "
            f"a variable of shape {x.shape}; valid axes: "
            f"{', '.join(str(item) for item in range(-x.ndim, x.ndim))}"
        )
    norms: np.ndarray[Any, np.dtype[np.float64]]
    norms = np.sqrt(np.sum(np.square(x), axis=axes, keepdims=True))
    projected: np.ndarray[Any, np.dtype[np.float64]]
    if class_name == "UnitNorm":
        projected = x / (_KERAS_EPSILON + norms)
    elif class_name == "MaxNorm":
        desired = np.clip(norms, 0, options["max_value"])
        projected = x * (desired / (_KERAS_EPSILON + norms))
    else:  # MinMaxNorm
        rate = options["rate"]
        desired = (
            rate * np.clip(norms, options["min_value"], options["max_value"])
            + (1 - rate) * norms
        )
        projected = x * (desired / (_KERAS_EPSILON + norms))
    return projected.astype(out_dtype)
