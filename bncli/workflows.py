"""What each command does, as one library call: the CLI parses, calls, renders.

- :func:`fit_state` is ``bncli fit``: load or create the state file, check
  the layer options against it, lock it, run an engine, checkpoint beside it
  and commit it.
- :func:`transform_state` is ``bncli transform``: normalize files with a
  state file, on either engine.
- :func:`keras_layer` reads a Keras file's BatchNormalization layer as a
  :class:`bncli.BatchNormalization`; :func:`import_state` is ``bncli import``,
  which writes it as a state file.
- :func:`export_state` is ``bncli export``: a state file as a Keras model or
  weights file.

The health of a state is :func:`bncli.health.state_health`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bncli.engines.base import (
    FitOptions,
    FitSummary,
    TransformOptions,
    TransformSummary,
)
from bncli.errors import (
    NotConvergedError,
    StateError,
    StateMismatchError,
    StateNotFoundError,
    UsageError,
)
from bncli.progress import Progress

__all__ = [
    "ExportResult",
    "FitResult",
    "export_state",
    "fit_state",
    "import_state",
    "keras_layer",
    "transform_state",
]


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
    from bncli.state import checkpoint_path, lock, refuse_url

    layer_options = dict(layer_options or {})
    refuse_url(path)
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
        try:
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
        except NotConvergedError:
            # The epochs ran: their result is saved, then the goal missed is told.
            layer.save(path)
            checkpoint.unlink(missing_ok=True)
            raise
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


# ----------------------------------------------------------------- transform


def transform_state(
    state: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: TransformOptions | None = None,
    *,
    engine: str = "local",
    scheduler: str | None = None,
    single_file: bool = False,
    progress: Progress | None = None,
) -> TransformSummary:
    """Normalize ``inputs`` with the state file ``state`` into ``output``.

    As ``bncli transform``: the output is never the state or an input, and
    is written atomically. ``engine="dask"`` runs on a Dask cluster
    (``scheduler``, or a local one), writing a Parquet output as a folder of
    parts unless ``single_file``.

    Raises:
        UsageError, DataError, StateError: as ``bncli transform`` exits 2, 3, 4.
    """
    from bncli.layer import load

    layer = load(state)
    with _naming_state(Path(state)):
        layer.require_whole()
    options = dataclasses.replace(
        options or TransformOptions(),
        reads=(*(options.reads if options else ()), state),
    )
    if engine == "dask":
        from bncli.engines.dask_engine import transform_layer as dask_transform

        return dask_transform(
            layer,
            list(inputs),
            output,
            options,
            scheduler=scheduler,
            single_file=single_file,
            progress=progress,
        )
    if scheduler is not None or single_file:
        raise UsageError("a scheduler and single_file are options of the dask engine")
    from bncli.engines.local import transform_layer

    return transform_layer(layer, list(inputs), output, options, progress=progress)


# -------------------------------------------------------------- import, export


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What ``export_state`` wrote, and what a user should know of it."""

    path: Path
    notes: list[str]


def export_state(
    state: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    into: str | os.PathLike[str] | None = None,
    layer_name: str | None = None,
) -> ExportResult:
    """Write a state file as a Keras 3 model (``.keras``) or weights file (``.weights.h5``).

    The model is an Input of the state's per-sample shape and one stock
    BatchNormalization with the state's config and weights. Written
    atomically; never over the state. With ``into``, ``output`` is instead a
    copy of the model file ``into`` in which only layer ``layer_name``'s
    variables hold the state's (see :func:`bncli.keras_compat.into.write_into`);
    ``output`` may be ``into`` itself with ``overwrite``.

    Raises:
        UsageError: another suffix, an output that exists (without
            ``overwrite``) or is the state, or (without ``into``) an existing
            output that holds a model of more than one layer.
        StateMismatchError: a state that does not fit the layer (exit 4).
        StateError: an unreadable state or model.
    """
    from bncli.io.outputs import check_output
    from bncli.keras_compat.files import write_keras_model, write_weights_h5
    from bncli.layer import load

    if into is not None:
        return _export_into(state, output, into, layer_name, overwrite)
    if layer_name is not None:
        raise UsageError("--layer names a layer of --into MODEL; give --into")
    name = Path(output).name.lower()
    if not (name.endswith(".keras") or name.endswith(".weights.h5")):
        raise UsageError(f"{output}: export writes OUT.keras or OUT.weights.h5")
    checked = check_output(output, [state], overwrite, streams=False)
    assert checked.path is not None  # streams=False: always a path
    _refuse_replacing_a_model(checked.path)
    layer = load(state)
    with _naming_state(Path(state)):
        layer.require_whole()
    config = layer.get_config()
    notes = []
    if config["synchronized"]:
        notes.append(
            "synchronized=True is exported as false: Keras refuses it on every "
            "backend but TensorFlow, and inference is the same either way"
        )
        config["synchronized"] = False
    variables = layer.to_state().variables
    if name.endswith(".keras"):
        sample_shape = tuple(None if d < 0 else d for d in layer.sample_shape)
        write_keras_model(checked.path, config, variables, sample_shape)
    else:
        write_weights_h5(checked.path, config, variables)
    return ExportResult(checked.path, notes)


def _refuse_replacing_a_model(path: Path) -> None:
    """Refuse to write a one-layer model over a file holding a bigger model."""
    from bncli.keras_compat.files import is_keras_file, model_layer_count

    if not path.is_file() or not is_keras_file(path):
        return
    count = model_layer_count(path)
    if count != 1:
        raise UsageError(
            f"{path}: holds a model of {'several' if count is None else count} "
            "layers; export would replace it with a one-layer model. To write the "
            "state into one of its layers, use --into MODEL --layer NAME"
        )


def _export_into(
    state: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: str | os.PathLike[str],
    layer_name: str | None,
    overwrite: bool,
) -> ExportResult:
    from bncli.io.outputs import check_output
    from bncli.keras_compat.files import read_batchnorm_layers, select_layer
    from bncli.keras_compat.into import check_fits, write_into
    from bncli.layer import load

    in_place = overwrite and Path(output).resolve() == Path(model).resolve()
    reads = [state] if in_place else [state, model]
    checked = check_output(output, reads, overwrite, streams=False)
    assert checked.path is not None  # streams=False: always a path
    layer = load(state)
    with _naming_state(Path(state)):
        layer.require_whole()
    found = select_layer(
        read_batchnorm_layers(model), layer_name, path=os.fspath(model)
    )
    notes = check_fits(
        found,
        layer.get_config(),
        layer.channels,
        len(layer.sample_shape),
        os.fspath(state),
    )
    values = {
        "moving_mean": layer.moving_mean64,
        "moving_variance": layer.moving_variance64,
    }
    if layer.gamma is not None:
        values["gamma"] = layer.gamma
    if layer.beta is not None:
        values["beta"] = layer.beta
    write_into(Path(model), checked.path, [(found, values)])
    return ExportResult(checked.path, notes)


def keras_layer(
    model: str | os.PathLike[str],
    layer: str | None = None,
    *,
    features: Sequence[str] | None = None,
    input_shape: Sequence[int | str] | None = None,
    **layer_options: Any,
) -> Any:
    """A BatchNormalization layer of a Keras file, as a built :class:`bncli.BatchNormalization`.

    Args:
        model: a Keras 3 ``.keras`` archive or folder, a ``.weights.h5``
            file, or a Keras 2 / tf.keras legacy ``.h5`` file.
        layer: the layer's name (needed when the file has several).
        features: names of the channels, so that tables select them by name.
        input_shape: the per-sample input shape where the file does not tell.
        layer_options: for a weights-only file (no config), what the layer
            was: ``momentum``, ``epsilon``, ``center``, ``scale``...

    Raises:
        UsageError: a layer option for a file that has the config, a wrong
            number of feature names, an input shape without the channels.
        StateError: an unreadable or unsupported file or layer.
    """
    import numpy as np

    from bncli.keras_compat.files import read_batchnorm_layers, select_layer
    from bncli.layer import BatchNormalization

    given = {k: v for k, v in layer_options.items() if v is not None and k != "seed"}
    layers = read_batchnorm_layers(
        model, center=given.get("center"), scale=given.get("scale")
    )
    found = select_layer(layers, layer, path=os.fspath(model))
    if found.config is not None:
        # renorm=True never gets here: select_layer raised the layer's problem.
        built = BatchNormalization.from_config(dict(found.config))
        rank = None if found.input_shape is None else len(found.input_shape)
        _refuse_contradictions(built, given, model, rank)
    else:
        if "dtype" not in given:  # the stored variables' dtype, as Keras's
            stored = np.asarray(found.variables["moving_mean"]).dtype.name
            if stored in ("float16", "float64", "bfloat16"):
                given["dtype"] = stored
        built = BatchNormalization(**given)
    channels = len(found.variables["moving_mean"])
    shape = _sample_shape(found.input_shape, input_shape, channels, built.axis, model)
    if features is not None and len(features) != channels:
        raise UsageError(f"--features: {len(features)} names for {channels} channels")
    built.build(
        shape,
        None if features is None else list(features),
        "table" if features is not None else "array",
    )
    variables = {k: np.asarray(v, dtype=np.float64) for k, v in found.variables.items()}
    if built.scale:
        built.gamma = variables["gamma"]
    if built.center:
        built.beta = variables["beta"]
    built.moving_mean = variables["moving_mean"]
    built.moving_variance = variables["moving_variance"]
    # Trained values, not initializers: nothing to dilute (share 0) until a
    # fit starts them again with reset_statistics.
    built.statistics_start = "imported"
    return built


def _axes(axis: Any, rank: int | None) -> Any:
    """An axis (or a list of them) with negative ones counted from ``rank``."""
    values = axis if isinstance(axis, list) else [axis]
    if rank is None:
        return values
    return sorted(a + rank if a < 0 else a for a in values)


def _refuse_contradictions(
    built: Any,
    given: Mapping[str, Any],
    model: str | os.PathLike[str],
    rank: int | None = None,
) -> None:
    """Refuse layer options that contradict a file's config (exit 4): never ignored."""
    if not given:
        return
    probe = type(built)(**given)
    config, wanted = built.get_config(), probe.get_config()
    for key in given:
        if key == "dtype":
            same = built.dtype_policy.name == probe.dtype_policy.name
        elif key == "axis":
            same = _axes(config["axis"], rank) == _axes(wanted["axis"], rank)
        else:
            same = config.get(key) == wanted.get(key)
        if not same:
            flag = "--" + key.replace("_", "-")
            raise StateMismatchError(
                f"{flag} {_show(wanted.get(key, given[key]))} contradicts the file's "
                f"{key} {_show(config.get(key))}",
                path=os.fspath(model),
                hint="leave the option out: the file has the layer's config",
            )


def import_state(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    layer: str | None = None,
    *,
    overwrite: bool = False,
    features: Sequence[str] | None = None,
    input_shape: Sequence[int | str] | None = None,
    **layer_options: Any,
) -> Path:
    """Write a Keras file's BatchNormalization layer as a new state file.

    As ``bncli import``; see :func:`keras_layer` for the arguments. The state
    is written atomically, under its lock, never over ``model``.

    Returns:
        The state's path.
    """
    from bncli.io.outputs import check_output
    from bncli.state import lock

    checked = check_output(output, [model], overwrite, streams=False)
    assert checked.path is not None  # streams=False: always a path
    built = keras_layer(
        model, layer, features=features, input_shape=input_shape, **layer_options
    )
    with lock(checked.path):
        built.save(checked.path)
    return checked.path


def _sample_shape(
    from_file: tuple[int | None, ...] | None,
    given: Sequence[int | str] | None,
    channels: int,
    axis: int,
    model: str | os.PathLike[str],
) -> tuple[int, ...]:
    """The per-sample shape: ``given``, else the file's, else ``(C,)``."""
    if given is not None:
        try:
            shape = tuple(int(d) for d in given)
        except ValueError as e:
            raise UsageError(
                f"--input-shape: expected integers, got {','.join(map(str, given))}"
            ) from e
    elif from_file is not None:
        shape = tuple(-1 if d is None else int(d) for d in from_file[1:])
    else:
        shape = (channels,)
    ndim = len(shape) + 1
    index = axis + ndim if axis < 0 else axis
    if not 1 <= index < ndim or shape[index - 1] not in (channels, -1):
        raise UsageError(
            f"{model}: input shape {shape} does not have the layer's {channels} channels "
            f"on axis {axis}; give --input-shape"
        )
    return (*shape[: index - 1], channels, *shape[index:])
