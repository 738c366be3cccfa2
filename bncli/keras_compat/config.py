"""BatchNormalization configs, normalized to Keras 3.15's ``get_config()`` form.

Keras 2, tf.keras and Keras 3 spell the same config in different ways (dtype
policies, initializer objects, axis lists); one normal form is what bncli
stores and compares.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bncli.errors import (
    StateError,
    UnsupportedLayerError,
)
from bncli.keras_compat.records import (
    CLASS_ALIASES,
    DEFAULT_INITIALIZERS,
    POLICY_CLASSES,
    POLICY_NAMES,
)

__all__ = ["normalize_batchnorm_config"]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _class_name(spec: str) -> str:
    name = "".join(part[:1].upper() + part[1:] for part in spec.split("_"))
    return CLASS_ALIASES.get(name, name)


def _normalize_object(
    value: Any, module: str, key: str, layer: str, path: Path | None
) -> dict[str, Any] | None:
    """A Keras serialized object (initializer, regularizer, constraint) in full form."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.isidentifier():
            raise StateError(f"layer {layer!r}: bad {key} {value!r}", path=path)
        return {
            "module": module,
            "class_name": _class_name(value),
            "config": {},
            "registered_name": None,
        }
    if not isinstance(value, dict) or not isinstance(value.get("class_name"), str):
        raise StateError(
            f"layer {layer!r}: {key} is not a serialized Keras object", path=path
        )
    class_name = value["class_name"]
    registered = value.get("registered_name")
    if not class_name.isidentifier() or registered not in (None, class_name):
        raise UnsupportedLayerError(
            f"layer {layer!r}: custom {key} {registered or class_name!r} is not "
            "supported; only Keras built-ins are read",
            reason=f"custom {key} {registered or class_name!r}",
            path=path,
        )
    config = value.get("config", {})
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise StateError(f"layer {layer!r}: {key} config is not a dict", path=path)
    normalized = {
        "module": module,
        "class_name": CLASS_ALIASES.get(class_name, class_name),
        "config": dict(config),
        "registered_name": None,
    }
    # The layer is usable only if bncli's own parser takes the object, as
    # import will: a name that is no Keras built-in (Lambda, a custom class
    # registered without a package name) or arguments it refuses make the
    # layer unsupported here, so inspect and import agree.
    from bncli.errors import ConfigError
    from bncli.keras_compat import specs

    parse = {
        "keras.initializers": specs.parse_initializer,
        "keras.regularizers": specs.parse_regularizer,
        "keras.constraints": specs.parse_constraint,
    }[module]
    try:
        parse(normalized)
    except ConfigError as e:
        raise UnsupportedLayerError(
            f"layer {layer!r}: {key} {class_name!r} is not supported ({e.message})",
            reason=f"{key} {class_name!r} is not a Keras built-in bncli reads",
            path=path,
        ) from e
    return normalized


def _normalize_policy(value: Any, layer: str, path: Path | None) -> dict[str, Any]:
    name: Any
    if value is None:
        name = "float32"
    elif isinstance(value, str):
        name = value
    elif (
        isinstance(value, dict)
        and value.get("class_name") in POLICY_CLASSES
        and isinstance(value.get("config"), dict)
    ):
        name = value["config"].get("name")
    else:
        raise StateError(f"layer {layer!r}: unreadable dtype {value!r}", path=path)
    if name not in POLICY_NAMES:
        raise UnsupportedLayerError(
            f"layer {layer!r}: dtype policy {name!r} is not supported",
            reason=f"dtype policy {name!r}",
            path=path,
            hint=f"supported: {', '.join(sorted(POLICY_NAMES))}",
        )
    return {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": name},
        "registered_name": None,
    }


def _normalize_axis(
    value: Any, input_rank: int | None, layer: str, path: Path | None
) -> int:
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise UnsupportedLayerError(
                f"layer {layer!r}: axis {list(value)} normalizes over several "
                "axes; Keras 3 BatchNormalization takes one",
                reason=f"several axes (axis={list(value)})",
                path=path,
            )
        value = value[0]
        # Keras 2 stores the axis build() made non-negative: make it count
        # from the end again, as Keras 3 configs do, when the rank is known.
        if isinstance(value, int) and value >= 0 and input_rank is not None:
            value -= input_rank
    if not isinstance(value, int) or isinstance(value, bool):
        raise StateError(f"layer {layer!r}: axis {value!r} is not an int", path=path)
    return value


def normalize_batchnorm_config(
    config: Mapping[str, Any],
    *,
    input_rank: int | None = None,
    class_name: str = "BatchNormalization",
    path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Normalize a BatchNormalization config to Keras 3.15's ``get_config()`` form.

    Accepts Keras 3 configs (any 3.x) and Keras 2 / tf.keras ones: a one-element
    ``axis`` list becomes an int counted from the end (using ``input_rank``),
    a dtype string or Keras 2 ``Policy`` becomes a ``DTypePolicy`` dict,
    initializers, regularizers and constraints get their ``module`` and
    ``registered_name``, and missing keys get Keras's defaults.

    Args:
        config: The layer's ``config`` as found in the file.
        input_rank: The rank of the layer's input (batch dimension included),
            to convert a Keras 2 ``axis`` list; a positive axis is kept when
            None.
        class_name: The layer's class; ``SyncBatchNormalization`` (Keras 2)
            means ``synchronized=True``.
        path: The file, for error messages.

    Returns:
        A new dict with exactly Keras 3.15's keys, in its order.

    Raises:
        UnsupportedLayerError: If the config asks for renormalization, virtual
            batches or several axes, or names a dtype policy or an object that
            is not a Keras built-in.
        StateError: If the config holds values Keras would refuse.

    Example:
        >>> cfg = normalize_batchnorm_config({"name": "bn", "axis": [1]}, input_rank=2)
        >>> cfg["axis"], cfg["dtype"]["config"]["name"], cfg["renorm_momentum"]
        (-1, 'float32', 0.99)
    """
    where = None if path is None else Path(path)
    if not isinstance(config, Mapping):
        raise StateError("a BatchNormalization config is not a dict", path=where)
    name = config.get("name")
    if not isinstance(name, str):
        raise StateError("a BatchNormalization layer has no name", path=where)
    # What bncli does not support is raised last, after every check for
    # damage: a damaged layer refuses the file, an unsupported one only itself.
    problems: list[UnsupportedLayerError] = []
    if config.get("renorm"):
        problems.append(
            UnsupportedLayerError(
                f"layer {name!r} uses batch renormalization (renorm=True), which "
                "bncli does not support",
                reason="batch renormalization (renorm=True)",
                path=where,
            )
        )
    if config.get("virtual_batch_size") is not None:
        size = f"virtual_batch_size={config['virtual_batch_size']!r}"
        problems.append(
            UnsupportedLayerError(
                f"layer {name!r} uses virtual batches ({size}), which bncli does "
                "not support",
                reason=f"virtual batches ({size})",
                path=where,
            )
        )

    def supported(normalize: Callable[..., Any], *args: Any) -> Any:
        """``normalize(*args)``, keeping an unsupported value for the end."""
        try:
            return normalize(*args)
        except UnsupportedLayerError as problem:
            problems.append(problem)
            return None

    out: dict[str, Any] = {"name": name}
    for key, default in (("trainable", True),):
        value = config.get(key, default)
        if not isinstance(value, bool):
            raise StateError(f"layer {name!r}: {key} is not a bool", path=where)
        out[key] = value
    out["dtype"] = supported(_normalize_policy, config.get("dtype"), name, where)
    out["axis"] = supported(
        _normalize_axis, config.get("axis", -1), input_rank, name, where
    )
    for key, default_number in (("momentum", 0.99), ("epsilon", 1e-3)):
        value = config.get(key, default_number)
        if not _is_number(value) or not math.isfinite(value):
            raise StateError(
                f"layer {name!r}: {key} {value!r} is not a number", path=where
            )
        out[key] = value
    for key in ("center", "scale"):
        value = config.get(key, True)
        if not isinstance(value, bool):
            raise StateError(f"layer {name!r}: {key} is not a bool", path=where)
        out[key] = value
    for key, default_class in DEFAULT_INITIALIZERS.items():
        value = config.get(key, default_class)
        out[key] = supported(
            _normalize_object,
            value if value is not None else default_class,
            "keras.initializers",
            key,
            name,
            where,
        )
    for family, module in (
        ("regularizer", "keras.regularizers"),
        ("constraint", "keras.constraints"),
    ):
        for variable in ("beta", "gamma"):
            key = f"{variable}_{family}"
            out[key] = supported(
                _normalize_object, config.get(key), module, key, name, where
            )
    synchronized = config.get("synchronized", class_name == "SyncBatchNormalization")
    if not isinstance(synchronized, bool):
        raise StateError(f"layer {name!r}: synchronized is not a bool", path=where)
    out["synchronized"] = synchronized or class_name == "SyncBatchNormalization"
    out["renorm"] = False
    out["renorm_clipping"] = None
    momentum = config.get("renorm_momentum", 0.99)
    out["renorm_momentum"] = momentum if _is_number(momentum) else 0.99
    if problems:
        raise problems[0]
    return out
