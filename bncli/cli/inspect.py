"""``bncli inspect``: what a state holds, or a Keras model's BatchNormalization layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bncli.cli.options import debug_option, read_options, read_record

EXIT_DRIFT = 5


@click.command(
    short_help="Show a state, or the BatchNormalization layers of a Keras model."
)
@click.argument("target", metavar="STATE_OR_MODEL", type=click.Path(dir_okay=True))
@click.argument("more_data", nargs=-1, type=click.Path(), metavar="")
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document to stdout."
)
@click.option(
    "--data",
    "data",
    multiple=True,
    type=click.Path(),
    help="Data to compare with the state (files, folders); drift per channel.",
)
@click.option(
    "--fail-on-drift", is_flag=True, help="Exit 5 when --data drifts from the state."
)
@click.option(
    "--shift-threshold",
    type=click.FloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    help="Drift: largest |mean shift| in moving standard deviations.",
)
@click.option(
    "--ratio-threshold",
    type=click.FloatRange(min=1),
    default=2.0,
    show_default=True,
    help="Drift: largest variance ratio (or its inverse).",
)
@click.option(
    "--html",
    "html",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a self-contained HTML report.",
)
@click.option("--overwrite", is_flag=True, help="Replace the --html file if it exists.")
@click.option(
    "--mask-column",
    default=None,
    help="With --data: a boolean or 0/1 column; false rows are left out.",
)
@click.option(
    "--nan-policy",
    type=click.Choice(["error", "mask"]),
    default="error",
    show_default=True,
    help="With --data: NaN or infinity is an error, or masked out.",
)
@read_options[0]
@read_options[1]
@debug_option
def inspect(target: str, more_data: tuple[str, ...], **options: Any) -> int:
    """Show what STATE_OR_MODEL holds.

    For a state: the config, per-channel moving mean, moving std, gamma and
    beta, the progress, the initializer's share in the moving statistics
    (with a warning above 1%), the regularization penalties, and with --data
    how far that data is from the state. For a Keras model file (.keras,
    .weights.h5, .h5): its BatchNormalization layers, those bncli cannot
    use (renorm=True, ...) marked unsupported with the reason.

    \b
    Example:
      bncli inspect state.h5
      bncli inspect state.h5 --json | jq .initializer_share
      bncli inspect state.h5 --data new/*.parquet --fail-on-drift
      bncli inspect model.keras
    """
    from bncli.cli import render
    from bncli.errors import StateError, UsageError

    data = list(options["data"]) + list(more_data)
    if more_data and not options["data"]:
        raise UsageError(
            f"inspect: unexpected argument {more_data[0]!r} (data to compare goes after --data)"
        )
    if options["fail_on_drift"] and not data:
        raise UsageError("inspect: --fail-on-drift needs --data")
    from bncli.state import refuse_url

    refuse_url(target)  # before Path() folds its "//"
    path = Path(target)
    report = None
    if options["html"]:
        from bncli.io.outputs import check_output

        # Checked before any work: never the state or a data file, never
        # renamed over a FIFO or a device, and --overwrite to replace a file.
        report = check_output(options["html"], [target, *data], options["overwrite"])
    kind = _kind(path)
    if kind == "model":
        if data or options["html"]:
            raise UsageError(
                "inspect: --data and --html are for states, not Keras models"
            )
        from bncli.keras_compat.files import read_batchnorm_layers

        layers = read_batchnorm_layers(path)
        if options["as_json"]:
            render.emit_json(
                {
                    "model": str(path),
                    "layers": [render.model_layer_document(layer) for layer in layers],
                }
            )
        else:
            render.print_model(str(path), layers)
        return 0
    if kind != "state":
        raise StateError("neither a bncli state nor a Keras model file", path=path)
    from bncli.layer import load

    layer = load(path)
    drift = None
    if data:
        from bncli.drift import measure_drift

        drift = measure_drift(
            layer,
            data,
            shift_threshold=options["shift_threshold"],
            ratio_threshold=options["ratio_threshold"],
            mask_column=options["mask_column"],
            nan_policy=options["nan_policy"],
            read=read_record(options),
        )
    if options["as_json"]:
        document = render.state_document(layer)
        if drift is not None:
            document["drift"] = drift
        render.emit_json(document)
    else:
        render.print_state(layer, str(path), drift)
    if report is not None:
        from bncli.cli.html_report import write_report

        write_report(report, layer, str(path), drift)
    if drift is not None and drift["drift"] and options["fail_on_drift"]:
        return EXIT_DRIFT
    return 0


def _kind(path: Path) -> str:
    """ "state", "model" or "other", by content."""
    from bncli.errors import StateError, StateNotFoundError
    from bncli.keras_compat.files import is_keras_file
    from bncli.state import is_state, state_path

    if not path.exists():
        raise StateNotFoundError("no such file", path=path)
    state_path(path)  # a FIFO or a device: refused, never opened
    if path.is_file():
        try:
            with open(path, "rb"):
                pass
        except PermissionError as e:  # the probes below would say "neither"
            raise StateError(
                "cannot read the file (permission denied)", path=path
            ) from e
    if is_state(path):
        return "state"
    return "model" if is_keras_file(path) else "other"
