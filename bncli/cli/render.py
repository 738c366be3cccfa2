"""Output for people (rich tables, progress bars on stderr) and for scripts (JSON).

rich is imported here only, and only when something is drawn.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from bncli.cli.signals import check as check_interrupt
from bncli.cli.text import cell, printable
from bncli.progress import NullProgress, Progress


def fit_document(
    state: Any, summary: Any, batches_seen: int, samples_seen: int
) -> dict[str, Any]:
    """The ``--json`` document of ``fit`` (and of ``merge``, which prints the same)."""
    return {
        "state": str(state),
        "batches": summary.batches,
        "samples": summary.samples,
        "epochs": summary.epochs,
        "seconds": round(summary.seconds, 6),
        "batches_seen": batches_seen,
        "samples_seen": samples_seen,
    }


def emit_json(document: Any) -> None:
    """Print one JSON document to stdout (floats at full precision)."""
    stdout = _stdout()
    stdout.write(json.dumps(document, allow_nan=True) + "\n")
    stdout.flush()


def _stdout() -> Any:
    """sys.stdout, or an error when the command was started with it closed."""
    if sys.stdout is None:
        from bncli.errors import OutputError

        raise OutputError("standard output is closed", path="-")
    return sys.stdout


@contextlib.contextmanager
def after_commit() -> Iterator[None]:
    """Report what was committed: a report that cannot be written fails nothing.

    Once a state or an output is in place, the command has done its job: a
    caller that retried on a non-zero exit would fit the same data twice. A
    reader that went away (a broken pipe) is quiet; any other failure to
    write the report is one warning on stderr, and the exit code stays 0.
    """
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        with contextlib.suppress(OSError, AttributeError, ValueError):
            os.dup2(devnull, sys.stdout.fileno())
    except OSError as e:
        # sys.stdout would fail again at exit: point it at nothing.
        with contextlib.suppress(OSError, AttributeError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        reason = e.strerror or getattr(e, "message", None) or str(e)
        warn(f"committed, but the report could not be written to stdout: {reason}")


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``1 epoch``, ``2 epochs``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def say(message: str) -> None:
    """A line for people, on stderr (control characters escaped)."""
    sys.stderr.write(printable(message) + "\n")


def warn(message: str) -> None:
    """A warning for people, on stderr (control characters escaped)."""
    sys.stderr.write(f"warning: {printable(message)}\n")


class RichProgress(Progress):
    """A rich progress bar on stderr: samples, samples per second, time left."""

    def __init__(self, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} samples/s"),
            TextColumn("{task.fields[size]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            redirect_stdout=False,
            redirect_stderr=False,
            transient=True,
        )
        self._description = description
        self._task: Any = None

    def start(self, total: int | None, sample_bytes: int = 0) -> None:
        self._sample_bytes = sample_bytes
        self._bar.start()
        self._task = self._bar.add_task(
            self._description, total=total, rate="-", size=""
        )

    def advance(self, samples: int) -> None:
        self._bar.advance(self._task, samples)
        task = self._bar.tasks[0]
        speed = task.speed
        size = task.completed * self._sample_bytes / 1e6
        self._bar.update(
            self._task,
            rate="-" if not speed else f"{speed:,.0f}",
            size=f"{size:,.0f} MB" if self._sample_bytes else "",
        )

    def finish(self) -> None:
        self._bar.stop()


class InterruptibleProgress(Progress):
    """Passes progress on, and raises a Ctrl-C that Python swallowed.

    The library reports progress after every block of work, so a pending
    interrupt is raised there at the latest (see :mod:`bncli.cli.signals`).
    """

    def __init__(self, inner: Progress) -> None:
        self.inner = inner

    def start(self, total: int | None, sample_bytes: int = 0) -> None:
        check_interrupt()
        self.inner.start(total, sample_bytes)

    def advance(self, samples: int) -> None:
        self.inner.advance(samples)
        check_interrupt()

    def finish(self) -> None:
        self.inner.finish()


def make_progress(quiet: bool, description: str) -> Progress:
    """A progress bar when stderr is a terminal and --quiet is off."""
    if quiet or not sys.stderr.isatty():
        return InterruptibleProgress(NullProgress())
    return InterruptibleProgress(RichProgress(description))


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64)]


def state_document(layer: Any) -> dict[str, Any]:
    """The ``inspect --json`` document of a state (the keys the README lists)."""
    from bncli.health import convergence

    variables = {}
    if layer.gamma is not None:
        variables["gamma"] = _floats(layer.gamma)
    if layer.beta is not None:
        variables["beta"] = _floats(layer.beta)
    variables["moving_mean"] = _floats(layer.moving_mean)
    variables["moving_variance"] = _floats(layer.moving_variance)
    return {
        "config": layer.get_config(),
        "variables": variables,
        "features": list(layer.features),
        "progress": {
            "batches_seen": int(layer.batches_seen),
            "samples_seen": int(layer.samples_seen),
            "epochs": int(layer.epochs),
        },
        "initializer_share": float(layer.initializer_share().max()),
        "regularization": layer.regularization_penalties(),
        "statistics": layer.statistics,
        "convergence": convergence(layer),
        **(
            {}
            if layer.part is None
            else {
                "part": {k: layer.part["record"][k] for k in ("start", "stop", "rows")}
            }
        ),
    }


#: Channels a table or report shows one by one; wider states are summarized
#: (``--json`` always lists every channel).
SHOWN_CHANNELS = 200


def shown_channels(flags: list[str], drifted: list[bool] | None = None) -> list[int]:
    """The channels a table shows: all of them, or a summary of a wide state.

    Beyond :data:`SHOWN_CHANNELS`, the flagged and drifting channels come
    first (up to half of the rows), then the first channels fill the rest; the
    indexes are returned in channel order.
    """
    total = len(flags)
    if total <= SHOWN_CHANNELS:
        return list(range(total))
    notable = [
        c for c in range(total) if flags[c] or (drifted is not None and drifted[c])
    ][: SHOWN_CHANNELS // 2]
    chosen = set(notable)
    for c in range(total):
        if len(chosen) >= SHOWN_CHANNELS:
            break
        chosen.add(c)
    return sorted(chosen)


def channel_flags(layer: Any) -> list[str]:
    """Per channel: "", "dead" or "exploding" (:func:`bncli.health.channel_flags`)."""
    from bncli.health import channel_flags as flags

    return flags(layer.moving_variance64, layer.epsilon)


def share_warning(layer: Any) -> str | None:
    """The advice to fit on more batches, or None (:func:`bncli.health.state_health`)."""
    from bncli.health import state_health

    return state_health(layer).warning


def _console(natural_width: int = 0) -> Any:
    """A stdout console; when not a terminal, as wide as the table to print.

    In a file or a pipe a table's rows are not wrapped (a row is a line, for
    grep), at least 160 columns wide; ``natural_width`` is the width of the
    table's longest cells side by side.
    """
    from rich.console import Console

    _stdout()  # rich would draw into nothing
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(160, natural_width))
    return console


def _natural_width(rows: list[list[str]]) -> int:
    """Columns a rich table of ``rows`` (the header first) takes unwrapped."""
    from rich.cells import cell_len

    widths = [max(cell_len(row[j]) for row in rows) for j in range(len(rows[0]))]
    return sum(widths) + 3 * len(widths) + 1  # "| " and " " per cell, "|" at the end


def log_bars(values: Any, width: int = 10) -> list[str]:
    """Bars of positive ``values`` on a log scale, up to the largest.

    Channels' scales often span decades (a ratio and an income): on a linear
    scale all but the largest would show empty. The bars span the decades
    from the smallest value to the largest, one decade at least (so values
    that barely differ show alike): the largest gets ``width`` blocks, the
    bottom of the span one; zero, negative or non-finite values get none.
    """
    values = np.asarray(values, dtype=np.float64)
    usable = np.isfinite(values) & (values > 0)
    if not usable.any():
        return ["·" * width for _ in values]
    logs = np.log10(np.where(usable, values, 1.0))
    hi = float(logs[usable].max())
    span = max(hi - float(logs[usable].min()), 1.0)
    bars = []
    for ok, value in zip(usable, logs, strict=True):
        filled = 1 + round((width - 1) * (value - (hi - span)) / span) if ok else 0
        bars.append("█" * filled + "·" * (width - filled))
    return bars


def print_state(layer: Any, path: str, drift: dict[str, Any] | None = None) -> None:
    """The state as rich tables on stdout."""
    from rich.table import Table

    from bncli.keras_compat.specs import describe

    console = _console()
    config = layer.get_config()
    head = Table(title=cell(path), show_header=False, box=None, title_justify="left")
    head.add_column(style="bold")
    head.add_column()

    def add(label: str, value: str) -> None:
        head.add_row(label, cell(value))

    add(
        "layer",
        f"{config['name']} ({'frozen' if not layer.trainable else 'trainable'})",
    )
    add(
        "input",
        f"{layer.kind}, sample shape {tuple(layer.sample_shape)}, channel axis {layer.axis}",
    )
    add("momentum / epsilon", f"{layer.momentum:g} / {layer.epsilon:g}")
    add("center / scale", f"{layer.center} / {layer.scale}")
    add("dtype policy", layer.dtype_policy.name)
    add("synchronized", str(layer.synchronized))
    inits = ", ".join(
        f"{k.removesuffix('_initializer')}={describe(config[k])}"
        for k in (
            "gamma_initializer",
            "beta_initializer",
            "moving_mean_initializer",
            "moving_variance_initializer",
        )
    )
    add("initializers", inits)
    penalties = layer.regularization_penalties()
    add(
        "regularizers",
        f"gamma {describe(layer.gamma_regularizer)} (penalty {penalties['gamma']:.6g}), "
        f"beta {describe(layer.beta_regularizer)} (penalty {penalties['beta']:.6g})",
    )
    add(
        "constraints",
        f"gamma {describe(layer.gamma_constraint)}, beta {describe(layer.beta_constraint)}",
    )
    add(
        "progress",
        f"{counted(layer.batches_seen, 'batch', 'batches')}, {counted(layer.samples_seen, 'sample')}, "
        f"{counted(layer.epochs, 'epoch')}",
    )
    if layer.part is not None:
        record = layer.part["record"]
        add(
            "part",
            f"rows {record['start']}:{record['stop']} of {record['rows']} "
            "(a partial state: merge it with bncli merge STATE PART...)",
        )
    add("statistics", _statistics_line(layer))
    add("initializer share", f"{layer.initializer_share().max():.4%}")
    add("convergence", _convergence_line(layer))
    console.print(head)

    table = Table(title="channels", title_justify="left")
    for column in (
        "channel",
        "moving mean",
        "moving std",
        "std (log scale)",
        "gamma",
        "beta",
        "init share",
        "flag",
    ):
        table.add_column(
            column,
            justify="left"
            if column in ("channel", "std (log scale)", "flag")
            else "right",
        )
    from bncli.health import convergence

    debiased = convergence(layer)["debiased"]
    if debiased is not None and layer.initializer_share().max() > 0:
        table.add_column("debiased mean", justify="right")
        table.add_column("debiased std", justify="right")
    else:
        debiased = None
    if drift is not None:
        table.add_column("mean shift", justify="right")
        table.add_column("var ratio", justify="right")
    std = np.sqrt(layer.moving_variance64)
    bars = log_bars(std)
    gamma = layer.gamma
    beta = layer.beta
    share = layer.initializer_share()
    flags = channel_flags(layer)
    drifted = None if drift is None else [ch["drift"] for ch in drift["channels"]]
    shown = shown_channels(flags, drifted)
    for c in shown:
        feature = layer.features[c]
        row = [
            cell(feature),
            f"{layer.moving_mean64[c]:.6g}",
            f"{std[c]:.6g}",
            bars[c],
            "-" if gamma is None else f"{float(gamma[c]):.6g}",
            "-" if beta is None else f"{float(beta[c]):.6g}",
            f"{share[c]:.2%}",
            flags[c],
        ]
        if debiased is not None:
            mean_c, variance_c = (
                debiased["moving_mean"][c],
                debiased["moving_variance"][c],
            )
            row += [
                "-" if mean_c is None else f"{mean_c:.6g}",
                "-" if variance_c is None else f"{math.sqrt(max(variance_c, 0.0)):.6g}",
            ]
        if drift is not None:
            channel = drift["channels"][c]
            mark = " !" if channel["drift"] else ""
            if channel["count"]:
                row += [
                    f"{channel['mean_shift']:+.3f}{mark}",
                    f"{channel['variance_ratio']:.3f}",
                ]
            else:
                row += ["no data", "no data"]
        table.add_row(*row)
    if len(shown) < len(flags):
        table.caption = (
            f"{len(shown)} of {len(flags):,} channels shown (the flagged and drifting "
            "ones first); inspect --json lists them all"
        )
    console.print(table)
    message = share_warning(layer)
    if message:
        warn(message)
    bad = [
        f"{f} ({flag})" for f, flag in zip(layer.features, flags, strict=True) if flag
    ]
    if bad:
        warn("channels with a degenerate moving variance: " + ", ".join(bad))
    if drift is not None:
        empty = [ch["feature"] for ch in drift["channels"] if not ch["count"]]
        if empty:
            warn(f"no value to compare in channel(s): {', '.join(empty)}")
        drifted = [ch["feature"] for ch in drift["channels"] if ch["drift"]]
        if drifted:
            warn(f"drift in {len(drifted)} channel(s): {', '.join(drifted)}")
        else:
            say(f"no drift: the data ({drift['samples']} samples) matches the state")


def _statistics_line(layer: Any) -> str:
    described = {
        "ema": "ema (Keras's moving average)",
        "precise": "precise (the mean over batches of their statistics)",
        "exact": "exact (the mean and variance of every value)",
    }[layer.statistics]
    if layer.statistics_start == "imported":
        described += "; started from imported values"
    return described


def _convergence_line(layer: Any) -> str:
    from bncli.health import convergence

    found = convergence(layer)
    parts = []
    if found["window"] is not None:
        parts.append(f"window {found['window']:.4g} batches")
    needed = found["batches_to_1_percent"]
    if needed is None:
        parts.append("the share never falls (momentum 1)")
    elif needed == 0:
        parts.append("initializers under 1%")
    else:
        parts.append(
            f"{counted(needed, 'batch', 'batches')} more to bring the share under 1%"
        )
    if found["debiased"] is not None and needed:
        parts.append("debiased statistics in --json")
    return ", ".join(parts)


#: Text that rich draws as it is: printable ASCII words, one space apart.
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")


def plain_table(
    console: Any,
    title: str,
    header: list[str],
    rows: list[list[str]],
    styles: list[str | None],
) -> str | None:
    """:func:`print_model`'s table as rich draws it into a file or a pipe, or None.

    rich's pipeline (measures, wrapping, segments) costs ~0.6 ms a row, most
    of ``inspect`` on the 53 layers of a ResNet; a file or a pipe gets the
    same bytes joined here in ~1 ms. rich is the reference (the tests compare
    the two): None, and rich draws, for a terminal, colors, a box rich would
    swap (legacy Windows, a non-UTF encoding), no rows, a styled row, text
    rich could wrap, strip, or read as markup or emoji codes, or a table or
    title wider than the console or the table.
    """
    if (
        console.is_terminal
        or console.color_system is not None
        or console.legacy_windows
        or not console.encoding.startswith("utf")
        or not rows
        or any(style is not None for style in styles)
        or "[" in title
        or title.count(":") > 1  # an emoji code is :name:
        or not all(_PLAIN_TEXT.fullmatch(text) for text in [title, *header])
        or not all(_PLAIN_TEXT.fullmatch(text) for row in rows for text in row)
    ):
        return None
    widths = [max(map(len, column)) for column in zip(header, *rows, strict=True)]
    width = sum(widths) + 3 * len(widths) + 1
    if width > console.width or len(title) > width:
        return None

    def rule(left: str, line: str, middle: str, right: str) -> str:
        return left + middle.join(line * (w + 2) for w in widths) + right

    def cells(edge: str, texts: list[str]) -> str:
        padded = (text.ljust(w) for text, w in zip(texts, widths, strict=True))
        return f"{edge} " + f" {edge} ".join(padded) + f" {edge}"

    lines = [
        title.ljust(width),
        rule("┏", "━", "┳", "┓"),
        cells("┃", header),
        rule("┡", "━", "╇", "┩"),
        *(cells("│", row) for row in rows),
        rule("└", "─", "┴", "┘"),
    ]
    return "\n".join(lines) + "\n"


def print_model(path: str, layers: list[Any]) -> None:
    """The BatchNormalization layers of a Keras model file, as a rich table.

    The cells are :class:`rich.text.Text`, taken as they are: a string cell
    would be parsed for markup and emoji codes, which for the 50-odd layers
    of a ResNet cost more than reading them. Into a file or a pipe, the
    table is usually joined by :func:`plain_table` instead, the same bytes.
    """
    header = [
        "layer",
        "path",
        "channels",
        "momentum",
        "epsilon",
        "center/scale",
        "health",
    ]
    rows: list[list[str]] = []
    styles = []
    for layer in layers:
        doc = model_layer_document(layer, variables=False)
        settings = layer.config if layer.config is not None else layer.file_config
        center, scale = (settings or {}).get("center"), (settings or {}).get("scale")
        rows.append(
            [
                printable(doc["name"]),
                printable(doc["path"]),
                str(doc["channels"]),
                "?" if doc["momentum"] is None else f"{doc['momentum']:g}",
                "?" if doc["epsilon"] is None else f"{doc['epsilon']:g}",
                f"{center}/{scale}"
                if isinstance(center, bool) and isinstance(scale, bool)
                else "?",
                printable(doc["health"]),
            ]
        )
        styles.append(None if doc["supported"] else "yellow")
    console = _console(_natural_width([header, *rows]))
    unsupported = sum(layer.problem is not None for layer in layers)
    title = f"{cell(path)}: {len(layers)} BatchNormalization layer(s)"
    if unsupported:
        title += f", {unsupported} unsupported"
    plain = plain_table(console, title, header, rows, styles)
    if plain is not None:
        try:
            console.file.write(plain)  # where rich writes, as rich writes it
            console.file.flush()
        except BrokenPipeError:
            console.on_broken_pipe()
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left")
    for column in header:
        # A layer's name and path are what --layer takes: folded, never cut.
        folded = column in ("layer", "path")
        table.add_column(column, overflow="fold" if folded else "ellipsis")
    for row, style in zip(rows, styles, strict=True):
        table.add_row(*(Text(text) for text in row), style=style)
    console.print(table)


def model_layer_document(layer: Any, *, variables: bool = True) -> dict[str, Any]:
    """A Keras file's BatchNormalization layer as JSON data, with a health line.

    An unsupported layer (renorm, ambiguous variables...) has ``"supported":
    false``, its ``"problem"`` in a few words, and what the file tells of it:
    channels, momentum and epsilon (None where unknown), no config. Without
    ``variables`` (the text table shows none), ``"variables"`` is empty.
    """
    values = {k: _floats(v) for k, v in layer.variables.items()} if variables else {}
    if layer.problem is not None:
        settings = layer.file_config or {}
        return {
            "name": layer.name,
            "path": layer.path,
            "channels": layer.channels,
            "momentum": _finite(settings.get("momentum")),
            "epsilon": _finite(settings.get("epsilon")),
            "config": None,
            "variables": values,
            "health": f"unsupported: {layer.problem.reason}",
            "supported": False,
            "problem": layer.problem.reason,
        }
    from bncli.health import variables_health

    variance = layer.variables.get("moving_variance", [])
    channels = len(variance)
    epsilon = 1e-3 if layer.config is None else float(layer.config["epsilon"])
    health = variables_health(layer.variables.get("moving_mean", []), variance, epsilon)
    config = layer.config
    return {
        "name": layer.name,
        "path": layer.path,
        "channels": channels,
        "momentum": None if config is None else config["momentum"],
        "epsilon": None if config is None else config["epsilon"],
        "config": config,
        "variables": values,
        "health": health,
        "supported": True,
        "problem": None,
    }


def _finite(value: Any) -> float | int | None:
    """A config number as found in a file, or None if it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value if math.isfinite(value) else None
    return None
