"""``bncli recalibrate``: re-estimate a Keras model's BatchNormalization layers from data."""

from __future__ import annotations

from typing import Any

import click

from bncli.cli.options import (
    POSITIVE,
    NameList,
    read_options,
    read_record,
    report_options,
)


@click.command(short_help="Re-estimate every BatchNormalization layer of a model.")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False),
    help="The model to write (a copy of MODEL with the new statistics).",
)  # fmt: skip
@click.option(
    "--stats",
    type=click.Choice(["precise", "ema", "exact"]),
    default="precise",
    show_default=True,
    help="precise: the mean over batches of the batch statistics; ema: each "
    "layer's moving average; exact: the population statistics of each layer's "
    "inputs (one pass per layer).",
)
@click.option(
    "--batch-size",
    type=POSITIVE,
    default=32,
    show_default=True,
    help="Samples per batch.",
)
@click.option(
    "--max-batches", type=POSITIVE, default=None, help="Stop after N batches."
)
@click.option(
    "--layers",
    type=NameList(),
    default=None,
    help="Only these layers (names or paths, as inspect lists them).",
)
@click.option(
    "--columns", type=NameList(), default=None,
    help="Table columns that are the model's input vector, in order.",
)  # fmt: skip
@click.option(
    "--custom-objects",
    multiple=True,
    metavar="MODULE",
    help="Import this module first, to register custom classes (repeatable).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT (MODEL itself too).")
@read_options[0]
@read_options[1]
@report_options
def recalibrate(model: str, inputs: tuple[str, ...], **options: Any) -> None:
    """Re-estimate the moving statistics of MODEL's BatchNormalization layers from INPUTS.

    MODEL is a .keras file; INPUTS are NPY arrays (N, *input_shape) or tables
    whose columns are the input vector. The model runs with Keras (the keras
    extra: pip install 'bncli[keras]'); OUTPUT is a copy of MODEL in which only
    the layers' moving mean and variance change.

    \b
    Example:
      bncli recalibrate model.keras train.npy -o model-bn.keras
      bncli recalibrate model.keras data/ -o out.keras --stats exact --layers bn_1,bn_2
    """
    from bncli.cli.render import after_commit, counted, emit_json, make_progress, say
    from bncli.recalibrate import recalibrate as run

    done = run(
        model,
        list(inputs),
        options["output"],
        stats=options["stats"],
        batch_size=options["batch_size"],
        max_batches=options["max_batches"],
        layers=options["layers"],
        columns=options["columns"],
        overwrite=options["overwrite"],
        custom_objects=options["custom_objects"],
        read=read_record(options),
        progress=make_progress(options["quiet"], "recalibrate"),
    )
    result = {
        "output": str(done.output),
        "batches": done.batches,
        "samples": done.samples,
        "seconds": round(done.seconds, 6),
        "layers": done.layers,
    }
    with after_commit():
        if options["as_json"]:
            emit_json(result)
        elif not options["quiet"]:
            say(
                f"wrote {done.output}: {counted(len(done.layers), 'layer')} re-estimated "
                f"from {counted(done.samples, 'sample')} in {done.seconds:.2f}s"
            )
