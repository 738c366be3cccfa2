"""Keras 3 dtype policies as plain data: names, NumPy dtypes and configs.

A Keras layer's ``dtype`` argument is a *policy*: it names the dtype the
layer's variables are stored in and the dtype its outputs are computed in.
The plain float names use one dtype for both; the ``mixed_*`` policies keep
the variables in float32 and compute in half precision, as
``keras.dtype_policies.DTypePolicy`` does. bfloat16 comes from ``ml_dtypes``,
the package JAX and Keras use for it; it is imported only when a bfloat16
dtype is asked for (importing it costs more than the rest of start-up).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from bncli.errors import ConfigError

__all__ = ["POLICY_NAMES", "DTypePolicy", "numpy_dtype", "parse_policy"]

#: The float dtypes bncli stores variables and writes outputs in; bfloat16's
#: is filled in by :func:`numpy_dtype` on first use.
_DTYPES: dict[str, np.dtype[Any] | None] = {
    "float16": np.dtype(np.float16),
    "bfloat16": None,
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}

#: Every policy name bncli accepts, in the order help texts list them.
POLICY_NAMES: tuple[str, ...] = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "mixed_float16",
    "mixed_bfloat16",
)

#: Keras's default policy: ``keras.config.floatx()`` is "float32".
_DEFAULT_POLICY = "float32"

#: Class names a serialized policy may carry: Keras 3 ("DTypePolicy"), Keras
#: 3.0 to 3.3 ("FloatDTypePolicy") and Keras 2 ("Policy").
_POLICY_CLASS_NAMES = ("DTypePolicy", "FloatDTypePolicy", "Policy")


def numpy_dtype(name: str) -> np.dtype[Any]:
    """Returns the NumPy dtype of a float dtype name.

    Args:
        name: One of "float16", "bfloat16", "float32", "float64".

    Returns:
        The NumPy dtype; bfloat16 is ``ml_dtypes.bfloat16``'s.

    Raises:
        ConfigError: If ``name`` is not one of the names above.

    Example:
        >>> numpy_dtype("bfloat16").itemsize
        2
    """
    if not isinstance(name, str) or name not in _DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; valid names: {', '.join(_DTYPES)}")
    dtype = _DTYPES[name]
    if dtype is None:
        import ml_dtypes

        dtype = _DTYPES[name] = np.dtype(ml_dtypes.bfloat16)
    return dtype


@dataclasses.dataclass(frozen=True)
class DTypePolicy:
    """A Keras dtype policy: the variables' dtype and the outputs' dtype.

    Build one with :func:`parse_policy` rather than by hand.

    Args:
        name: The policy name, one of :data:`POLICY_NAMES`.
        variable_dtype: The dtype variables are stored in: float32 for
            "float32" and the mixed policies, else the named dtype.
        compute_dtype: The dtype of the layer's outputs: the named dtype, or
            float16 / bfloat16 for the mixed policies.

    Example:
        >>> policy = parse_policy("mixed_float16")
        >>> policy.variable_dtype, policy.compute_dtype
        (dtype('float32'), dtype('float16'))
    """

    name: str
    variable_dtype: np.dtype[Any]
    compute_dtype: np.dtype[Any]

    def to_config(self) -> dict[str, Any]:
        """Returns the policy serialized as Keras 3.15 serializes it.

        Returns:
            ``{"module": "keras", "class_name": "DTypePolicy",
            "config": {"name": NAME}, "registered_name": None}``.
        """
        return {
            "module": "keras",
            "class_name": "DTypePolicy",
            "config": {"name": self.name},
            "registered_name": None,
        }


def _policy_from_name(name: str) -> DTypePolicy:
    """Builds the policy of a name in :data:`POLICY_NAMES`."""
    if name not in POLICY_NAMES:
        raise ConfigError(
            f"unknown dtype policy {name!r}; valid names: {', '.join(POLICY_NAMES)}"
        )
    if name.startswith("mixed_"):
        compute = numpy_dtype(name.removeprefix("mixed_"))
        return DTypePolicy(name, numpy_dtype("float32"), compute)
    dtype = numpy_dtype(name)
    return DTypePolicy(name, dtype, dtype)


def _policy_from_config(config: dict[str, Any]) -> DTypePolicy:
    """Builds the policy of a serialized Keras (2 or 3) policy dict."""
    class_name = config.get("class_name")
    if class_name not in _POLICY_CLASS_NAMES:
        raise ConfigError(
            f"unsupported dtype policy class {class_name!r}; valid class names: "
            f"{', '.join(_POLICY_CLASS_NAMES)} (quantized policies are not supported)"
        )
    inner = config.get("config")
    name = inner.get("name") if isinstance(inner, dict) else None
    if not isinstance(name, str):
        raise ConfigError(
            f"dtype policy config {config!r} has no 'name'; valid names: "
            f"{', '.join(POLICY_NAMES)}"
        )
    return _policy_from_name(name)


def parse_policy(spec: str | dict[str, Any] | DTypePolicy | None) -> DTypePolicy:
    """Parses a dtype policy given by name, Keras config, or JSON string.

    Args:
        spec: ``None`` (Keras's default, "float32"); a name from
            :data:`POLICY_NAMES`; a serialized Keras policy such as
            ``{"class_name": "DTypePolicy", "config": {"name": "float16"}}``
            (extra keys such as "module" or "shared_object_id" are ignored;
            Keras 2's ``"Policy"`` class is accepted); a JSON string of one;
            or a :class:`DTypePolicy`, returned as is.

    Returns:
        The policy.

    Raises:
        ConfigError: For an unknown name, malformed JSON, or a config of
            another class (such as a quantized policy).

    Example:
        >>> parse_policy(None).name
        'float32'
        >>> config = {"class_name": "DTypePolicy", "config": {"name": "float16"}}
        >>> parse_policy(config).compute_dtype
        dtype('float16')
    """
    if spec is None:
        return _policy_from_name(_DEFAULT_POLICY)
    if isinstance(spec, DTypePolicy):
        return spec
    if isinstance(spec, dict):
        return _policy_from_config(spec)
    if not isinstance(spec, str):
        raise ConfigError(
            f"cannot interpret dtype policy {spec!r}; valid names: "
            f"{', '.join(POLICY_NAMES)}"
        )
    text = spec.strip()
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"malformed JSON for a dtype policy: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"dtype policy JSON must be an object, got {text!r}")
        return _policy_from_config(loaded)
    return _policy_from_name(text)
