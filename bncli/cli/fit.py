"""``bncli fit``: create or continue a state from data."""

from __future__ import annotations

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
@click.option(
    "--stats",
    "statistics",
    type=click.Choice(["ema", "precise", "exact"]),
    default=None,
    help="How batches sum up: ema (Keras's moving average, the default for a new "
    "state), precise (the mean over batches of their statistics) or exact (the "
    "mean and variance of every value). A state keeps its own.",
)
@click.option(
    "--reset-statistics",
    is_flag=True,
    help="Start the moving statistics and the progress again from the "
    "initializers before the fit (config, gamma and beta are kept).",
)
@click.option(
    "--until-share",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    metavar="X",
    help="After the epochs asked for, go on with whole epochs until the "
    "initializers weigh under X in every channel (ema only).",
)
@click.option(
    "--max-epochs",
    type=POSITIVE,
    default=1000,
    show_default=True,
    help="With --until-share: the most epochs this run may take.",
)
@click.option(
    "--rows",
    default=None,
    metavar="START:STOP",
    help="A partial fit of these rows of the stream (0-based; STOP may be left "
    "out): STATE becomes a part for bncli merge.",
)
@click.option(
    "--part",
    default=None,
    metavar="K/N",
    help="A partial fit of the K-th of N equal row ranges (as numpy.array_split).",
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
        fit_document,
        make_progress,
        say,
        warn,
    )
    from bncli.engines.base import RESUMED_OPTIONS, RESUMED_READ_OPTIONS, FitOptions
    from bncli.errors import UsageError
    from bncli.state import checkpoint_path
    from bncli.workflows import fit_state

    layer_options = {k: options.pop(k) for k in LAYER_OPTIONS}
    seed = options.pop("seed")
    if not inputs and not options["resume"]:
        raise UsageError("fit: give at least one INPUT (a file, a folder or -)")
    check_engine(options)
    if options["rows"] is not None or options["part"] is not None:
        _fit_part(state, inputs, options, layer_options, seed)
        return
    if not options["resume"] and checkpoint_path(state).exists():
        warn(
            f"{checkpoint_path(state)} holds an unfinished fit's checkpoint; this "
            "fit starts from the state as it is and replaces it (use --resume to "
            "continue that fit instead)"
        )
    done = fit_state(
        state,
        inputs,
        engine_record(FitOptions, options),
        layer_options=layer_options,
        seed=seed,
        engine=options["engine"],
        scheduler=options["scheduler"],
        checkpoint_every=options["checkpoint_every"],
        resume=options["resume"],
        wait=options["wait"],
        given=_given_on_the_command_line(RESUMED_OPTIONS + RESUMED_READ_OPTIONS),
        progress=make_progress(options["quiet"], "fit"),
    )
    summary = done.summary
    result = fit_document(done.state, summary, done.batches_seen, done.samples_seen)
    with after_commit():
        if options["as_json"]:
            emit_json(result)
        elif not options["quiet"]:
            say(
                f"fitted {done.state}: {counted(summary.batches, 'batch', 'batches')}, "
                f"{counted(summary.samples, 'sample')} in {summary.seconds:.2f}s "
                f"({counted(done.batches_seen, 'batch', 'batches')} seen in all)"
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


def _fit_part(
    state: str,
    inputs: tuple[str, ...],
    options: dict[str, Any],
    layer_options: dict[str, Any],
    seed: int | None,
) -> None:
    """``fit --rows``/``--part``: a partial state for ``bncli merge``."""
    from click.core import ParameterSource

    from bncli.cli.render import after_commit, counted, emit_json, make_progress, say
    from bncli.engines.base import FitOptions
    from bncli.errors import UsageError
    from bncli.parts import fit_part, parse_part, parse_rows

    context = click.get_current_context()
    for flag, name in (
        ("--epochs", "epochs"),
        ("--resume", "resume"),
        ("--checkpoint-every", "checkpoint_every"),
        ("--until-share", "until_share"),
        ("--reset-statistics", "reset_statistics"),
        ("--engine", "engine"),
    ):
        if context.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            raise UsageError(f"{flag} cannot be used with --rows or --part")
    if options["rows"] is not None and options["part"] is not None:
        raise UsageError("give one of --rows and --part")
    rows = None if options["rows"] is None else parse_rows(options["rows"])
    part = None if options["part"] is None else parse_part(options["part"])
    done = fit_part(
        state,
        inputs,
        engine_record(FitOptions, options),
        rows=rows,
        part=part,
        layer_options=layer_options,
        seed=seed,
        wait=options["wait"],
        progress=make_progress(options["quiet"], "fit part"),
    )
    result = {
        "state": str(done.path),
        "part": {"start": done.start, "stop": done.stop, "rows": done.rows},
        "batches": done.summary.batches,
        "samples": done.summary.samples,
        "seconds": round(done.summary.seconds, 6),
    }
    with after_commit():
        if options["as_json"]:
            emit_json(result)
        elif not options["quiet"]:
            say(
                f"fitted part {done.path}: rows {done.start}:{done.stop} of "
                f"{done.rows}, {counted(done.summary.samples, 'sample')}; merge the "
                "parts with: bncli merge STATE PART..."
            )
