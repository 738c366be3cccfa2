"""``bncli freeze``, ``unfreeze`` and ``set``: small edits of a state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from bncli.cli.options import debug_option


def _edit(state: str, wait: bool, change: Any) -> Any:
    from bncli.errors import StateError
    from bncli.layer import load
    from bncli.state import lock

    with lock(state, wait=wait):
        layer = load(state)
        try:
            change(layer)
        except StateError as e:
            e.path = e.path or state
            raise
        layer.save(state)
    return layer


@click.command(short_help="Freeze a state (trainable=False).")
@click.argument("state", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="Wait for another process's lock.")
@debug_option
def freeze(state: str, wait: bool, debug: bool) -> None:
    """Freeze STATE: trainable=False, as Keras's layer.trainable = False.

    A frozen state's statistics never change: fit refuses it and
    transform --training runs as inference.

    \b
    Example:
      bncli freeze state.h5
    """
    _edit(state, wait, lambda layer: setattr(layer, "trainable", False))


@click.command(short_help="Unfreeze a state (trainable=True).")
@click.argument("state", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="Wait for another process's lock.")
@debug_option
def unfreeze(state: str, wait: bool, debug: bool) -> None:
    """Unfreeze STATE: trainable=True, so fit may update it again.

    \b
    Example:
      bncli unfreeze state.h5
    """
    _edit(state, wait, lambda layer: setattr(layer, "trainable", True))


def _values(text: str, channels: int, flag: str) -> Any:
    import numpy as np

    from bncli.errors import UsageError

    if text.endswith(".npy") and Path(text).exists():
        import tokenize

        with open(text, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY":
            what = (
                "a zip archive (an .npz?)" if magic[:2] == b"PK" else "not an NPY file"
            )
            raise UsageError(f"{flag}: cannot read {text}: {what}; give one .npy array")
        try:
            values = np.load(text, allow_pickle=False)
        except (ValueError, SyntaxError, tokenize.TokenError, OSError) as e:
            # What NumPy raises on a damaged header is not always a ValueError.
            raise UsageError(f"{flag}: cannot read {text} ({e})") from e
        if values.dtype.kind not in "biuf":
            raise UsageError(f"{flag}: {text} holds {values.dtype} values, not numbers")
        values = np.asarray(values, dtype=np.float64).ravel()
    else:
        try:
            values = np.array([float(v) for v in text.split(",")], dtype=np.float64)
        except ValueError as e:
            raise UsageError(
                f"{flag}: expected numbers separated by commas or an .npy file, got {text!r}"
            ) from e
    if values.shape != (channels,):
        raise UsageError(
            f"{flag}: {len(values)} values given, the state has {channels} channels"
        )
    if not np.isfinite(values).all():
        raise UsageError(f"{flag}: values must be finite")
    return values


@click.command(name="set", short_help="Set gamma, beta or the moving statistics.")
@click.argument("state", type=click.Path(dir_okay=False))
@click.option(
    "--gamma",
    default=None,
    metavar="V,...|FILE.npy",
    help="New gamma (constraint applied).",
)
@click.option(
    "--beta",
    default=None,
    metavar="V,...|FILE.npy",
    help="New beta (constraint applied).",
)
@click.option(
    "--moving-mean", default=None, metavar="V,...|FILE.npy", help="New moving mean."
)
@click.option(
    "--moving-variance",
    default=None,
    metavar="V,...|FILE.npy",
    help="New moving variance (non-negative).",
)
@click.option("--wait", is_flag=True, help="Wait for another process's lock.")
@debug_option
def set_values(state: str, wait: bool, debug: bool, **values: str | None) -> None:
    """Set variables of STATE, one value per channel.

    Values are a comma-separated list or an .npy file of C numbers. gamma
    and beta pass through their constraints, as Keras applies them after
    an update; setting a moving statistic also sets its float64
    accumulator.

    \b
    Example:
      bncli set state.h5 --gamma 1,1,2 --moving-mean means.npy
    """
    from bncli.errors import UsageError

    given = {k: v for k, v in values.items() if v is not None}
    if not given:
        raise UsageError(
            "set: give at least one of --gamma, --beta, --moving-mean, --moving-variance"
        )

    def change(layer: Any) -> None:
        layer.require_whole()
        for key, text in given.items():
            flag = "--" + key.replace("_", "-")
            array = _values(text, layer.channels, flag)
            if key == "gamma" and not layer.scale:
                raise UsageError("--gamma: the state has no gamma (scale is off)")
            if key == "beta" and not layer.center:
                raise UsageError("--beta: the state has no beta (center is off)")
            if key == "moving_variance" and (array < 0).any():
                raise UsageError("--moving-variance: values must be non-negative")
            setattr(layer, key, array)

    _edit(state, wait, change)
