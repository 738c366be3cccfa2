"""The command group and the error edge.

Only :func:`main` maps exceptions to exit codes and ``error:`` lines (HTTPie's
``raw_main``): library errors by their ``exit_code``, click's usage errors as
one line with exit 2, Ctrl-C as ``error: interrupted`` with 130, a closed
stdout quietly, anything else as exit 1 pointing to ``--debug``.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

import click

from bncli.cli.lazy import LazyGroup
from bncli.cli.signals import catching_interrupts, received
from bncli.version import __version__

#: The error line of each stop signal; the exit code is 128 + its number.
_STOP_WORDS: dict[int, str] = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "terminated",
    signal.SIGHUP: "hangup",
}


class Interrupted(BaseException):
    """Ctrl-C inside a command, carried past click's own handler.

    click answers a KeyboardInterrupt with a blank line on stderr before
    :func:`main` sees it; the one line we print is ``error: interrupted``.
    """


class Group(LazyGroup):
    """The bncli group: lazy commands, Ctrl-C passed on as :class:`Interrupted`."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as e:
            raise Interrupted from e


COMMANDS = {
    "fit": "bncli.cli.fit:fit",
    "transform": "bncli.cli.transform:transform",
    "inspect": "bncli.cli.inspect:inspect",
    "freeze": "bncli.cli.state_commands:freeze",
    "unfreeze": "bncli.cli.state_commands:unfreeze",
    "set": "bncli.cli.state_commands:set_values",
    "export": "bncli.cli.interop:export",
    "import": "bncli.cli.interop:import_",
    "merge": "bncli.cli.merge:merge",
    "recalibrate": "bncli.cli.recalibrate:recalibrate",
}

SUMMARIES = {
    "fit": "Update a state's moving statistics from data, as Keras training does.",
    "transform": "Normalize data with a state (inference, or --training).",
    "inspect": "Show a state, or the BatchNormalization layers of a Keras model.",
    "freeze": "Freeze a state (trainable=False): fit refuses, training runs as inference.",
    "unfreeze": "Unfreeze a state (trainable=True).",
    "set": "Set gamma, beta or the moving statistics of a state.",
    "export": "Write a state as a Keras model (.keras) or weights file (.weights.h5).",
    "import": "Read a BatchNormalization layer of a Keras model file into a state.",
    "merge": "Merge partial states (fit --rows/--part) into a state, as one fit.",
    "recalibrate": "Re-estimate every BatchNormalization layer of a Keras model from data.",
}


@click.group(
    cls=Group,
    lazy_commands=COMMANDS,
    lazy_summaries=SUMMARIES,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="bncli")
def cli() -> None:
    """Keras 3 BatchNormalization for data pipelines.

    Fit a layer's moving statistics by streaming Parquet, Arrow, CSV or NPY
    files, normalize data with it, and inspect saved states and Keras models.

    \b
    Example:
      bncli fit state.h5 data/ --exclude id
      bncli transform state.h5 data.parquet -o normalized.parquet
      bncli inspect state.h5
    """


def _error(message: str) -> None:
    # One line, whatever the message holds: names from files may carry control
    # characters (an ESC sequence, a forged "\r\nerror: ..."), shown as escapes.
    from bncli.cli.text import printable

    text = " ".join(printable(message).split())
    try:
        sys.stderr.write(f"error: {text}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):  # pragma: no cover - stderr is gone
        pass


def _choose_arrow_pool() -> None:
    """Arrow's jemalloc with one arena, in bncli's own process, where it has one.

    A table fit decodes its columns in pyarrow's threads, copies the channels
    in a reader thread and frees them in the workers: with pyarrow's default
    pool (mimalloc) about 35 MiB of freed pages stay resident (a 1 GiB
    Parquet fit peaks at 144-149 MiB); jemalloc with a single arena gives
    them to the next batches (110-115 MiB, at the same speed). Arrow reads
    both variables when it first allocates, so they are set before anything
    imports pyarrow; on Linux only, where pyarrow's wheels and conda builds
    carry jemalloc (elsewhere naming it would print Arrow's warning). Values
    already in the environment win, and a program calling the library keeps
    its own pool.
    """
    if sys.platform.startswith("linux") and "pyarrow" not in sys.modules:
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
        os.environ.setdefault("JE_ARROW_MALLOC_CONF", "narenas:1")


#: How long OpenBLAS's threads wait for work, busy, before they sleep: 2**4
#: cycles (its least) instead of its default 2**28 (about 0.08 s).
BLAS_THREAD_TIMEOUT = "4"


def _quiet_blas(args: Sequence[str]) -> None:
    """OpenBLAS threads that sleep at once, in the CLI's process, but for recalibrate.

    NumPy's OpenBLAS starts a thread per core when NumPy is imported, and
    each waits for work busily for 2**28 cycles before it sleeps: about
    0.1 s of a core per command (a small fit took 0.34 s of CPU, 0.23 s
    with the least wait, in make bench's CPU row), which bncli commands run
    side by side by a pipeline pay in wall time on a 2-core machine (30
    small fits two at a time: 4.9-5.0 s -> 3.9-4.0 s). No command but recalibrate (Keras models) calls BLAS; its
    threads are left as they are. Set before anything imports NumPy; a
    value in the environment wins, and a program calling the library keeps
    its own.
    """
    command = next((a for a in args if not a.startswith("-")), None)
    if command != "recalibrate" and "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_THREAD_TIMEOUT)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the CLI and exit with its code; the only place exceptions become codes."""
    from bncli.errors import BncliError

    _choose_arrow_pool()
    args = list(sys.argv[1:] if argv is None else argv)
    _quiet_blas(args)
    debug = "--debug" in args or bool(os.environ.get("BNCLI_DEBUG"))
    code = 0
    try:
        with catching_interrupts():
            result = cli.main(args=args, prog_name="bncli", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except click.exceptions.Exit as e:
        code = e.exit_code
    except (Interrupted, KeyboardInterrupt, click.exceptions.Abort):
        if debug:
            traceback.print_exc()
        signum = received()
        _error(_STOP_WORDS.get(signum, "interrupted"))
        code = 128 + signum
    except click.UsageError as e:
        if debug:
            traceback.print_exc()
        command = e.ctx.command_path.removeprefix("bncli").strip() if e.ctx else ""
        where = f"{command}: " if command else ""
        hint = ""
        if e.ctx is not None and e.ctx.command.get_help_option(e.ctx) is not None:
            hint = f" (see: {e.ctx.command_path} --help)"
        _error(f"{where}{e.format_message()}{hint}")
        code = e.exit_code
    except click.ClickException as e:
        _error(e.format_message())
        code = e.exit_code
    except BncliError as e:
        if debug:
            traceback.print_exc()
        _error(e.line())
        code = e.exit_code
    except BrokenPipeError:
        # The reader went away (``bncli ... | head``): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    except Exception as e:
        if debug:
            traceback.print_exc()
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _error(
            f"unexpected {type(e).__name__}: {first} (run with --debug for the traceback)"
        )
        code = 1
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
