"""``bncli recalibrate``: every BatchNormalization layer of a model re-estimated from data.

What PyTorch's ``update_bn``, fvcore's PreciseBN and AIMET's
``reestimate_bn_stats`` do, for Keras files. The model runs in Keras (the one
part of bncli that imports it: the ``keras`` extra, the JAX backend on CPU
unless ``KERAS_BACKEND`` names another), with each BatchNormalization layer's
``call`` replaced for the run by one that records its inputs' moments in
float64 (two-pass, per batch):

- ``precise`` and ``ema``: the layers normalize with each batch's statistics,
  as in training, every other layer runs in inference mode (dropout off);
  the moving statistics become the mean over batches of the batch
  statistics (``precise``) or move with each layer's momentum (``ema``).
- ``exact``: every layer in inference mode; the layers are re-estimated one
  after the other in the order the model calls them, each from the
  population moments of its inputs over all the data, with the layers
  before it already re-estimated: one pass over the data per layer.

The new statistics are written into a copy of the file as ``export --into``
writes (:func:`bncli.keras_compat.into.write_into`): nothing else changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bncli import kernels
from bncli.errors import StateError, UsageError
from bncli.progress import NullProgress, Progress

if TYPE_CHECKING:
    from bncli.io.sources import ReadOptions

__all__ = ["INSTALL_COMMAND", "RecalibrateResult", "recalibrate"]

#: What to run when Keras is missing.
INSTALL_COMMAND = "pip install 'bncli[keras]'"
MODES = ("precise", "ema", "exact")


@dataclasses.dataclass(frozen=True)
class RecalibrateResult:
    """What ``recalibrate`` wrote, and how far each layer's statistics moved.

    ``layers`` maps a layer's name to its ``channels``, the largest
    ``mean_shift`` (``|new - old| / sqrt(old_variance + epsilon)``) and the
    ``variance_ratio`` farthest from 1 (``new / (old_variance + epsilon)``).
    """

    output: Path
    batches: int
    samples: int
    seconds: float
    layers: dict[str, dict[str, Any]]


def _import_keras() -> Any:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    try:
        import keras
    except ImportError as e:
        raise UsageError(
            f"recalibrate runs the model with Keras, which is not installed "
            f"({e.name or e}); install it with: {INSTALL_COMMAND}"
        ) from e
    return keras


def recalibrate(
    model: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    stats: str = "precise",
    batch_size: int = 32,
    max_batches: int | None = None,
    layers: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    overwrite: bool = False,
    custom_objects: Sequence[str] = (),
    progress: Progress | None = None,
    read: ReadOptions | None = None,
) -> RecalibrateResult:
    """Re-estimate the BatchNormalization layers of the ``.keras`` file ``model``.

    Args:
        model: a ``.keras`` archive (a weights-only file has no architecture).
        inputs: NPY arrays ``(N, *input_shape)``, or tables whose selected
            numeric columns, in order, are the input vector.
        output: the model written back; may be ``model`` with ``overwrite``.
        stats: ``"precise"``, ``"ema"`` or ``"exact"``.
        batch_size, max_batches: batches of consecutive samples, as ``fit``.
        layers: names (or paths) of the layers to re-estimate; all by default.
        columns: the table columns that are the input vector.
        custom_objects: modules to import first, registering custom classes.
        read: CSV's delimiter, an NPZ archive's array.

    Raises:
        UsageError: Keras missing, a bad option, a weights-only file, a class
            Keras cannot load, inputs that do not fit the model.
        StateError: an unreadable model file.
        DataError: unreadable inputs.
    """
    from bncli.engines.base import check_positive
    from bncli.io.dataset import open_dataset
    from bncli.io.outputs import check_output
    from bncli.keras_compat.detect import sniff_keras_format
    from bncli.keras_compat.files import read_batchnorm_layers
    from bncli.keras_compat.into import write_into

    started = time.perf_counter()
    progress = progress or NullProgress()
    if stats not in MODES:
        raise UsageError(f"--stats must be one of {', '.join(MODES)}, got {stats!r}")
    batch_size = check_positive("batch size", batch_size)
    if max_batches is not None:
        max_batches = check_positive("max batches", max_batches)
    model = Path(model)
    if not model.exists():
        raise StateError("no such model file", path=model)
    if sniff_keras_format(model) != "zip":
        raise UsageError(
            f"{model}: recalibrate needs a .keras model (its architecture); a "
            "weights file has none"
        )
    in_place = overwrite and Path(output).resolve() == model.resolve()
    reads = [*inputs] if in_place else [model, *inputs]
    checked = check_output(output, reads, overwrite, streams=False)
    assert checked.path is not None  # streams=False: always a path
    records = read_batchnorm_layers(model)
    keras = _import_keras()
    for module in custom_objects:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UsageError(
                f"--custom-objects {module}: cannot import it ({e})"
            ) from e
    network = _load(keras, model)
    chosen = _chosen_layers(keras, network, records, layers, model)
    dataset = open_dataset(inputs, columns=columns, read=read)
    shape = tuple(int(d) for d in dataset.sample_shape)
    expected = tuple(network.inputs[0].shape[1:]) if network.inputs else None
    if expected is not None and not _fits(shape, expected):
        raise UsageError(
            f"the inputs' samples have shape {shape}, the model takes {expected}"
        )

    def batches() -> Iterator[np.ndarray]:
        from bncli.io.batching import batch_blocks, block_rows

        rows = block_rows(batch_size, int(np.prod(shape)) * 8)
        done = 0
        for block in batch_blocks(dataset.chunks(0, rows), batch_size):
            data = np.asarray(block.chunk.data)
            for lo in range(0, len(data), batch_size):
                if max_batches is not None and done >= max_batches:
                    return
                yield np.ascontiguousarray(data[lo : lo + batch_size], dtype=np.float32)
                done += 1

    before = {name: _moving(layer) for name, (layer, _) in chosen.items()}
    if stats == "exact":
        count, samples = _exact(keras, network, chosen, batches, progress)
    else:
        count, samples = _by_batches(keras, network, chosen, batches, stats, progress)
    progress.finish()
    writes = [
        (record, {"moving_mean": new[0], "moving_variance": new[1]})
        for name, (layer, record) in chosen.items()
        for new in [_moving(layer)]
    ]
    write_into(model, checked.path, writes)
    summary = {
        name: _change(before[name], _moving(layer), float(layer.epsilon))
        for name, (layer, _) in chosen.items()
    }
    return RecalibrateResult(
        checked.path, count, samples, time.perf_counter() - started, summary
    )


def _load(keras: Any, model: Path) -> Any:
    try:
        return keras.saving.load_model(model, compile=False)
    except (TypeError, ValueError) as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(
            f"{model}: Keras cannot load the model ({text[:200]})",
            hint="a custom class must be registered: --custom-objects MODULE",
        ) from e


def _fits(shape: tuple[int, ...], expected: tuple[Any, ...]) -> bool:
    return len(shape) == len(expected) and all(
        e is None or int(e) == d for d, e in zip(shape, expected, strict=True)
    )


def _chosen_layers(
    keras: Any,
    network: Any,
    records: Sequence[Any],
    names: Sequence[str] | None,
    model: Path,
) -> dict[str, tuple[Any, Any]]:
    """The Keras layers to re-estimate, with the file's record of each.

    Layers and records meet by their weights path (``layers/block/norm``):
    Keras 3 names a layer's weights by its class (or, for a custom layer's
    sublayer, by the attribute holding it), which the file's records use too.
    """
    by_path = {record.path: record for record in records}
    wanted = None if names is None else set(names)
    chosen: dict[str, tuple[Any, Any]] = {}
    layers = _layers_with_paths(keras, network)
    for path, layer in layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        record = by_path.get(path)
        labels = {layer.name, path} | ({record.name} if record is not None else set())
        if wanted is not None and not labels & wanted:
            continue
        if record is None:
            raise UsageError(
                f"{model}: no weights of BatchNormalization layer {layer.name!r} at "
                f"{path}; name the others with --layers"
            )
        inside = record.problem is not None and record.problem.reason.startswith(
            "inside custom layer"
        )
        if record.problem is not None and not inside:
            raise StateError(
                f"layer {record.name!r} cannot be re-estimated: {record.problem.reason}",
                path=model,
            )
        chosen[record.name] = (layer, record)
    if wanted is not None:
        known = {r.name for r in records} | {r.path for r in records}
        known |= {layer.name for _, layer in layers}
        unknown = sorted(wanted - known)
        if unknown:
            raise UsageError(
                f"--layers {unknown[0]!r}: no such BatchNormalization layer (the "
                f"model has {', '.join(sorted(r.name for r in records))})"
            )
    if not chosen:
        raise StateError("the model has no BatchNormalization layer", path=model)
    return chosen


def _layers_with_paths(keras: Any, root: Any) -> list[tuple[str, Any]]:
    """Every layer below ``root`` with its weights path, as Keras 3 saves it."""
    from bncli.keras_compat.graph import snake_case

    found: list[tuple[str, Any]] = []

    def held(layer: Any, path: str, depth: int) -> None:
        if depth > 64:
            return
        for attribute, value in vars(layer).items():
            if isinstance(value, keras.layers.Layer) and not attribute.startswith("_"):
                found.append((f"{path}/{attribute}", value))
                held(value, f"{path}/{attribute}", depth + 1)

    def model(network: Any, prefix: str, depth: int) -> None:
        counters: dict[str, int] = {}
        for layer in network.layers:
            name = type(layer).__name__
            snake = snake_case("Functional" if name == "Model" else name)
            k = counters.get(snake, 0)
            counters[snake] = k + 1
            path = f"{prefix}layers/{snake if k == 0 else f'{snake}_{k}'}"
            found.append((path, layer))
            if hasattr(layer, "layers") and depth < 64:
                model(layer, f"{path}/", depth + 1)
            else:
                held(layer, path, depth + 1)

    model(root, "", 0)
    return found


def _numpy(value: Any) -> np.ndarray:
    """A Keras variable or tensor as a float64 NumPy array, on any backend."""
    ops = __import__("keras").ops
    return np.asarray(ops.convert_to_numpy(value)).astype(np.float64)


def _moving(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    return _numpy(layer.moving_mean), _numpy(layer.moving_variance)


def _channel_axis(layer: Any, ndim: int) -> int:
    axis = layer.axis[0] if isinstance(layer.axis, list | tuple) else layer.axis
    return int(axis) + ndim if int(axis) < 0 else int(axis)


def _moments(x: Any, layer: Any) -> kernels.Moments:
    """Per-channel count, mean and biased variance of a layer's inputs, float64."""
    values = _numpy(x)
    axis = _channel_axis(layer, values.ndim)
    rows = np.moveaxis(values, axis, -1).reshape(1, -1, values.shape[axis])
    return kernels.batched_moments(rows)


def _normalized(x: Any, layer: Any, mean: np.ndarray, variance: np.ndarray) -> Any:
    """The layer's output for ``x`` with these statistics, as Keras computes it."""
    ops = __import__("keras").ops
    ndim = len(x.shape)
    axis = _channel_axis(layer, ndim)
    shape = [1] * ndim
    shape[axis] = -1
    scale = 1.0 / np.sqrt(variance + float(layer.epsilon))
    if layer.scale:
        scale = scale * _numpy(layer.gamma)
    shift = -mean * scale
    if layer.center:
        shift = shift + _numpy(layer.beta)
    dtype = x.dtype
    return ops.add(
        ops.multiply(x, ops.cast(scale.reshape(shape), dtype)),
        ops.cast(shift.reshape(shape), dtype),
    )


def _by_batches(
    keras: Any,
    network: Any,
    chosen: dict[str, tuple[Any, Any]],
    batches: Callable[[], Iterator[np.ndarray]],
    stats: str,
    progress: Progress,
) -> tuple[int, int]:
    """``precise`` and ``ema``: one pass, every chosen layer on batch statistics."""
    sums: dict[str, list[Any]] = {name: [None, None, 0] for name in chosen}
    moving = {name: _moving(layer) for name, (layer, _) in chosen.items()}

    def recording(name: str, layer: Any) -> Callable[..., Any]:
        def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
            batch = _moments(inputs, layer)
            mean, variance = batch.mean[0], batch.variance[0]
            if stats == "precise":
                acc = sums[name]
                acc[0] = mean if acc[0] is None else acc[0] + mean
                acc[1] = variance if acc[1] is None else acc[1] + variance
                acc[2] = int(acc[2]) + 1
            else:
                momentum = float(layer.momentum)
                old_mean, old_variance = moving[name]
                moving[name] = (
                    old_mean * momentum + mean * (1 - momentum),
                    old_variance * momentum + variance * (1 - momentum),
                )
            return _normalized(inputs, layer, mean, variance)

        return call

    count = samples = 0
    with _replaced_calls(
        {n: recording(n, layer) for n, (layer, _) in chosen.items()}, chosen
    ):
        progress.start(None)
        for x in batches():
            network(x, training=False)
            count += 1
            samples += len(x)
            progress.advance(len(x))
    if count == 0:
        raise UsageError("no sample to recalibrate with: the inputs are empty")
    for name, (layer, _) in chosen.items():
        if stats == "precise":
            total, square, n = sums[name]
            new = (np.asarray(total) / n, np.asarray(square) / n)
        else:
            new = moving[name]
        layer.moving_mean.assign(new[0].astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(new[1].astype(layer.moving_variance.dtype))
    return count, samples


def _exact(
    keras: Any,
    network: Any,
    chosen: dict[str, tuple[Any, Any]],
    batches: Callable[[], Iterator[np.ndarray]],
    progress: Progress,
) -> tuple[int, int]:
    """``exact``: one pass per layer, in the order the model calls them."""
    order: list[str] = []

    def noting(
        name: str, layer: Any, original: Callable[..., Any]
    ) -> Callable[..., Any]:
        def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
            if name not in order:
                order.append(name)
            return original(inputs, training=False)

        return call

    first = next(iter(batches()), None)
    if first is None:
        raise UsageError("no sample to recalibrate with: the inputs are empty")
    originals = {name: layer.call for name, (layer, _) in chosen.items()}
    with _replaced_calls(
        {n: noting(n, layer, originals[n]) for n, (layer, _) in chosen.items()}, chosen
    ):
        network(first[:1], training=False)
    count = samples = 0
    progress.start(None)
    for name in order:
        layer = chosen[name][0]
        total = kernels.Moments(np.zeros(1), np.zeros(1), np.zeros(1))
        seen = False

        def measuring(
            inputs: Any,
            training: Any = None,
            mask: Any = None,
            layer: Any = layer,
            original: Callable[..., Any] = originals[name],
        ) -> Any:
            nonlocal total, seen
            batch = _moments(inputs, layer)
            merged = kernels.Moments(batch.count[0], batch.mean[0], batch.variance[0])
            total = merged if not seen else kernels.merge_moments(total, merged)
            seen = True
            return original(inputs, training=False)

        count = samples = 0
        with _replaced_calls({name: measuring}, chosen):
            for x in batches():
                network(x, training=False)
                count += 1
                samples += len(x)
                progress.advance(len(x))
        layer.moving_mean.assign(total.mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(total.variance.astype(layer.moving_variance.dtype))
    return count, samples


@contextlib.contextmanager
def _replaced_calls(
    calls: dict[str, Callable[..., Any]], chosen: dict[str, tuple[Any, Any]]
) -> Iterator[None]:
    """Replace some layers' ``call`` for the block; put the originals back after."""
    layers = {name: chosen[name][0] for name in calls}
    saved = {name: layer.__dict__.get("call") for name, layer in layers.items()}
    for name, layer in layers.items():
        object.__setattr__(layer, "call", calls[name])
    try:
        yield
    finally:
        for name, layer in layers.items():
            if saved[name] is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", saved[name])


def _change(
    old: tuple[np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray],
    epsilon: float,
) -> dict[str, Any]:
    """The largest change of a layer's statistics, as ``inspect --data`` measures drift."""
    old_mean, old_variance = old
    new_mean, new_variance = new
    shift = np.abs(new_mean - old_mean) / np.sqrt(old_variance + epsilon)
    ratio = new_variance / (old_variance + epsilon)
    farthest = int(np.argmax(np.abs(np.log(np.maximum(ratio, 1e-300)))))
    return {
        "channels": len(old_mean),
        "mean_shift": float(shift.max()) if len(shift) else 0.0,
        "variance_ratio": float(ratio[farthest]) if len(ratio) else 1.0,
    }
