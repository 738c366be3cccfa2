"""Initializers, regularizers and constraints: spec strings, Keras configs, NumPy.

A *spec* names a Keras initializer, regularizer or constraint the way a user
types it on the command line; a *config* is the dict Keras 3.15 serializes
the object to (``keras.initializers.serialize(...)`` and its siblings), e.g.
``{"module": "keras.regularizers", "class_name": "L2", "config": {"l2": 0.01},
"registered_name": None}``. The ``parse_*`` functions turn a spec into the
config Keras would write for it, with every default key filled in, and the
other functions compute what Keras would compute from a config, in NumPy.

Spec grammar:

- a Keras name: ``ones``, ``l2``, ``non_neg``, Keras's class names (``Ones``,
  ``L2``, ``NonNeg``, ``MaxNorm``) and aliases (``normal``, ``one``, ``l1l2``);
- a name with arguments in the order of the Keras constructor, after a colon:
  ``constant:0.5``, ``l1_l2:0.01,0.02``, ``max_norm:2``,
  ``random_normal:0,0.05`` (mean, stddev),
  ``variance_scaling:2.0,fan_in,truncated_normal``; keyword arguments follow
  positional ones: ``random_normal:stddev=0.1,seed=7``;
- a serialized Keras config, as a dict or JSON text, with or without
  ``module`` and ``registered_name``: ``{"class_name": "L2", "config":
  {"l2": 0.01}}``;
- for regularizers and constraints, ``none`` (or ``None``): no object.

Where Keras's config keeps a number as given (``Constant(2)`` stores ``2``),
so does the parsed config; regularizer factors become floats, as in Keras.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bncli.errors import ConfigError

__all__ = [
    "ArgumentError",
    "describe",
    "parse_constraint",
    "parse_initializer",
    "parse_regularizer",
    "seed_argument",
]

#: Keras's seeds go through a uint32, so larger or negative ones are refused.
_SEED_LIMIT = 2**32


class ArgumentError(ValueError):
    """A bad argument value; the caller adds which spec it belongs to."""


# --- argument checks: each returns the value as Keras would store it --------

_Check = Callable[[Any], Any]


def _number(value: Any) -> int | float:
    """Returns ``value`` as a Python int or float, refusing bools and text."""
    if isinstance(value, bool) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise ArgumentError(f"expected a number, got {value!r}")
    number: int | float = value.item() if isinstance(value, np.generic) else value
    if not math.isfinite(number):
        raise ArgumentError(f"expected a finite number, got {value!r}")
    return number


def _non_negative(value: Any) -> int | float:
    number = _number(value)
    if number < 0:
        raise ArgumentError(f"expected a non-negative number, got {value!r}")
    return number


def _positive(value: Any) -> int | float:
    number = _number(value)
    if number <= 0:
        raise ArgumentError(f"expected a positive number, got {value!r}")
    return number


def _unit_gain(value: Any) -> int | float:
    # Keras's Identity takes a gain but leaves it out of its config, so a
    # saved gain other than 1 would be lost: refuse it rather than drop it.
    number = _number(value)
    if number != 1:
        raise ArgumentError(
            f"expected 1 (Keras does not save Identity's gain), got {value!r}"
        )
    return number


def _factor(default: float, *, float32: bool = False) -> _Check:
    """A regularization factor: ``validate_float_arg`` in Keras.

    Keras's ``L1`` keeps its factor as a float32 tensor and serializes
    ``float(self.l1)``, so ``L1(0.01)`` is saved as 0.009999999776482582;
    ``float32=True`` mirrors that rounding.
    """

    def check(value: Any) -> float:
        if value is None:
            value = default
        factor = float(_non_negative(value))
        return float(np.float32(factor)) if float32 else factor

    return check


def seed_argument(value: Any) -> int | None:
    """A seed as Keras stores it: None, or an integer in [0, 2**32)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentError(
            f"expected an integer seed in [0, 2**32) or null, got {value!r}"
        )
    seed = int(value)
    if not 0 <= seed < _SEED_LIMIT:
        raise ArgumentError(f"expected an integer seed in [0, 2**32), got {seed}")
    return seed


def _axis(value: Any) -> int | list[int]:
    if isinstance(value, bool):
        raise ArgumentError(
            f"expected an integer axis or a list of them, got {value!r}"
        )
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (list, tuple)) and all(
        isinstance(item, (int, np.integer)) and not isinstance(item, bool)
        for item in value
    ):
        return [int(item) for item in value]
    raise ArgumentError(f"expected an integer axis or a list of them, got {value!r}")


def _axes(value: Any) -> list[int] | None:
    return None if value is None else list(np.atleast_1d(_axis(value)).tolist())


def _choice(*choices: str, aliases: dict[str, str] | None = None) -> _Check:
    """One of ``choices``; with ``aliases``, case-insensitive and translated."""

    def check(value: Any) -> str:
        if isinstance(value, str):
            word = value
            if aliases is not None:
                word = aliases.get(value.lower(), value.lower())
            if word in choices:
                return word
        raise ArgumentError(f"expected one of {', '.join(choices)}, got {value!r}")

    return check


# --- the tables: one row per Keras class ------------------------------------


@dataclasses.dataclass(frozen=True)
class _Param:
    """One constructor argument of a Keras class."""

    name: str
    default: Any
    check: _Check
    #: ``describe`` shows it always (positionally), else only when not default.
    shown: bool = False


@dataclasses.dataclass(frozen=True)
class _Class:
    """A Keras class: its names, constructor arguments and config keys."""

    class_name: str
    name: str
    params: tuple[_Param, ...] = ()
    #: The config's keys in Keras's ``get_config()`` order; None: the params'.
    keys: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()

    @property
    def config_keys(self) -> tuple[str, ...]:
        if self.keys is not None:
            return self.keys
        return tuple(param.name for param in self.params)

    def usage(self) -> str:
        names = [param.name for param in self.params]
        if not names:
            return f"{self.name} takes no arguments"
        return f"usage: {self.name}[:{','.join(names)}]"


@dataclasses.dataclass(frozen=True)
class _Family:
    """The Keras classes of one kind (initializers, regularizers, constraints)."""

    noun: str
    module: str
    classes: tuple[_Class, ...]

    @functools.cached_property
    def spellings(self) -> dict[str, _Class]:
        """Every accepted spelling: snake name, class name, Keras aliases."""
        table: dict[str, _Class] = {}
        for cls in self.classes:
            for spelling in (cls.name, cls.class_name, *cls.aliases):
                table[spelling] = cls
        return table

    def names(self) -> str:
        return ", ".join(sorted(cls.name for cls in self.classes))

    def by_name(self, name: str) -> _Class:
        cls = self.spellings.get(name)
        if cls is None:
            raise ConfigError(
                f"unknown {self.noun} {name!r}; valid names: {self.names()}"
            )
        return cls

    def by_class_name(self, class_name: Any) -> _Class:
        cls = self.spellings.get(class_name) if isinstance(class_name, str) else None
        if cls is None:
            valid = ", ".join(sorted(cls.class_name for cls in self.classes))
            raise ConfigError(
                f"unknown {self.noun} class {class_name!r}; valid class names: {valid}"
            )
        return cls


_SEED = _Param("seed", None, seed_argument)
_INPUT_AXES = _Param("input_axes", None, _axes)
_OUTPUT_AXES = _Param("output_axes", None, _axes)
_FAN_ARGS = (_SEED, _INPUT_AXES, _OUTPUT_AXES)
_MEAN_STDDEV = (
    _Param("mean", 0.0, _number, shown=True),
    _Param("stddev", 0.05, _non_negative, shown=True),
    _SEED,
)
_MODES = ("fan_in", "fan_out", "fan_avg")
_DISTRIBUTIONS = ("truncated_normal", "untruncated_normal", "uniform")

_INITIALIZERS = _Family(
    "initializer",
    "keras.initializers",
    (
        _Class("Zeros", "zeros", aliases=("zero",)),
        _Class("Ones", "ones", aliases=("one",)),
        _Class("Constant", "constant", (_Param("value", 0.0, _number, shown=True),)),
        _Class(
            "RandomNormal",
            "random_normal",
            _MEAN_STDDEV,
            keys=("seed", "mean", "stddev"),
            aliases=("normal",),
        ),
        _Class(
            "RandomUniform",
            "random_uniform",
            (
                _Param("minval", -0.05, _number, shown=True),
                _Param("maxval", 0.05, _number, shown=True),
                _SEED,
            ),
            keys=("seed", "minval", "maxval"),
            aliases=("uniform",),
        ),
        _Class(
            "TruncatedNormal",
            "truncated_normal",
            _MEAN_STDDEV,
            keys=("seed", "mean", "stddev"),
        ),
        _Class(
            "VarianceScaling",
            "variance_scaling",
            (
                _Param("scale", 1.0, _positive, shown=True),
                _Param("mode", "fan_in", _choice(*_MODES), shown=True),
                _Param(
                    "distribution",
                    "truncated_normal",
                    # Keras lowercases the name and reads "normal" as truncated.
                    _choice(*_DISTRIBUTIONS, aliases={"normal": "truncated_normal"}),
                    shown=True,
                ),
                *_FAN_ARGS,
            ),
            keys=("seed", "scale", "mode", "distribution", "input_axes", "output_axes"),
        ),
        _Class("GlorotNormal", "glorot_normal", _FAN_ARGS),
        _Class("GlorotUniform", "glorot_uniform", _FAN_ARGS),
        _Class("HeNormal", "he_normal", _FAN_ARGS),
        _Class("HeUniform", "he_uniform", _FAN_ARGS),
        _Class("LecunNormal", "lecun_normal", _FAN_ARGS),
        _Class("LecunUniform", "lecun_uniform", _FAN_ARGS),
        _Class(
            "Orthogonal",
            "orthogonal",
            (_Param("gain", 1.0, _number), _SEED),
            keys=("seed", "gain"),
            aliases=("OrthogonalInitializer",),
        ),
        _Class(
            "Identity",
            "identity",
            (_Param("gain", 1.0, _unit_gain),),
            keys=(),
            aliases=("IdentityInitializer",),
        ),
    ),
)

_REGULARIZERS = _Family(
    "regularizer",
    "keras.regularizers",
    (
        _Class(
            "L1", "l1", (_Param("l1", 0.01, _factor(0.01, float32=True), shown=True),)
        ),
        _Class("L2", "l2", (_Param("l2", 0.01, _factor(0.01), shown=True),)),
        _Class(
            "L1L2",
            "l1_l2",
            (
                _Param("l1", 0.0, _factor(0.0), shown=True),
                _Param("l2", 0.0, _factor(0.0), shown=True),
            ),
            # Keras's own snake-case name is "l1l2"; its function is l1_l2.
            aliases=("l1l2",),
        ),
    ),
)

_CONSTRAINTS = _Family(
    "constraint",
    "keras.constraints",
    (
        _Class("NonNeg", "non_neg"),
        _Class(
            "MaxNorm",
            "max_norm",
            (_Param("max_value", 2, _number, shown=True), _Param("axis", 0, _axis)),
        ),
        _Class(
            "MinMaxNorm",
            "min_max_norm",
            (
                _Param("min_value", 0.0, _number, shown=True),
                _Param("max_value", 1.0, _number, shown=True),
                _Param("rate", 1.0, _number),
                _Param("axis", 0, _axis),
            ),
        ),
        _Class("UnitNorm", "unit_norm", (_Param("axis", 0, _axis),)),
    ),
)

_FAMILIES = (_INITIALIZERS, _REGULARIZERS, _CONSTRAINTS)
_NONE_WORDS = frozenset({"none", "None", "null"})


# --- parsing ----------------------------------------------------------------


def _split_arguments(text: str) -> list[str]:
    """Splits ``a,b,[1,2],k=v`` at the commas outside brackets."""
    pieces, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        elif char == "," and depth == 0:
            pieces.append(text[start:index])
            start = index + 1
    pieces.append(text[start:])
    return [piece.strip() for piece in pieces]


_KEYWORD = re.compile(r"^([A-Za-z_]\w*)\s*=(.*)$", re.DOTALL)


def _token_value(token: str) -> Any:
    """Reads one argument: a JSON value, ``None``, or else a bare word."""
    if token in _NONE_WORDS:
        return None
    try:
        return json.loads(token)
    except ValueError:
        pass
    try:
        return float(token)  # ".5", "5.", which JSON refuses
    except ValueError:
        return token


def _config(
    family: _Family,
    cls: _Class,
    positional: Sequence[Any],
    keywords: dict[str, Any],
    spec: object,
) -> dict[str, Any]:
    """Builds the full Keras config of ``cls`` from constructor arguments."""
    where = f"bad {family.noun} {spec!r}"
    names = [param.name for param in cls.params]
    if len(positional) > len(names):
        raise ConfigError(
            f"{where}: {len(positional)} positional arguments given, {cls.name} "
            f"takes at most {len(names)}; {cls.usage()}"
        )
    values = dict(zip(names, positional, strict=False))
    for key, value in keywords.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown argument {key!r}; {cls.usage()}")
        if key in values:
            raise ConfigError(f"{where}: {key!r} given twice; {cls.usage()}")
        values[key] = value
    checked = {}
    for param in cls.params:
        value = values.get(param.name, param.default)
        try:
            checked[param.name] = param.check(value)
        except ArgumentError as exc:
            raise ConfigError(f"{where}: {param.name}: {exc}; {cls.usage()}") from None
    return {
        "module": family.module,
        "class_name": cls.class_name,
        "config": {key: checked[key] for key in cls.config_keys},
        "registered_name": None,
    }


def _from_keras_config(family: _Family, config: dict[str, Any]) -> dict[str, Any]:
    """Normalizes a serialized Keras object (Keras 2 or 3) to Keras 3.15's form."""
    module = config.get("module")
    if isinstance(module, str) and not module.startswith("keras"):
        name = config.get("registered_name") or config.get("class_name")
        raise ConfigError(
            f"custom {family.noun} {name!r} from {module!r} is not supported; "
            f"valid names: {family.names()}"
        )
    cls = family.by_class_name(config.get("class_name"))
    inner = config.get("config")
    if inner is None:
        inner = {}
    if not isinstance(inner, dict):
        raise ConfigError(
            f"bad {family.noun} config {config!r}: 'config' must be an object; "
            f"{cls.usage()}"
        )
    return _config(family, cls, (), inner, config)


def _parse(family: _Family, spec: object) -> dict[str, Any] | None:
    if spec is None:
        return None
    if isinstance(spec, dict):
        return _from_keras_config(family, spec)
    if not isinstance(spec, str):
        raise ConfigError(
            f"cannot interpret {family.noun} {spec!r}; valid names: {family.names()}"
        )
    text = spec.strip()
    if text in _NONE_WORDS:
        return None
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"malformed JSON in {family.noun} spec: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{family.noun} JSON must be an object, got {text!r}")
        return _from_keras_config(family, loaded)
    name, colon, arguments = text.partition(":")
    cls = family.by_name(name.strip())
    positional: list[Any] = []
    keywords: dict[str, Any] = {}
    if colon:
        for piece in _split_arguments(arguments):
            if not piece:
                raise ConfigError(
                    f"bad {family.noun} {spec!r}: empty argument; {cls.usage()}"
                )
            keyword = _KEYWORD.match(piece)
            if keyword is not None:
                key = keyword.group(1)
                if key in keywords:
                    raise ConfigError(
                        f"bad {family.noun} {spec!r}: {key!r} given twice; "
                        f"{cls.usage()}"
                    )
                keywords[key] = _token_value(keyword.group(2).strip())
            elif keywords:
                raise ConfigError(
                    f"bad {family.noun} {spec!r}: positional argument {piece!r} "
                    f"after a keyword argument; {cls.usage()}"
                )
            else:
                positional.append(_token_value(piece))
    return _config(family, cls, positional, keywords, spec)


def parse_initializer(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """Parses an initializer spec into its Keras 3.15 config.

    Args:
        spec: A name (``"ones"``, ``"HeNormal"``), a name with arguments
            (``"constant:0.5"``, ``"random_normal:0,0.05,seed=7"``), or a Keras
            serialized config as a dict or JSON text.

    Returns:
        The config ``keras.initializers.serialize`` gives for the same
        initializer, every default key filled in.

    Raises:
        ConfigError: For ``None``, an unknown name or class, malformed JSON,
            or arguments Keras would refuse (the message lists the valid
            names or arguments).

    Example:
        >>> parse_initializer("constant:0.5")["config"]
        {'value': 0.5}
    """
    config = _parse(_INITIALIZERS, spec)
    if config is None:
        raise ConfigError(
            f"an initializer is required, got {spec!r}; "
            f"valid names: {_INITIALIZERS.names()}"
        )
    return config


def parse_regularizer(spec: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Parses a regularizer spec into its Keras 3.15 config.

    Args:
        spec: ``None`` or ``"none"``; a name (``"l2"``, ``"L1L2"``); a name with
            factors (``"l2:0.01"``, ``"l1_l2:0.01,0.02"``); or a Keras
            serialized config as a dict or JSON text.

    Returns:
        The config ``keras.regularizers.serialize`` gives, or ``None``.

    Raises:
        ConfigError: For an unknown name, malformed JSON, or a factor Keras
            refuses (negative, infinite, not a number).

    Example:
        >>> parse_regularizer("l1_l2:0.01,0.02")["config"]
        {'l1': 0.01, 'l2': 0.02}
    """
    return _parse(_REGULARIZERS, spec)


def parse_constraint(spec: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Parses a constraint spec into its Keras 3.15 config.

    Args:
        spec: ``None`` or ``"none"``; a name (``"non_neg"``, ``"MaxNorm"``); a
            name with arguments (``"max_norm:2"``, ``"min_max_norm:0.5,2"``);
            or a Keras serialized config as a dict or JSON text.

    Returns:
        The config ``keras.constraints.serialize`` gives, or ``None``.

    Raises:
        ConfigError: For an unknown name, malformed JSON or a bad argument.

    Example:
        >>> parse_constraint("max_norm:3")["config"]
        {'max_value': 3, 'axis': 0}
    """
    return _parse(_CONSTRAINTS, spec)


# --- describing ---------------------------------------------------------------


def _format(value: Any) -> str:
    if isinstance(value, float):
        return format(value, ".7g")
    return str(value)


def describe(config: dict[str, Any] | None) -> str:
    """A short text for an initializer, regularizer or constraint config.

    The snake-case name, then the main arguments positionally and any other
    argument that differs from its default as ``key=value``: ``"zeros"``,
    ``"constant(0.5)"``, ``"l2(0.01)"``, ``"max_norm(2)"``,
    ``"random_normal(0, 0.05, seed=7)"``; ``"none"`` for ``None``.

    Args:
        config: A config of any of the three kinds, or ``None``.

    Returns:
        The text.

    Raises:
        ConfigError: If ``config`` is not a config of a supported class.

    Example:
        >>> describe({"class_name": "L1L2", "config": {"l1": 0.01, "l2": 0.02}})
        'l1_l2(0.01, 0.02)'
    """
    if config is None:
        return "none"
    if not isinstance(config, dict):
        raise ConfigError(f"cannot describe {config!r}: not a Keras config")
    module = config.get("module")
    families = [family for family in _FAMILIES if family.module == module]
    if not families:
        class_name = config.get("class_name")
        families = [
            family
            for family in _FAMILIES
            if isinstance(class_name, str) and class_name in family.spellings
        ]
    if not families:
        valid = ", ".join(
            sorted(cls.class_name for family in _FAMILIES for cls in family.classes)
        )
        raise ConfigError(
            f"cannot describe {config!r}: unknown class; valid class names: {valid}"
        )
    family = families[0]
    parsed = _from_keras_config(family, config)
    cls = family.by_class_name(parsed["class_name"])
    options = parsed["config"]
    parts = []
    for param in cls.params:
        if param.name not in options:
            continue
        value = options[param.name]
        if param.shown:
            parts.append(_format(value))
        elif value != param.default:
            parts.append(f"{param.name}={_format(value)}")
    return f"{cls.name}({', '.join(parts)})" if parts else cls.name
