"""``bncli transform``: normalize data with a state."""

from __future__ import annotations

from typing import Any

import click

from bncli.cli.options import (
    POSITIVE,
    DTypeName,
    check_engine,
    data_options,
    engine_options,
    engine_record,
    report_options,
)


@click.command(short_help="Normalize data with a state.")
@click.argument("state", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o",
    "--output",
    required=True,
    help="Output file (.parquet, .arrow, .feather, .csv, .npy) or - for stdout.",
)
@click.option(
    "--training",
    is_flag=True,
    help="Use each batch's statistics, as Keras training mode (the state is not changed).",
)
@click.option(
    "--batch-size",
    type=POSITIVE,
    default=32,
    show_default=True,
    help="Samples per batch with --training.",
)
@click.option(
    "--replicas",
    type=POSITIVE,
    default=1,
    show_default=True,
    help="With --training, shards per batch (unsynchronized: each its own statistics).",
)
@click.option(
    "--output-dtype",
    type=DTypeName(),
    default=None,
    help="Dtype of the outputs (default: the policy's compute dtype).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--single-file",
    is_flag=True,
    help="With --engine dask, join the Parquet parts into one file.",
)
@data_options
@engine_options
@report_options
def transform(state: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Normalize INPUTS with STATE into OUTPUT.

    Inference mode by default: y = gamma * (x - moving_mean) /
    sqrt(moving_variance + epsilon) + beta. With --training each batch uses
    its own statistics (the state is left unchanged). The state's channels
    are selected by name; other columns pass through untouched, and row
    count, row order and null cells are kept.

    \b
    Example:
      bncli transform state.h5 data.parquet -o normalized.parquet
      cat batch.arrows | bncli transform state.h5 - -o - > out.arrows
    """
    from bncli.cli.render import after_commit, counted, emit_json, make_progress, say
    from bncli.engines.base import TransformOptions
    from bncli.errors import UsageError
    from bncli.workflows import transform_state

    check_engine(options)
    if options["as_json"] and options["output"] == "-":
        raise UsageError("--json cannot share stdout with -o -")
    if options["exclude"] or options["columns"]:
        raise UsageError(
            "transform: the state's channels are used; --columns and --exclude are for fit"
        )
    summary = transform_state(
        state,
        list(inputs),
        options["output"],
        engine_record(TransformOptions, options),
        engine=options["engine"],
        scheduler=options["scheduler"],
        single_file=options["single_file"],
        progress=make_progress(options["quiet"], "transform"),
    )
    result = {
        "output": summary.output,
        "samples": summary.samples,
        "seconds": round(summary.seconds, 6),
    }
    with after_commit():
        if options["as_json"]:
            emit_json(result)
        elif not options["quiet"]:
            say(
                f"wrote {summary.output}: {counted(summary.samples, 'sample')} "
                f"in {summary.seconds:.2f}s"
            )
