"""``bncli fit``: create or continue a state from data."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from bncli.cli.options import (
    POSITIVE,
    check_engine,
    data_options,
    engine_options,
    engine_record,
    layer_options,
    report_options,
)
from bncli.layer import CONFIG_KEYS

#: The layer options a state remembers: its config keys that are CLI options.
LAYER_OPTIONS = tuple(
    key
    for key in CONFIG_KEYS
    if key not in ("trainable", "renorm", "renorm_clipping", "renorm_momentum")
)


@click.command(short_help="Update a state's moving statistics from data.")
@click.argument("state", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, type=click.Path())
@layer_options
@click.option(
    "--batch-size",
    type=POSITIVE,
    default=32,
    show_default=True,
    help="Samples per batch.",
)
@click.option(
    "--epochs",
    type=POSITIVE,
    default=1,
    show_default=True,
    help="Passes over the inputs; each epoch is batched on its own.",
)
@click.option(
    "--drop-remainder", is_flag=True, help="Leave out each epoch's last, partial batch."
)
@click.option(
    "--replicas",
    type=POSITIVE,
    default=1,
    show_default=True,
    help="Split each batch into R shards, as R data-parallel devices.",
)
@data_options
@click.option(
    "--checkpoint-every",
    type=POSITIVE,
    default=None,
    metavar="N",
    help="Save the state every N batches (resume with --resume).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted fit from its last checkpoint.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for another process's lock on the state instead of failing.",
)
@engine_options
@report_options
def fit(state: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Update a state's moving statistics from data, as Keras training does.

    Streams INPUTS (Parquet, Arrow, CSV or NPY files, folders of them, or -
    for stdin) in batches of exactly --batch-size samples and updates the
    moving mean and variance as BatchNormalization(training=True) does. STATE
    is created from the layer options if it does not exist; otherwise the fit
    goes on from it and every layer option not given comes from it.

    \b
    Example:
      bncli fit state.h5 data/*.parquet --exclude id --momentum 0.9
      bncli fit images.h5 images.npy --axis -1 --batch-size 64 --epochs 3
    """
    from bncli.cli.render import (
        after_commit,
        counted,
        emit_json,
        make_progress,
        say,
        warn,
    )
    from bncli.engines.base import RESUMED_OPTIONS, FitOptions
    from bncli.engines.local import fit_layer
    from bncli.errors import UsageError
    from bncli.layer import BatchNormalization, load
    from bncli.state import checkpoint_path, lock

    given = {k: options.pop(k) for k in LAYER_OPTIONS}
    seed = options.pop("seed")
    if not inputs and not options["resume"]:
        raise UsageError("fit: give at least one INPUT (a file, a folder or -)")
    check_engine(options)
    path = Path(state)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{state}: the state's folder {folder} does not exist")
    with _naming_state(path), lock(path, wait=options["wait"]):
        checkpoint = checkpoint_path(path)
        if options["resume"] and checkpoint.exists():
            layer = load(checkpoint)  # the state, with the position reached
            _check_against_state(layer, given, path)
        elif path.exists():
            layer = load(path)
            _check_against_state(layer, given, path)
        else:
            if options["resume"]:
                from bncli.errors import StateNotFoundError

                raise StateNotFoundError(
                    "state not found, nothing to resume", path=path
                )
            kwargs = {k: v for k, v in given.items() if v is not None}
            layer = BatchNormalization(**kwargs, seed=seed)
        if not options["resume"] and checkpoint.exists():
            warn(
                f"{checkpoint} holds an unfinished fit's checkpoint; this fit "
                "starts from the state as it is and replaces it (use --resume "
                "to continue that fit instead)"
            )
        fit_options = engine_record(FitOptions, options)
        explicit = _given_on_the_command_line(RESUMED_OPTIONS)
        progress = make_progress(options["quiet"], "fit")
        if options["engine"] == "dask":
            from bncli.engines.dask_engine import fit_layer as dask_fit

            summary = dask_fit(
                layer,
                list(inputs),
                fit_options,
                scheduler=options["scheduler"],
                checkpoint_every=options["checkpoint_every"],  # refused there
                resume=options["resume"],  # refused there
                progress=progress,
            )
        else:
            summary = fit_layer(
                layer,
                list(inputs),
                fit_options,
                checkpoint_every=options["checkpoint_every"],
                # Beside the state, never in it: a fit that fails leaves the
                # state as it was (and its checkpoint, for --resume).
                checkpoint=lambda current: current.save(checkpoint),
                progress=progress,
                resume=options["resume"],
                given=explicit,
            )
        layer.save(path)
        checkpoint.unlink(missing_ok=True)
    result = {
        "state": str(path),
        "batches": summary.batches,
        "samples": summary.samples,
        "epochs": summary.epochs,
        "seconds": round(summary.seconds, 6),
        "batches_seen": layer.batches_seen,
        "samples_seen": layer.samples_seen,
    }
    with after_commit():
        if options["as_json"]:
            emit_json(result)
        elif not options["quiet"]:
            say(
                f"fitted {path}: {counted(summary.batches, 'batch', 'batches')}, "
                f"{counted(summary.samples, 'sample')} in {summary.seconds:.2f}s "
                f"({counted(layer.batches_seen, 'batch', 'batches')} seen in all)"
            )


def _given_on_the_command_line(names: tuple[str, ...]) -> frozenset[str]:
    """Which of the fit options ``names`` the user gave (not their defaults)."""
    from click.core import ParameterSource

    context = click.get_current_context()
    aliases = {"mask": "masks"}
    return frozenset(
        name
        for name in names
        if context.get_parameter_source(aliases.get(name, name))
        not in (None, ParameterSource.DEFAULT)
    )


@contextlib.contextmanager
def _naming_state(path: Path) -> Iterator[None]:
    """Name the state in the errors the library raises without a path.

    The library's fit knows no state file: a frozen state, nothing to resume,
    or --columns that contradict the state's channels.
    """
    from bncli.errors import StateError

    try:
        yield
    except StateError as e:
        if e.path is None:
            e.path = str(path)
        raise


def _check_against_state(layer: Any, given: dict[str, Any], path: Path) -> None:
    """Refuse layer options that contradict the stored config (exit 4)."""
    from bncli.errors import StateMismatchError

    config = layer.get_config()
    for key, value in given.items():
        if value is None:
            continue
        if key == "dtype":
            stored: Any = layer.dtype_policy.name
        elif key == "axis":
            ndim = len(layer.sample_shape) + 1
            value = value + ndim if value < 0 else value
            stored = layer.channel_axis
        else:
            stored = config[key]
        if key in ("momentum", "epsilon"):
            same = float(value) == float(stored)
        else:
            same = value == stored
        if not same:
            flag = "--" + key.replace("_", "-")
            raise StateMismatchError(
                f"{flag} {_show(value)} contradicts the state's {key} {_show(stored)}",
                path=path,
                hint="leave the option out, or fit a new state",
            )


def _show(value: Any) -> str:
    import json

    if isinstance(value, dict):
        return json.dumps(value.get("class_name", value))
    return json.dumps(value) if not isinstance(value, str) else value
