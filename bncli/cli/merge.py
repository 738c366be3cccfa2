"""``bncli merge``: partial states composed into one, as one fit of the stream."""

from __future__ import annotations

import click

from bncli.cli.options import POSITIVE, report_options


@click.command(short_help="Merge partial states into a state, as one fit.")
@click.argument("state", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--epochs",
    type=POSITIVE,
    default=1,
    show_default=True,
    help="Apply the merged epoch this many times, as fit --epochs would.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for another process's lock on the state instead of failing.",
)
@report_options
def merge(
    state: str,
    parts: tuple[str, ...],
    epochs: int,
    wait: bool,
    as_json: bool,
    quiet: bool,
    debug: bool,
) -> None:
    """Merge the partial states PARTS (from fit --rows/--part) into STATE.

    The parts may come in any order; they must cover the stream's rows with
    no gap or overlap, from the same inputs, batch size, --stats, options and
    layer. STATE is created, or continued as fit continues it; the result is
    the state one fit over the whole stream gives.

    \b
    Example:
      bncli fit part-1.h5 data/ --part 1/2 --stats exact
      bncli fit part-2.h5 data/ --part 2/2 --stats exact
      bncli merge state.h5 part-*.h5
    """
    from bncli.cli.render import after_commit, counted, emit_json, fit_document, say
    from bncli.parts import merge_parts

    done = merge_parts(state, parts, epochs=epochs, wait=wait)
    summary = done.summary
    result = fit_document(done.state, summary, done.batches_seen, done.samples_seen)
    with after_commit():
        if as_json:
            emit_json(result)
        elif not quiet:
            say(
                f"merged {counted(len(parts), 'part')} into {done.state}: "
                f"{counted(summary.batches, 'batch', 'batches')}, "
                f"{counted(summary.samples, 'sample')} "
                f"({counted(done.batches_seen, 'batch', 'batches')} seen in all)"
            )
