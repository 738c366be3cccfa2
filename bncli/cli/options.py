"""Shared options and parameter types.

A parameter type wraps the library's own parser, so a bad value exits 2
with the library's message (valid names listed) as one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = Callable[..., Any]
R = TypeVar("R")


class SpecType(click.ParamType):  # type: ignore[type-arg]
    """An initializer, regularizer or constraint spec string (`l2:0.01`, JSON...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = kind

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from bncli.errors import ConfigError
        from bncli.keras_compat import specs

        if not isinstance(value, str):
            return value
        parse = {
            "initializer": specs.parse_initializer,
            "regularizer": specs.parse_regularizer,
            "constraint": specs.parse_constraint,
        }[self.kind]
        try:
            return parse(value)
        except ConfigError as e:
            self.fail(e.message, param, ctx)


class PolicyType(click.ParamType):  # type: ignore[type-arg]
    """A dtype policy name (float32, mixed_float16, ...)."""

    name = "policy"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from bncli.errors import ConfigError
        from bncli.keras_compat import dtypes

        try:
            return dtypes.parse_policy(value).name
        except ConfigError as e:
            self.fail(e.message, param, ctx)


class DTypeName(click.ParamType):  # type: ignore[type-arg]
    """An output dtype name (float16, bfloat16, float32, float64)."""

    name = "dtype"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from bncli.errors import ConfigError
        from bncli.keras_compat import dtypes

        try:
            dtypes.numpy_dtype(value)
        except ConfigError as e:
            self.fail(e.message, param, ctx)
        return value


class NameList(click.ParamType):  # type: ignore[type-arg]
    """A comma-separated list of names, or a JSON list (``'["rev, usd", "id"]'``)."""

    name = "names"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, list):
            return value
        text = str(value)
        if text.lstrip().startswith("["):  # names with commas or spaces: JSON
            import json

            try:
                names = json.loads(text)
            except ValueError as e:
                self.fail(f"not a JSON list of names: {e}", param, ctx)
            if not isinstance(names, list) or not all(
                isinstance(n, str) and n for n in names
            ):
                self.fail(
                    "a JSON list of names must hold non-empty strings", param, ctx
                )
            return names
        names = [v.strip() for v in text.split(",")]
        if not all(names):
            self.fail(f"empty name in {value!r}", param, ctx)
        return names


POSITIVE = click.IntRange(min=1)


def layer_options(f: F) -> F:
    """The layer's constructor arguments; None means 'not given'."""
    options = [
        click.option(
            "--axis",
            type=int,
            default=None,
            help="Channel axis of array inputs (default -1; not 0).",
        ),
        click.option(
            "--momentum",
            type=click.FloatRange(0, 1),
            default=None,
            help="Momentum of the moving averages, in [0, 1] (default 0.99).",
        ),
        click.option(
            "--epsilon",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Added to the variance (default 0.001).",
        ),
        click.option(
            "--center/--no-center",
            default=None,
            help="With a beta offset (default on).",
        ),
        click.option(
            "--scale/--no-scale", default=None, help="With a gamma factor (default on)."
        ),
        click.option(
            "--beta-initializer",
            type=SpecType("initializer"),
            default=None,
            help="Initializer of beta (default zeros).",
        ),
        click.option(
            "--gamma-initializer",
            type=SpecType("initializer"),
            default=None,
            help="Initializer of gamma (default ones).",
        ),
        click.option(
            "--moving-mean-initializer",
            type=SpecType("initializer"),
            default=None,
            help="Initializer of the moving mean (default zeros).",
        ),
        click.option(
            "--moving-variance-initializer",
            type=SpecType("initializer"),
            default=None,
            help="Initializer of the moving variance (default ones).",
        ),
        click.option(
            "--beta-regularizer",
            type=SpecType("regularizer"),
            default=None,
            help="Regularizer of beta: l1, l2, l1_l2 (e.g. l2:0.01).",
        ),
        click.option(
            "--gamma-regularizer",
            type=SpecType("regularizer"),
            default=None,
            help="Regularizer of gamma.",
        ),
        click.option(
            "--beta-constraint",
            type=SpecType("constraint"),
            default=None,
            help="Constraint on beta: non_neg, max_norm, min_max_norm, unit_norm.",
        ),
        click.option(
            "--gamma-constraint",
            type=SpecType("constraint"),
            default=None,
            help="Constraint on gamma.",
        ),
        click.option(
            "--synchronized/--no-synchronized",
            default=None,
            help="Statistics over all --replicas (default off).",
        ),
        click.option(
            "--dtype",
            type=PolicyType(),
            default=None,
            help="Dtype policy: float32 (default), float64, float16, bfloat16, mixed_float16, mixed_bfloat16.",
        ),
        click.option(
            "--name",
            default=None,
            help="The layer's name (default batch_normalization).",
        ),
        click.option(
            "--seed", type=int, default=None, help="Seed of random initializers."
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def data_options(f: F) -> F:
    """Channel selection, masks and NaN handling."""
    options = [
        click.option(
            "--columns",
            type=NameList(),
            default=None,
            help="Channel columns of tables, in this order (a,b,c).",
        ),
        click.option(
            "--exclude",
            type=NameList(),
            default=None,
            help="Columns that are not channels (default: every numeric column is one).",
        ),
        click.option(
            "--mask-column",
            default=None,
            help="A boolean or 0/1 column; false rows count in no statistic.",
        ),
        click.option(
            "--mask",
            "masks",
            multiple=True,
            type=click.Path(dir_okay=False),
            help="NPY mask shaped like the data without the channel axis; once per NPY input or once in all.",
        ),
        click.option(
            "--nan-policy",
            type=click.Choice(["error", "mask"]),
            default="error",
            show_default=True,
            help="NaN or infinity in a channel: an error, or masked out.",
        ),
        *read_options,
    ]
    for option in reversed(options):
        f = option(f)
    return f


#: What a file cannot say itself: CSV's separator, an NPZ archive's array.
read_options = [
    click.option(
        "--delimiter",
        default=",",
        show_default=True,
        metavar="C",
        help="Field separator of CSV inputs and of a CSV output (\\t or tab: a tab).",
    ),
    click.option(
        "--array",
        default=None,
        metavar="NAME",
        help="The array to read of .npz inputs that hold several.",
    ),
]


def read_record(options: dict[str, Any]) -> Any:
    """The :class:`bncli.io.sources.ReadOptions` of a command's options."""
    from bncli.io.sources import ReadOptions

    return ReadOptions(delimiter=options["delimiter"], array=options["array"]).checked()


def engine_options(f: F) -> F:
    """Where the work runs."""
    options = [
        click.option(
            "--engine",
            type=click.Choice(["local", "dask"]),
            default="local",
            show_default=True,
            help="Run on this machine's cores, or on a Dask cluster.",
        ),
        click.option(
            "--scheduler",
            default=None,
            metavar="ADDRESS",
            help="Dask scheduler (tcp://HOST:PORT); default: a local cluster.",
        ),
        click.option(
            "--workers",
            type=POSITIVE,
            default=None,
            help="Cores (local) or worker processes (local Dask cluster); default: all cores.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def check_engine(options: dict[str, Any]) -> None:
    """Refuse Dask-only options without ``--engine dask`` (exit 2)."""
    from bncli.errors import UsageError

    if options.get("engine") != "dask":
        if options.get("scheduler"):
            raise UsageError("--scheduler needs --engine dask")
        if options.get("single_file"):
            raise UsageError("--single-file needs --engine dask")


def engine_record(record: Callable[..., R], options: dict[str, Any]) -> R:
    """The engines' options record (FitOptions, TransformOptions) from a command's.

    Each field takes the click option of its name (fields with no option keep
    their defaults); ``mask`` comes from the repeated ``--mask`` (``masks``).
    """
    fields = [field.name for field in dataclasses.fields(record)]  # type: ignore[arg-type]
    values = {name: options[name] for name in fields if name in options}
    if "delimiter" in options:
        values["read"] = read_record(options)
    return record(**values, mask=list(options["masks"]) or None)


def report_options(f: F) -> F:
    """--json, --quiet, --debug."""
    options = [
        click.option(
            "--json", "as_json", is_flag=True, help="Print one JSON document to stdout."
        ),
        click.option(
            "--quiet", "-q", is_flag=True, help="No progress bar or summary on stderr."
        ),
        click.option("--debug", is_flag=True, help="Show the traceback of an error."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def debug_option(f: F) -> F:
    """--debug alone."""
    return click.option(
        "--debug", is_flag=True, help="Show the traceback of an error."
    )(f)
