"""What each command does, as one library call: the CLI parses, calls, renders.

``fit_state`` is ``bncli fit``: load or create the state file, check the
layer options against it, lock it, run an engine, checkpoint beside it and
commit it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bncli.engines.base import FitOptions, FitSummary
from bncli.errors import StateError, StateMismatchError, StateNotFoundError, UsageError
from bncli.progress import Progress

__all__ = ["FitResult", "fit_state"]


@dataclasses.dataclass(frozen=True)
class FitResult:
    """What one ``fit_state`` did, and the state's counters after it."""

    state: Path
    summary: FitSummary
    batches_seen: int
    samples_seen: int


def fit_state(
    path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    options: FitOptions,
    *,
    layer_options: Mapping[str, Any] | None = None,
    seed: int | None = None,
    engine: str = "local",
    scheduler: str | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    wait: bool = False,
    given: Collection[str] = (),
    progress: Progress | None = None,
) -> FitResult:
    """Fit the state file at ``path`` on ``inputs``, as ``bncli fit`` does.

    The state is created from ``layer_options`` when it does not exist;
    otherwise an option that contradicts it is refused. A fit that fails
    leaves the state as it was: checkpoints (every ``checkpoint_every``
    batches) go to ``STATE.checkpoint`` beside it, which ``resume`` continues.

    Args:
        path: the state file.
        inputs: data files or folders (none with ``resume``: recorded).
        options: how the data is batched and read.
        layer_options: BatchNormalization arguments (None values: not given).
        seed: the initializers' seed, for a new state.
        engine: ``"local"`` or ``"dask"`` (with ``scheduler``).
        checkpoint_every, resume: as ``bncli fit``.
        wait: wait for another process's lock instead of failing.
        given: names of ``options`` set on purpose (see
            :func:`bncli.engines.session.fit_layer`).
        progress: receives the samples done.

    Raises:
        UsageError, DataError, StateError: as ``bncli fit`` exits 2, 3, 4.
    """
    from bncli.engines.registry import make_engine
    from bncli.engines.session import fit_layer
    from bncli.layer import BatchNormalization, load
    from bncli.state import checkpoint_path, lock

    layer_options = dict(layer_options or {})
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{path}: the state's folder {folder} does not exist")
    with _naming_state(path), lock(path, wait=wait):
        checkpoint = checkpoint_path(path)
        if resume and checkpoint.exists():
            layer = load(checkpoint)  # the state, with the position reached
            _check_against_state(layer, layer_options, path)
        elif path.exists():
            layer = load(path)
            _check_against_state(layer, layer_options, path)
        else:
            if resume:
                raise StateNotFoundError(
                    "state not found, nothing to resume", path=path
                )
            kwargs = {k: v for k, v in layer_options.items() if v is not None}
            layer = BatchNormalization(**kwargs, seed=seed)
        summary = fit_layer(
            layer,
            list(inputs),
            options,
            make_engine(engine, scheduler=scheduler, workers=options.workers),
            checkpoint_every=checkpoint_every,
            # Beside the state, never in it: a fit that fails leaves the
            # state as it was (and its checkpoint, for --resume).
            checkpoint=lambda current: current.save(checkpoint),
            progress=progress,
            resume=resume,
            given=given,
        )
        layer.save(path)
        checkpoint.unlink(missing_ok=True)
    return FitResult(path, summary, layer.batches_seen, layer.samples_seen)


@contextlib.contextmanager
def _naming_state(path: Path) -> Iterator[None]:
    """Name the state in the errors the layer's fit raises without a path
    (a frozen state, nothing to resume, --columns unlike the state's)."""
    try:
        yield
    except StateError as e:
        if e.path is None:
            e.path = str(path)
        raise


def _check_against_state(layer: Any, given: Mapping[str, Any], path: Path) -> None:
    """Refuse layer options that contradict the stored config (exit 4)."""
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
    if isinstance(value, dict):
        return json.dumps(value.get("class_name", value))
    return json.dumps(value) if not isinstance(value, str) else value
