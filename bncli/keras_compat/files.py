"""Keras model and weights files, read and written as plain data.

bncli never imports Keras: a ``.keras`` archive is a zip of JSON and HDF5
members, and the HDF5 files (Keras 3 ``.weights.h5``, legacy ``.h5``) are read
with h5py. This module finds the BatchNormalization layers of such a file,
normalizes their configs to Keras 3.15's ``get_config()`` form, and writes a
one-layer Keras model (``export``) back in Keras 3's own layout.

The layouts are described in ``notes/keras-files.md``. In short:

* ``.keras``: a zip with ``metadata.json``, ``config.json`` (the serialized
  model) and ``model.weights.h5``, whose variables live at
  ``layers/<snake_case(ClassName)>[_k]/vars/0..n`` (paths come from classes,
  not from layer names).
* legacy ``.h5`` (Keras 2, tf.keras, Keras 3 ``model.save("m.h5")``): root
  attribute ``model_config``, one group per layer under ``model_weights``
  (or at the root for weights-only files), datasets named by variable.

Files are data only: nothing is unpickled, evaluated or deserialized into
objects; zip members are read by exact name with bounded sizes; HDF5 links
other than hard links are refused; and every array is checked (1-D, float,
equal lengths, matching the config) before it is returned.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import io
import json
import math
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from bncli.errors import (
    BncliError,
    StateError,
    StateNotFoundError,
    UnsupportedLayerError,
    UsageError,
)
from bncli.io.atomic import atomic_path
from bncli.io.hdf5 import check_dataset, plain_child
from bncli.limits import MAX_CHANNELS
from bncli.state import HDF5_SIGNATURE, SEAL_MAGIC

__all__ = [
    "VARIABLE_NAMES",
    "KerasBatchNorm",
    "is_keras_file",
    "normalize_batchnorm_config",
    "read_batchnorm_layers",
    "select_layer",
    "write_keras_model",
    "write_weights_h5",
]

#: The BatchNormalization variables, in the order Keras saves them
#: (trainable first): gamma only if scale, beta only if center.
VARIABLE_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")

#: Variables that only a renormalizing layer has, in the order Keras creates
#: them (after the four above).
_RENORM_ORDER = ("moving_stddev", "renorm_mean", "renorm_stddev")
_RENORM_VARIABLES = frozenset(_RENORM_ORDER)

#: Layer classes read as BatchNormalization (Keras 2's synchronized variant too).
_BATCHNORM_CLASSES = frozenset({"BatchNormalization", "SyncBatchNormalization"})

#: The Keras version whose layout the writers reproduce.
_KERAS_VERSION_WRITTEN = "3.15.1"

#: Largest config.json (or model_config attribute) read, in bytes.
_CONFIG_MAX_BYTES = 64 << 20
#: A zip member declaring more than this many bytes, and more than
#: ``_ZIP_MAX_EXPANSION`` times what it stores, is taken for a bomb (as Keras's
#: own ``_reject_zip_bomb`` does).
_ZIP_BOMB_FLOOR_BYTES = 1 << 28
_ZIP_MAX_EXPANSION = 100
#: A weights member is decompressed into memory up to this size, else into a
#: temporary file.
_SPOOL_BYTES = 64 << 20
#: More channels than this is not a BatchNormalization layer but a corrupt file.
_MAX_CHANNELS = MAX_CHANNELS
#: Groups a weights file's walk may visit (an EfficientNetB7's weights file
#: holds 2,674 groups and datasets in all).
_MAX_GROUPS = 20_000
#: Nested models deeper than this are refused (a crafted config could recurse).
_MAX_DEPTH = 64
#: Input shapes of higher rank are refused.
_MAX_RANK = 32

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

_POLICY_NAMES = frozenset(
    {"float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16"}
)
_POLICY_CLASSES = frozenset({"DTypePolicy", "FloatDTypePolicy", "Policy"})
_DEFAULT_INITIALIZERS = {
    "beta_initializer": "Zeros",
    "gamma_initializer": "Ones",
    "moving_mean_initializer": "Zeros",
    "moving_variance_initializer": "Ones",
}
_RENORM_KEYS = ("renorm", "renorm_clipping", "renorm_momentum")
#: Keras 3 class names whose snake-case spelling does not follow from a name.
_CLASS_ALIASES = {"Orthogonal": "OrthogonalInitializer"}

Shape = tuple[int | None, ...]


@dataclasses.dataclass
class KerasBatchNorm:
    """One BatchNormalization layer found in a Keras file.

    Attributes:
        name: The user-facing layer name (``layer.name``).
        path: Where the layer lives in the file: its weights path in a Keras 3
            weights file (``"layers/batch_normalization_1"``), or its group in a
            legacy ``.h5`` (``"model_weights/bn_k2"``).
        config: The layer's Keras 3.15 ``get_config()`` dict, normalized (see
            :func:`normalize_batchnorm_config`); None when the file holds no
            config (a bare ``.weights.h5`` or a Keras 2 weights-only file).
        variables: ``"gamma"`` (if scale), ``"beta"`` (if center),
            ``"moving_mean"`` and ``"moving_variance"``, each a 1-D array of
            shape ``(C,)`` in its stored dtype.
        input_shape: The layer's input shape including the batch dimension,
            e.g. ``(None, 5)``, when the file tells it; dimensions the file does
            not pin down (after a convolution in a legacy file) are None.
        problem: Why bncli cannot use the layer (renorm, virtual batches,
            variables a weights-only file leaves ambiguous...), or None. An
            unsupported layer is listed but not imported: its ``config`` is
            None and its ``variables`` are what the file holds, by the names
            the file gives or implies (``"moving_stddev"``), else by position
            (``"0"``, ``"1"``...); all are validated 1-D float arrays of one
            length.
        file_config: For an unsupported layer, its config as found in the
            file (not normalized: shown, never used); None otherwise.
    """

    name: str
    path: str
    config: dict[str, Any] | None
    variables: dict[str, np.ndarray]
    input_shape: Shape | None
    problem: UnsupportedLayerError | None = None
    file_config: dict[str, Any] | None = None

    @property
    def channels(self) -> int:
        """C, the length of every variable (0 if there is none)."""
        return next((len(array) for array in self.variables.values()), 0)


# --------------------------------------------------------------------------
# Format detection


def _sniff(path: Path) -> str:
    """Return "dir", "zip", "hdf5" or "other" from the file's content."""
    if path.is_dir():
        return "dir"
    with open(path, "rb") as f:
        head = f.read(len(SEAL_MAGIC))
    if head[:4] in _ZIP_MAGICS:
        return "zip"
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if head.startswith(SEAL_MAGIC):  # told by its user block: never parsed here
        return "state"
    # An HDF5 file may start after a user block (512, 1024, ... bytes).
    try:
        if h5py.is_hdf5(os.fspath(path)):
            return "hdf5"
    except OSError:
        pass
    return "other"


def _hdf5_kind(f: h5py.File) -> str | None:
    """Classify an open HDF5 file: "legacy", "legacy_weights", "weights" or None."""
    attrs = f.attrs
    if "model_config" in attrs:
        return "legacy"
    if "layer_names" in attrs or "layer_names0" in attrs:
        return "legacy_weights"
    if "format" in attrs:  # a bncli state, or another tool's file
        return None
    for key in ("layers", "vars", "_layer_checkpoint_dependencies"):
        link = f.get(key, getlink=True)
        if isinstance(link, h5py.HardLink) and isinstance(f.get(key), h5py.Group):
            return "weights"
    return None


def is_keras_file(path: str | os.PathLike[str]) -> bool:
    """Tell cheaply whether ``path`` is a Keras model or weights file.

    True for ``.keras`` zips (and unzipped ``.keras`` folders) with a
    ``config.json`` or ``model.weights.h5`` member, and for HDF5 files laid out
    as Keras models or weights (legacy ``.h5``, Keras 3 ``.weights.h5``). False
    for anything else, including bncli states and missing files; never raises.

    Args:
        path: The file to look at.

    Returns:
        Whether the file looks like a Keras file. Its content is not validated.

    Example:
        >>> is_keras_file("does-not-exist.keras")
        False
    """
    target = Path(path)
    try:
        kind = _sniff(target)
        if kind == "dir":
            return (target / "config.json").is_file()
        if kind == "zip":
            with zipfile.ZipFile(target) as zf:
                names = set(zf.namelist())
            return bool(names & {"config.json", "model.weights.h5"})
        if kind == "hdf5":
            from bncli.io.child import bounded

            def classify() -> bool:
                with h5py.File(target, "r") as f:
                    return _hdf5_kind(f) is not None

            keras: bool = bounded(classify, path=target, encode=bool, decode=bool)
            return keras
    except BncliError:
        return False
    except (
        OSError,
        ValueError,
        zipfile.BadZipFile,
        RuntimeError,
        KeyError,  # h5py: a damaged object ("unable to determine object type")
        TypeError,
        AttributeError,
    ):
        return False
    return False


# --------------------------------------------------------------------------
# Reading


def read_batchnorm_layers(
    path: str | os.PathLike[str],
    *,
    center: bool | None = None,
    scale: bool | None = None,
) -> list[KerasBatchNorm]:
    """Read every BatchNormalization layer of a Keras file, in model order.

    The format is told by content, not extension: a ``.keras`` zip (or its
    unzipped folder with ``config.json``), a Keras 3 weights file
    (``.weights.h5``, variables under ``layers/.../vars``), or a legacy
    ``.h5`` (Keras 2, tf.keras or Keras 3's ``model.save("m.h5")``; a whole
    model or weights only). Layers of nested models are included.

    Args:
        path: The Keras file.
        center: For files without a config only: whether the layers were built
            with ``center=True``. A layer with 3 stored variables is either
            (gamma, mean, variance) or (beta, mean, variance); ``center`` or
            ``scale`` tells which. Ignored where the file says.
        scale: As ``center``, for ``scale``.

    Returns:
        The layers, outermost model first, each with its config (None for files
        without one), variables and input shape. A layer bncli cannot use
        (``renorm=True``, a Keras 2 ``virtual_batch_size``, several axes, a
        custom initializer, a 3-variable layer without a config and without
        ``center``/``scale``...) is returned too, with its ``problem`` set:
        :func:`select_layer` raises that problem if it is the one chosen.

    Raises:
        StateNotFoundError: If ``path`` does not exist.
        StateError: If the file is not a Keras model or weights file, or is
            corrupt (including a layer whose weights contradict its config).

    Example:
        >>> layers = read_batchnorm_layers("model.keras")  # doctest: +SKIP
        >>> [layer.name for layer in layers]  # doctest: +SKIP
        ['bn_first', 'bn_second']
    """
    target = Path(path)
    if not target.exists():
        raise StateNotFoundError("no such Keras file", path=target)
    hints = {"center": center, "scale": scale}
    try:
        with _read_budget():
            kind = _sniff(target)
            if kind == "dir":
                return _in_child(lambda: _read_keras_dir(target, hints), target)
            if kind == "zip":
                return _read_keras_zip(target, hints)
            if kind == "hdf5":
                return _in_child(lambda: _read_hdf5_file(target, hints), target)
            if kind == "state":
                raise StateError(
                    "a bncli state, not a Keras model",
                    path=target,
                    hint="import reads .keras, .weights.h5 and .h5 files saved by Keras",
                )
    except StateError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise StateError(
            f"corrupt Keras archive ({_reason(exc)})", path=target
        ) from exc
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        # What h5py raises on damaged files (and zipfile on bad members).
        raise StateError(
            f"not a readable Keras model or weights file ({_reason(exc)})",
            path=target,
        ) from exc
    raise StateError(
        "not a Keras model or weights file (neither a .keras zip nor HDF5)",
        path=target,
        hint="give a .keras, .weights.h5 or .h5 file saved by Keras",
    )


def _read_hdf5_file(path: Path, hints: dict[str, bool | None]) -> list[KerasBatchNorm]:
    with h5py.File(path, "r") as f:
        return _read_hdf5(f, path, hints)


def _in_child(
    parse: Callable[[], list[KerasBatchNorm]], path: Path
) -> list[KerasBatchNorm]:
    """``parse()`` of a file without a checksum, in a child bounded in time
    (see :mod:`bncli.io.child`): libhdf5 can loop forever on a damaged one."""
    from bncli.io import child

    def wrapped() -> list[KerasBatchNorm]:
        try:
            return parse()
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise StateError(
                f"not a readable Keras model or weights file ({_reason(exc)})",
                path=path,
            ) from exc

    layers: list[KerasBatchNorm] = child.bounded(
        wrapped, path=path, encode=_encode_layers, decode=_decode_layers
    )
    return layers


def _encode_layers(layers: list[KerasBatchNorm]) -> list[dict[str, Any]]:
    from bncli.io.child import encode_array, encode_error

    return [
        {
            "name": layer.name,
            "path": layer.path,
            "config": layer.config,
            "variables": {k: encode_array(v) for k, v in layer.variables.items()},
            "input_shape": None
            if layer.input_shape is None
            else list(layer.input_shape),
            "problem": None if layer.problem is None else encode_error(layer.problem),
            "file_config": layer.file_config,
        }
        for layer in layers
    ]


def _decode_layers(data: list[dict[str, Any]]) -> list[KerasBatchNorm]:
    from bncli.io.child import decode_array, decode_error

    layers = []
    for item in data:
        problem = None if item["problem"] is None else decode_error(item["problem"])
        shape = item["input_shape"]
        layers.append(
            KerasBatchNorm(
                name=item["name"],
                path=item["path"],
                config=item["config"],
                variables={k: decode_array(v) for k, v in item["variables"].items()},
                input_shape=None if shape is None else tuple(shape),
                problem=problem,  # type: ignore[arg-type]
                file_config=item["file_config"],
            )
        )
    return layers


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _read_keras_zip(path: Path, hints: dict[str, bool | None]) -> list[KerasBatchNorm]:
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        if "config.json" not in names:
            raise StateError(
                "not a Keras model: the archive has no config.json", path=path
            )
        model = _parse_json(
            _read_member(zf, "config.json", _CONFIG_MAX_BYTES, path), path
        )
        if "model.weights.h5" not in names:
            if "model.weights.npz" in names:
                raise StateError(
                    "model.weights.npz weights are not supported",
                    path=path,
                    hint="re-save the model with the default h5 weights format",
                )
            raise StateError("the archive has no model.weights.h5", path=path)
        info = zf.getinfo("model.weights.h5")
        _check_member_size(info, None, path)
        # Decompressed once, to its end, into memory (a temporary file past
        # 64 MiB): zipfile checks the member's CRC-32 at the end, so a damaged
        # member is refused before libhdf5 parses it (libhdf5 loops forever on
        # some damaged files: HDFGroup/hdf5#1707), and libhdf5's seeks are
        # then cheap. Seeking in the deflated member itself restarts the
        # decompression at every backward seek: a crafted layout made that
        # minutes of work.
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES) as copy:
            with zf.open(info) as member:
                shutil.copyfileobj(member, copy, 1 << 20)
            copy.seek(0)
            with h5py.File(copy, "r") as f:
                return _read_with_config(model, f, path, hints)


def _read_keras_dir(path: Path, hints: dict[str, bool | None]) -> list[KerasBatchNorm]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise StateError("not a Keras model folder: no config.json", path=path)
    if config_path.stat().st_size > _CONFIG_MAX_BYTES:
        raise StateError(
            f"config.json is larger than {_CONFIG_MAX_BYTES >> 20} MiB", path=path
        )
    model = _parse_json(config_path.read_bytes(), path)
    weights_path = path / "model.weights.h5"
    if not weights_path.is_file():
        raise StateError("the model folder has no model.weights.h5", path=path)
    with h5py.File(weights_path, "r") as f:
        return _read_with_config(model, f, path, hints)


def _read_member(zf: zipfile.ZipFile, name: str, limit: int, path: Path) -> bytes:
    info = zf.getinfo(name)
    _check_member_size(info, limit, path)
    with zf.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise StateError(f"{name} is larger than {limit >> 20} MiB", path=path)
    return data


def _check_member_size(info: zipfile.ZipInfo, limit: int | None, path: Path) -> None:
    if limit is not None and info.file_size > limit:
        raise StateError(f"{info.filename} is larger than {limit >> 20} MiB", path=path)
    if (
        info.file_size > _ZIP_BOMB_FLOOR_BYTES
        and info.file_size > _ZIP_MAX_EXPANSION * max(info.compress_size, 1)
    ):
        raise StateError(
            f"{info.filename} declares {info.file_size} bytes but stores "
            f"{info.compress_size}: refusing a likely decompression bomb",
            path=path,
        )


def _parse_json(data: bytes | str, path: Path) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise StateError(
            f"the model config is not valid JSON ({_reason(exc)})", path=path
        ) from exc


def _read_hdf5(
    f: h5py.File, path: Path, hints: dict[str, bool | None]
) -> list[KerasBatchNorm]:
    kind = _hdf5_kind(f)
    if kind == "legacy":
        raw = _attr_text(f, "model_config")
        if raw is None or len(raw) > _CONFIG_MAX_BYTES:
            raise StateError("unreadable model_config attribute", path=path)
        model = _parse_json(raw, path)
        root = _group(f, "model_weights", path)
        return _read_legacy(root, "model_weights", model, path, hints)
    if kind == "legacy_weights":
        return _read_legacy(f, "", None, path, hints)
    if kind == "weights":
        return _read_bare_weights(f, path, hints)
    if _attr_text(f, "format") == "bncli-state":
        raise StateError(
            "a bncli state, not a Keras model",
            path=path,
            hint="import reads .keras, .weights.h5 and .h5 files saved by Keras",
        )
    raise StateError(
        "an HDF5 file that is neither a bncli state nor a Keras model",
        path=path,
        hint="give a .keras, .weights.h5 or .h5 file saved by Keras",
    )


# --------------------------------------------------------------------------
# Safe HDF5 access


def _group(parent: h5py.Group, name: str, path: Path) -> h5py.Group:
    """The group at ``name`` below ``parent``, following hard links only."""
    obj = _child(parent, name, path)
    if not isinstance(obj, h5py.Group):
        raise StateError(f"{parent.name}/{name} is not a group", path=path)
    return obj


def _child(parent: h5py.Group, name: str, path: Path) -> h5py.Group | h5py.Dataset:
    return plain_child(parent, name, path)


#: Values a model file may make bncli read in all, over every layer: a
#: crafted file can hard-link one large dataset into thousands of layers.
_MAX_VALUES_READ = 1 << 25
_values_left: contextvars.ContextVar[list[int]] = contextvars.ContextVar("_values_left")


@contextlib.contextmanager
def _read_budget() -> Iterator[None]:
    """Bound the values read from one file (see :data:`_MAX_VALUES_READ`)."""
    token = _values_left.set([_MAX_VALUES_READ])
    try:
        yield
    finally:
        _values_left.reset(token)


def _spend(values: int, where: str, path: Path) -> None:
    left = _values_left.get(None)
    if left is None:
        return
    left[0] -= values
    if left[0] < 0:
        raise StateError(
            f"{where}: the file's BatchNormalization variables hold more than "
            f"{_MAX_VALUES_READ:,} values in all; refused as a crafted file",
            path=path,
        )


def _attr_text(obj: h5py.HLObject, name: str) -> str | None:
    if name not in obj.attrs:
        return None
    value = obj.attrs[name]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    return None


def _attr_strings(obj: h5py.HLObject, name: str, path: Path) -> list[str]:
    """A list-of-strings attribute, joined from ``name0``, ``name1``... if chunked."""
    if name in obj.attrs:
        chunks = [obj.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in obj.attrs:
            chunks.append(obj.attrs[f"{name}{len(chunks)}"])
    values: list[str] = []
    for chunk in chunks:
        array = np.asarray(chunk)
        if array.size == 0:
            continue
        for item in array.reshape(-1):
            if isinstance(item, bytes | np.bytes_):
                values.append(bytes(item).decode("utf-8", errors="replace"))
            elif isinstance(item, str):
                values.append(item)
            else:
                raise StateError(
                    f"attribute {name!r} of {obj.name} is not a list of names",
                    path=path,
                )
    return values


def _read_array(dataset: Any, where: str, path: Path) -> np.ndarray:
    check_dataset(dataset, where, path, max_elements=_MAX_CHANNELS)
    if len(dataset.shape or ()) != 1:
        raise StateError(
            f"{where} has shape {dataset.shape}; a BatchNormalization variable is 1-D",
            path=path,
        )
    _spend(dataset.size, where, path)
    bfloat16 = _attr_text(dataset, "dtype") == "bfloat16"
    if bfloat16 and dataset.dtype.itemsize == 2 and dataset.dtype.kind == "V":
        import ml_dtypes  # only for bfloat16: importing it costs 0.5 s

        return np.asarray(dataset[()]).view(ml_dtypes.bfloat16)
    if dataset.dtype.kind != "f":
        raise StateError(
            f"{where} holds {dataset.dtype}, not floating-point numbers", path=path
        )
    return np.asarray(dataset[()])


# --------------------------------------------------------------------------
# Model configs: walking the layers


@dataclasses.dataclass
class _Found:
    """A BatchNormalization layer located in a model config."""

    entry: dict[str, Any]
    name: str
    weights_path: (
        str  # Keras 3 path, e.g. "layers/sequential/layers/batch_normalization"
    )
    outer: tuple[str, ...]  # names of the models around it, outermost first
    input_shape: Shape | None


def _snake_case(name: str) -> str:
    # keras.src.utils.naming.to_snake_case
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_name(entry: Mapping[str, Any]) -> str:
    name = entry.get("name")
    if not isinstance(name, str):
        config = entry.get("config")
        name = config.get("name") if isinstance(config, dict) else None
    return name if isinstance(name, str) else ""


def _model_layers(entry: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    config = entry.get("config")
    if not isinstance(config, dict):
        return None
    layers = config.get("layers")
    if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
        return None
    return layers


def _find_batchnorms(model: Any, path: Path) -> list[_Found]:
    if not isinstance(model, dict) or not isinstance(model.get("class_name"), str):
        raise StateError("the model config is not a serialized Keras object", path=path)
    if model["class_name"] in _BATCHNORM_CLASSES:
        # A bare layer saved with layer.save(): its variables are at the root.
        return [_Found(model, _layer_name(model), "", (), _build_shape(model))]
    found: list[_Found] = []
    _walk(model, "", (), found, 0, path)
    return found


def _walk(
    model: dict[str, Any],
    prefix: str,
    outer: tuple[str, ...],
    found: list[_Found],
    depth: int,
    path: Path,
) -> None:
    if depth > _MAX_DEPTH:
        raise StateError(f"models nested over {_MAX_DEPTH} deep", path=path)
    layers = _model_layers(model)
    if layers is None:
        return
    sequential = model.get("class_name") == "Sequential"
    shapes = _propagate(model, depth)[0]
    counters: dict[str, int] = {}
    for index, entry in enumerate(layers):
        class_name = entry.get("class_name")
        if not isinstance(class_name, str):
            raise StateError("a layer of the model config has no class_name", path=path)
        if sequential and class_name == "InputLayer":
            continue  # Sequential.layers leaves its InputLayer out
        snake = _snake_case("Functional" if class_name == "Model" else class_name)
        k = counters.get(snake, 0)
        counters[snake] = k + 1
        segment = snake if k == 0 else f"{snake}_{k}"
        weights_path = f"{prefix}layers/{segment}"
        if class_name in _BATCHNORM_CLASSES:
            found.append(
                _Found(entry, _layer_name(entry), weights_path, outer, shapes[index])
            )
        elif _model_layers(entry) is not None:
            _walk(
                entry,
                f"{weights_path}/",
                (*outer, _layer_name(entry)),
                found,
                depth + 1,
                path,
            )


# --------------------------------------------------------------------------
# Input shapes: from build_config, Keras 3 node shapes, or propagation

#: Layers whose output shape is their input shape.
_SAME_SHAPE = frozenset(
    {
        "BatchNormalization", "SyncBatchNormalization", "LayerNormalization",
        "GroupNormalization", "UnitNormalization", "Dropout", "SpatialDropout1D",
        "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise",
        "AlphaDropout", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU",
        "Softmax", "ThresholdedReLU", "ActivityRegularization", "Masking",
        "Rescaling", "Normalization",
    }
)  # fmt: skip
#: Layers that keep the rank and set (conv) or keep (pooling) the channels.
_SAME_RANK = re.compile(
    r"^(Conv[123]D|Conv[123]DTranspose|Convolution[123]D|SeparableConv[12]D|"
    r"DepthwiseConv[12]D|(Max|Average)Pooling[123]D|UpSampling[123]D|"
    r"ZeroPadding[123]D|Cropping[123]D|LocallyConnected[12]D)$"
)
_GLOBAL_POOLING = re.compile(r"^Global(Max|Average)Pooling[123]D$")


def _as_shape(value: Any) -> Shape | None:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= _MAX_RANK:
        return None
    shape: list[int | None] = []
    for dim in value:
        if dim is None:
            shape.append(None)
        elif isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0:
            shape.append(dim)
        else:
            return None
    return tuple(shape)


def _build_shape(entry: Mapping[str, Any]) -> Shape | None:
    build = entry.get("build_config")
    if isinstance(build, dict):
        return _as_shape(build.get("input_shape"))
    return None


def _node_shape(entry: Mapping[str, Any]) -> Shape | None:
    """The input shape of a Keras 3 functional node (a ``__keras_tensor__``)."""
    nodes = entry.get("inbound_nodes")
    if not isinstance(nodes, list) or not nodes or not isinstance(nodes[0], dict):
        return None
    args = nodes[0].get("args")
    if not isinstance(args, list) or not args or not isinstance(args[0], dict):
        return None
    tensor = args[0]
    if tensor.get("class_name") != "__keras_tensor__":
        return None
    config = tensor.get("config")
    return _as_shape(config.get("shape")) if isinstance(config, dict) else None


def _inbound_name(entry: Mapping[str, Any]) -> str | None:
    """The layer feeding a Keras 2 functional node: ``[[["dense", 0, 0, {}]]]``."""
    nodes = entry.get("inbound_nodes")
    try:
        name = nodes[0][0][0]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return None
    return name if isinstance(name, str) else None


def _declared_input(entry: Mapping[str, Any]) -> Shape | None:
    config = entry.get("config")
    if not isinstance(config, dict):
        return None
    for key in ("batch_shape", "batch_input_shape"):
        shape = _as_shape(config.get(key))
        if shape is not None:
            return shape
    return None


def _output_shape(
    entry: Mapping[str, Any], shape: Shape | None, depth: int
) -> Shape | None:
    """The output shape of a common layer, as far as its config tells it."""
    class_name = entry.get("class_name")
    config = entry.get("config")
    if not isinstance(class_name, str) or not isinstance(config, dict):
        return None
    if class_name == "InputLayer":
        return _declared_input(entry)
    if class_name == "Reshape":
        target = config.get("target_shape")
        if not isinstance(target, list | tuple):
            return None
        dims = _as_shape([None if d == -1 else d for d in target])
        batch = shape[0] if shape else None
        return (batch, *dims) if dims is not None else None
    if _model_layers(entry) is not None:
        return _propagate(entry, depth + 1)[1]
    if shape is None:
        return None
    if class_name in _SAME_SHAPE:
        return shape
    if class_name == "Dense":
        units = config.get("units")
        return (*shape[:-1], units) if isinstance(units, int) else None
    channels_first = config.get("data_format") == "channels_first"
    channel = 1 if channels_first else len(shape) - 1
    if _SAME_RANK.match(class_name) and len(shape) >= 3:
        out: list[int | None] = [shape[0]] + [None] * (len(shape) - 1)
        filters = config.get("filters")
        if "Depthwise" in class_name:
            multiplier = config.get("depth_multiplier", 1)
            channels = shape[channel]
            if isinstance(channels, int) and isinstance(multiplier, int):
                out[channel] = channels * multiplier
        elif "Conv" in class_name or "LocallyConnected" in class_name:
            out[channel] = filters if isinstance(filters, int) else None
        else:
            out[channel] = shape[channel]
        return tuple(out)
    if class_name == "Flatten":
        rest = [d for d in shape[1:] if d is not None]
        size = math.prod(rest) if len(rest) == len(shape) - 1 else None
        return (shape[0], size)
    if _GLOBAL_POOLING.match(class_name) and len(shape) >= 3:
        if config.get("keepdims"):
            kept: list[int | None] = [shape[0]] + [1] * (len(shape) - 1)
            kept[channel] = shape[channel]
            return tuple(kept)
        return (shape[0], shape[channel])
    return None


def _output_layer_name(config: Mapping[str, Any]) -> str | None:
    """The first output of a functional config: Keras 3 ``["bn", 0, 0]``, Keras 2
    ``[["bn", 0, 0]]``."""
    outputs = config.get("output_layers")
    while isinstance(outputs, list) and outputs and isinstance(outputs[0], list):
        outputs = outputs[0]
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], str):
        return outputs[0]
    return None


def _propagate(
    model: Mapping[str, Any], depth: int = 0
) -> tuple[list[Shape | None], Shape | None]:
    """The input shape of each layer of a model config, and the model's output
    shape, where the config tells them.

    A Keras 3 ``.keras`` config gives every layer's ``build_config``; legacy
    ``.h5`` configs do not, so shapes are carried from the model's input
    through the layers whose output shape follows from their config (Keras 3
    functional nodes also record their input shapes).
    """
    layers = _model_layers(model) or []
    config = model.get("config")
    if depth > _MAX_DEPTH or not isinstance(config, dict):
        return [None] * len(layers), None
    sequential = model.get("class_name") == "Sequential"
    shapes: list[Shape | None] = [None] * len(layers)
    outputs: dict[str, Shape | None] = {}
    current: Shape | None = None
    if sequential:
        current = _as_shape(config.get("build_input_shape"))
        if current is None and layers:
            current = _declared_input(layers[0])
    for index, entry in enumerate(layers):
        shape = _build_shape(entry) or _node_shape(entry)
        if shape is None:
            if sequential:
                shape = current
            else:
                source = _inbound_name(entry)
                shape = outputs.get(source) if source is not None else None
        if entry.get("class_name") == "InputLayer":
            output = _declared_input(entry)
        else:
            shapes[index] = shape
            output = _output_shape(entry, shape, depth)
        outputs[_layer_name(entry)] = output
        current = output
    if sequential:
        return shapes, current
    name = _output_layer_name(config)
    return shapes, outputs.get(name) if name is not None else None


# --------------------------------------------------------------------------
# Config normalization


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _class_name(spec: str) -> str:
    name = "".join(part[:1].upper() + part[1:] for part in spec.split("_"))
    return _CLASS_ALIASES.get(name, name)


def _normalize_object(
    value: Any, module: str, key: str, layer: str, path: Path | None
) -> dict[str, Any] | None:
    """A Keras serialized object (initializer, regularizer, constraint) in full form."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.isidentifier():
            raise StateError(f"layer {layer!r}: bad {key} {value!r}", path=path)
        return {
            "module": module,
            "class_name": _class_name(value),
            "config": {},
            "registered_name": None,
        }
    if not isinstance(value, dict) or not isinstance(value.get("class_name"), str):
        raise StateError(
            f"layer {layer!r}: {key} is not a serialized Keras object", path=path
        )
    class_name = value["class_name"]
    registered = value.get("registered_name")
    if not class_name.isidentifier() or registered not in (None, class_name):
        raise UnsupportedLayerError(
            f"layer {layer!r}: custom {key} {registered or class_name!r} is not "
            "supported; only Keras built-ins are read",
            reason=f"custom {key} {registered or class_name!r}",
            path=path,
        )
    config = value.get("config", {})
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise StateError(f"layer {layer!r}: {key} config is not a dict", path=path)
    normalized = {
        "module": module,
        "class_name": _CLASS_ALIASES.get(class_name, class_name),
        "config": dict(config),
        "registered_name": None,
    }
    # The layer is usable only if bncli's own parser takes the object, as
    # import will: a name that is no Keras built-in (Lambda, a custom class
    # registered without a package name) or arguments it refuses make the
    # layer unsupported here, so inspect and import agree.
    from bncli.errors import ConfigError
    from bncli.keras_compat import specs

    parse = {
        "keras.initializers": specs.parse_initializer,
        "keras.regularizers": specs.parse_regularizer,
        "keras.constraints": specs.parse_constraint,
    }[module]
    try:
        parse(normalized)
    except ConfigError as e:
        raise UnsupportedLayerError(
            f"layer {layer!r}: {key} {class_name!r} is not supported ({e.message})",
            reason=f"{key} {class_name!r} is not a Keras built-in bncli reads",
            path=path,
        ) from e
    return normalized


def _normalize_policy(value: Any, layer: str, path: Path | None) -> dict[str, Any]:
    name: Any
    if value is None:
        name = "float32"
    elif isinstance(value, str):
        name = value
    elif (
        isinstance(value, dict)
        and value.get("class_name") in _POLICY_CLASSES
        and isinstance(value.get("config"), dict)
    ):
        name = value["config"].get("name")
    else:
        raise StateError(f"layer {layer!r}: unreadable dtype {value!r}", path=path)
    if name not in _POLICY_NAMES:
        raise UnsupportedLayerError(
            f"layer {layer!r}: dtype policy {name!r} is not supported",
            reason=f"dtype policy {name!r}",
            path=path,
            hint=f"supported: {', '.join(sorted(_POLICY_NAMES))}",
        )
    return {
        "module": "keras",
        "class_name": "DTypePolicy",
        "config": {"name": name},
        "registered_name": None,
    }


def _normalize_axis(
    value: Any, input_rank: int | None, layer: str, path: Path | None
) -> int:
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise UnsupportedLayerError(
                f"layer {layer!r}: axis {list(value)} normalizes over several "
                "axes; Keras 3 BatchNormalization takes one",
                reason=f"several axes (axis={list(value)})",
                path=path,
            )
        value = value[0]
        # Keras 2 stores the axis build() made non-negative: make it count
        # from the end again, as Keras 3 configs do, when the rank is known.
        if isinstance(value, int) and value >= 0 and input_rank is not None:
            value -= input_rank
    if not isinstance(value, int) or isinstance(value, bool):
        raise StateError(f"layer {layer!r}: axis {value!r} is not an int", path=path)
    return value


def normalize_batchnorm_config(
    config: Mapping[str, Any],
    *,
    input_rank: int | None = None,
    class_name: str = "BatchNormalization",
    path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Normalize a BatchNormalization config to Keras 3.15's ``get_config()`` form.

    Accepts Keras 3 configs (any 3.x) and Keras 2 / tf.keras ones: a one-element
    ``axis`` list becomes an int counted from the end (using ``input_rank``),
    a dtype string or Keras 2 ``Policy`` becomes a ``DTypePolicy`` dict,
    initializers, regularizers and constraints get their ``module`` and
    ``registered_name``, and missing keys get Keras's defaults.

    Args:
        config: The layer's ``config`` as found in the file.
        input_rank: The rank of the layer's input (batch dimension included),
            to convert a Keras 2 ``axis`` list; a positive axis is kept when
            None.
        class_name: The layer's class; ``SyncBatchNormalization`` (Keras 2)
            means ``synchronized=True``.
        path: The file, for error messages.

    Returns:
        A new dict with exactly Keras 3.15's keys, in its order.

    Raises:
        UnsupportedLayerError: If the config asks for renormalization, virtual
            batches or several axes, or names a dtype policy or an object that
            is not a Keras built-in.
        StateError: If the config holds values Keras would refuse.

    Example:
        >>> cfg = normalize_batchnorm_config({"name": "bn", "axis": [1]}, input_rank=2)
        >>> cfg["axis"], cfg["dtype"]["config"]["name"], cfg["renorm_momentum"]
        (-1, 'float32', 0.99)
    """
    where = None if path is None else Path(path)
    if not isinstance(config, Mapping):
        raise StateError("a BatchNormalization config is not a dict", path=where)
    name = config.get("name")
    if not isinstance(name, str):
        raise StateError("a BatchNormalization layer has no name", path=where)
    # What bncli does not support is raised last, after every check for
    # damage: a damaged layer refuses the file, an unsupported one only itself.
    problems: list[UnsupportedLayerError] = []
    if config.get("renorm"):
        problems.append(
            UnsupportedLayerError(
                f"layer {name!r} uses batch renormalization (renorm=True), which "
                "bncli does not support",
                reason="batch renormalization (renorm=True)",
                path=where,
            )
        )
    if config.get("virtual_batch_size") is not None:
        size = f"virtual_batch_size={config['virtual_batch_size']!r}"
        problems.append(
            UnsupportedLayerError(
                f"layer {name!r} uses virtual batches ({size}), which bncli does "
                "not support",
                reason=f"virtual batches ({size})",
                path=where,
            )
        )

    def supported(normalize: Callable[..., Any], *args: Any) -> Any:
        """``normalize(*args)``, keeping an unsupported value for the end."""
        try:
            return normalize(*args)
        except UnsupportedLayerError as problem:
            problems.append(problem)
            return None

    out: dict[str, Any] = {"name": name}
    for key, default in (("trainable", True),):
        value = config.get(key, default)
        if not isinstance(value, bool):
            raise StateError(f"layer {name!r}: {key} is not a bool", path=where)
        out[key] = value
    out["dtype"] = supported(_normalize_policy, config.get("dtype"), name, where)
    out["axis"] = supported(
        _normalize_axis, config.get("axis", -1), input_rank, name, where
    )
    for key, default_number in (("momentum", 0.99), ("epsilon", 1e-3)):
        value = config.get(key, default_number)
        if not _is_number(value) or not math.isfinite(value):
            raise StateError(
                f"layer {name!r}: {key} {value!r} is not a number", path=where
            )
        out[key] = value
    for key in ("center", "scale"):
        value = config.get(key, True)
        if not isinstance(value, bool):
            raise StateError(f"layer {name!r}: {key} is not a bool", path=where)
        out[key] = value
    for key, default_class in _DEFAULT_INITIALIZERS.items():
        value = config.get(key, default_class)
        out[key] = supported(
            _normalize_object,
            value if value is not None else default_class,
            "keras.initializers",
            key,
            name,
            where,
        )
    for family, module in (
        ("regularizer", "keras.regularizers"),
        ("constraint", "keras.constraints"),
    ):
        for variable in ("beta", "gamma"):
            key = f"{variable}_{family}"
            out[key] = supported(
                _normalize_object, config.get(key), module, key, name, where
            )
    synchronized = config.get("synchronized", class_name == "SyncBatchNormalization")
    if not isinstance(synchronized, bool):
        raise StateError(f"layer {name!r}: synchronized is not a bool", path=where)
    out["synchronized"] = synchronized or class_name == "SyncBatchNormalization"
    out["renorm"] = False
    out["renorm_clipping"] = None
    momentum = config.get("renorm_momentum", 0.99)
    out["renorm_momentum"] = momentum if _is_number(momentum) else 0.99
    if problems:
        raise problems[0]
    return out


# --------------------------------------------------------------------------
# Variables


def _name_variables(
    arrays: Sequence[np.ndarray],
    layer: str,
    center: bool | None,
    scale: bool | None,
    path: Path,
) -> dict[str, np.ndarray]:
    """Name datasets "0".."n-1" (Keras 3 order) from center/scale."""
    count = len(arrays)
    if count > 4:
        raise UnsupportedLayerError(
            f"layer {layer!r} has {count} variables: renormalization "
            "(renorm=True) is not supported",
            reason=f"batch renormalization ({count} variables)",
            path=path,
        )
    if count in (2, 4):
        # The count says it all: the hints matter only for 3 variables.
        center = scale = count == 4
    elif count == 3:
        if center is None and scale is None:
            raise UnsupportedLayerError(
                f"layer {layer!r} has 3 variables and the file no config: they "
                "are (gamma, moving_mean, moving_variance) with center=False or "
                "(beta, moving_mean, moving_variance) with scale=False",
                reason="3 variables and no config: gamma or beta is ambiguous",
                path=path,
                hint="say which with center=False or scale=False",
            )
        center = not scale if center is None else center
        scale = not center if scale is None else scale
        if center == scale:
            raise UnsupportedLayerError(
                f"layer {layer!r} has 3 variables, which contradicts "
                f"center={center} and scale={scale}",
                reason=f"3 variables contradict center={center}, scale={scale}",
                path=path,
            )
    else:
        raise StateError(
            f"layer {layer!r} has {count} variables; BatchNormalization has 2 to 4",
            path=path,
        )
    expected = _expected_names(center, scale)
    return dict(zip(expected, arrays, strict=True))


def _expected_names(center: bool, scale: bool) -> list[str]:
    return [
        name
        for name in VARIABLE_NAMES
        if (name != "gamma" or scale) and (name != "beta" or center)
    ]


def _check_variables(
    variables: Mapping[str, np.ndarray],
    config: Mapping[str, Any] | None,
    layer: str,
    input_shape: Shape | None,
    path: Path,
) -> None:
    """Validate names, ranks, dtypes and lengths against the config.

    Renormalization variables are an :class:`UnsupportedLayerError`, raised
    only once everything else is sound (damage refuses the whole file).
    """
    renorm = sorted(set(variables) & _RENORM_VARIABLES)
    unknown = set(variables) - set(VARIABLE_NAMES) - _RENORM_VARIABLES
    if unknown:
        raise StateError(
            f"layer {layer!r} has unexpected variables {sorted(unknown)}", path=path
        )
    for required in ("moving_mean", "moving_variance"):
        if required not in variables:
            raise StateError(f"layer {layer!r} has no {required}", path=path)
    if config is not None:
        expected = _expected_names(config["center"], config["scale"])
        if sorted(expected) != sorted(set(variables) - _RENORM_VARIABLES):
            raise StateError(
                f"layer {layer!r} stores {sorted(variables)} but its config "
                f"(center={config['center']}, scale={config['scale']}) needs "
                f"{sorted(expected)}",
                path=path,
            )
    lengths = set()
    for name, array in variables.items():
        if array.ndim != 1:
            raise StateError(
                f"layer {layer!r}: {name} has shape {array.shape}, not (C,)", path=path
            )
        if not (array.dtype.kind == "f" or array.dtype.name == "bfloat16"):
            raise StateError(
                f"layer {layer!r}: {name} holds {array.dtype}, not floats", path=path
            )
        lengths.add(array.shape[0])
    if len(lengths) != 1:
        raise StateError(
            f"layer {layer!r}: variables of different lengths {sorted(lengths)}",
            path=path,
        )
    (channels,) = lengths
    if channels == 0:
        raise StateError(f"layer {layer!r} has no channels", path=path)
    if config is not None and input_shape is not None:
        axis = config["axis"]
        if -len(input_shape) <= axis < len(input_shape):
            declared = input_shape[axis]
            if declared is not None and declared != channels:
                raise StateError(
                    f"layer {layer!r}: input shape {input_shape} has "
                    f"{declared} channels on axis {axis}, variables have {channels}",
                    path=path,
                )
    if renorm:
        raise UnsupportedLayerError(
            f"layer {layer!r} has renormalization variables: renorm=True is "
            "not supported",
            reason=f"batch renormalization ({', '.join(renorm)})",
            path=path,
        )


def _fill_channels(
    shape: Shape | None, config: Mapping[str, Any] | None, channels: int
) -> Shape | None:
    """Put the known channel count into a partly known input shape."""
    if shape is None or config is None:
        return shape
    axis = config["axis"]
    if not -len(shape) <= axis < len(shape) or shape[axis] is not None:
        return shape
    dims = list(shape)
    dims[axis] = channels
    return tuple(dims)


def _finish(
    name: str,
    where: str,
    config: dict[str, Any] | None,
    variables: dict[str, np.ndarray],
    input_shape: Shape | None,
    path: Path,
    *,
    file_config: Any = None,
) -> KerasBatchNorm:
    """The checked layer; unsupported (renorm variables) rather than refused."""
    try:
        _check_variables(variables, config, name, input_shape, path)
    except UnsupportedLayerError as problem:
        return _unsupported(
            name, where, file_config, variables, input_shape, problem, path
        )
    channels = next(iter(variables.values())).shape[0]
    ordered = {key: variables[key] for key in VARIABLE_NAMES if key in variables}
    return KerasBatchNorm(
        name=name,
        path=where,
        config=config,
        variables=ordered,
        input_shape=_fill_channels(input_shape, config, channels),
    )


def _unsupported(
    name: str,
    where: str,
    file_config: Any,
    variables: dict[str, np.ndarray],
    input_shape: Shape | None,
    problem: UnsupportedLayerError,
    path: Path,
) -> KerasBatchNorm:
    """A layer bncli cannot use, kept for listings with ``problem``.

    Its arrays were read as every variable is (1-D floats, bounded); they must
    still have one length: a layer that fails that is damaged, and so is the
    file.
    """
    lengths = {array.shape[0] for array in variables.values()}
    if not lengths:
        raise StateError(f"layer {name!r} has no variables", path=path)
    if len(lengths) != 1:
        raise StateError(
            f"layer {name!r}: variables of different lengths {sorted(lengths)}",
            path=path,
        )
    if lengths == {0}:
        raise StateError(f"layer {name!r} has no channels", path=path)
    return KerasBatchNorm(
        name=name,
        path=where,
        config=None,
        variables=dict(variables),
        input_shape=input_shape,
        problem=problem,
        file_config=dict(file_config) if isinstance(file_config, Mapping) else None,
    )


def _positional(
    arrays: Sequence[np.ndarray], file_config: Any
) -> dict[str, np.ndarray]:
    """Name an unsupported layer's datasets "0".."n-1" where the count tells how.

    Keras creates gamma (if scale), beta (if center), the moving statistics,
    then the renorm variables; a count that fits neither keeps the positions.
    """
    settings = file_config if isinstance(file_config, Mapping) else {}
    center, scale = settings.get("center", True), settings.get("scale", True)
    if isinstance(center, bool) and isinstance(scale, bool):
        plain = _expected_names(center, scale)
        for names in (plain, [*plain, *_RENORM_ORDER]):
            if len(names) == len(arrays):
                return dict(zip(names, arrays, strict=True))
    return {str(index): array for index, array in enumerate(arrays)}


# --------------------------------------------------------------------------
# Keras 3 weights files (.keras members and .weights.h5)


def _vars_group(f: h5py.File, weights_path: str, path: Path) -> h5py.Group:
    """The ``vars`` group of a layer, with Keras 2.13's alternative spelling."""
    candidates = [f"{weights_path}/vars" if weights_path else "vars"]
    if weights_path.startswith("layers/"):
        # Keras 2.13 to 2.15 .keras files: "_layer_checkpoint_dependencies".
        candidates.append(
            weights_path.replace("layers", "_layer_checkpoint_dependencies") + "/vars"
        )
    for candidate in candidates:
        try:
            return _group(f, candidate, path)
        except StateError:
            continue
    raise StateError(
        f"the weights have no {candidates[0]} group: the file does not match "
        "its config",
        path=path,
    )


def _vars_arrays(group: h5py.Group, path: Path) -> list[np.ndarray]:
    keys = list(group.keys())
    if sorted(keys, key=lambda k: int(k) if k.isdigit() else -1) != [
        str(i) for i in range(len(keys))
    ]:
        raise StateError(
            f"{group.name} holds {sorted(keys)}, not datasets 0..n-1", path=path
        )
    return [
        _read_array(_child(group, str(i), path), f"{group.name}/{i}", path)
        for i in range(len(keys))
    ]


def _layer_arrays(
    f: h5py.File, found: _Found, name: str, path: Path
) -> list[np.ndarray]:
    """The datasets of a layer's ``vars`` group, which must carry its name."""
    group = _vars_group(f, found.weights_path, path)
    stored = _attr_text(group, "name")
    if stored is not None and stored != name:
        raise StateError(
            f"{found.weights_path} holds layer {stored!r}, the config says "
            f"{name!r}: the weights do not match the config",
            path=path,
        )
    return _vars_arrays(group, path)


def _read_with_config(
    model: Any, f: h5py.File, path: Path, hints: dict[str, bool | None]
) -> list[KerasBatchNorm]:
    layers = []
    for found in _find_batchnorms(model, path):
        rank = len(found.input_shape) if found.input_shape is not None else None
        file_config = found.entry.get("config") or {}
        where = found.weights_path or "vars"
        problem: UnsupportedLayerError | None = None
        config: dict[str, Any] | None = None
        try:
            config = normalize_batchnorm_config(
                file_config,
                input_rank=rank,
                class_name=found.entry["class_name"],
                path=path,
            )
        except UnsupportedLayerError as exc:
            problem = exc
        # Normalizing checks first that the config is a dict with a string name.
        name = file_config["name"]
        arrays = _layer_arrays(f, found, name, path)
        if problem is None and len(arrays) > 4:
            problem = UnsupportedLayerError(
                f"layer {name!r} has {len(arrays)} variables: "
                "renormalization is not supported",
                reason=f"batch renormalization ({len(arrays)} variables)",
                path=path,
            )
        if problem is not None:
            variables = _positional(arrays, file_config)
            layers.append(
                _unsupported(
                    name,
                    where,
                    file_config,
                    variables,
                    found.input_shape,
                    problem,
                    path,
                )
            )
            continue
        assert config is not None  # normalizing returned, or raised the problem
        expected = _expected_names(config["center"], config["scale"])
        if len(arrays) != len(expected):
            raise StateError(
                f"layer {config['name']!r} stores {len(arrays)} variables, its "
                f"config needs {len(expected)} ({', '.join(expected)})",
                path=path,
            )
        variables = dict(zip(expected, arrays, strict=True))
        layers.append(
            _finish(
                config["name"],
                where,
                config,
                variables,
                found.input_shape,
                path,
                file_config=file_config,
            )
        )
    return layers


_BN_SEGMENT = re.compile(r"^(sync_)?batch_normalization(_\d+)?$")


def _natural_key(name: str) -> tuple[str, int]:
    match = re.match(r"^(.*?)(?:_(\d+))?$", name)
    assert match is not None
    return (match.group(1), int(match.group(2) or 0))


def _scan_weights(
    group: h5py.Group,
    prefix: str,
    depth: int,
    path: Path,
    visits: list[int] | None = None,
) -> Iterator[tuple[str, h5py.Group]]:
    """Yield (weights path, vars group) of every batch_normalization[_k] group.

    At most :data:`_MAX_GROUPS` groups are visited: hard links can make a
    small file a graph whose paths are exponential in its depth.
    """
    if visits is None:
        visits = [_MAX_GROUPS]
    if depth > _MAX_DEPTH:
        raise StateError(f"groups nested over {_MAX_DEPTH} deep", path=path)
    visits[0] -= 1
    if visits[0] < 0:
        raise StateError(
            f"more than {_MAX_GROUPS:,} groups to walk; refused as a crafted file",
            path=path,
        )
    for key in sorted(group.keys(), key=_natural_key):
        if key == "vars" or not isinstance(group.get(key, getlink=True), h5py.HardLink):
            continue
        child = group[key]
        if not isinstance(child, h5py.Group):
            continue
        here = f"{prefix}{key}"
        if _BN_SEGMENT.match(key) and "vars" in child:
            yield here, _group(child, "vars", path)
        else:
            yield from _scan_weights(child, f"{here}/", depth + 1, path, visits)


def _read_bare_weights(
    f: h5py.File, path: Path, hints: dict[str, bool | None]
) -> list[KerasBatchNorm]:
    layers = []
    for where, group in _scan_weights(f, "", 0, path):
        name = _attr_text(group, "name") or where
        arrays = _vars_arrays(group, path)
        try:
            variables = _name_variables(
                arrays, name, hints["center"], hints["scale"], path
            )
        except UnsupportedLayerError as problem:
            variables = _positional(arrays, None)
            layers.append(
                _unsupported(name, where, None, variables, None, problem, path)
            )
            continue
        layers.append(_finish(name, where, None, variables, None, path))
    return layers


# --------------------------------------------------------------------------
# Legacy .h5 (Keras 2, tf.keras, Keras 3 model.save("m.h5"))


def _variable_kind(weight_name: str) -> str:
    """``"model/bn/gamma:0"`` -> ``"gamma"``."""
    return re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])


def _owner(weight_name: str) -> str:
    """``"model/bn/gamma:0"`` -> ``"bn"`` (the layer that made the variable)."""
    parts = weight_name.split("/")
    return parts[-2] if len(parts) >= 2 else ""


def _legacy_layer_weights(
    layer_group: h5py.Group, owner: str | None, layer: str, path: Path
) -> tuple[dict[str, np.ndarray], str]:
    """Read the BN variables of one layer group (only ``owner``'s if given).

    Returns:
        The variables by kind, and the group holding them relative to
        ``layer_group`` (``"inner/inner_bn"`` for ``"inner/inner_bn/gamma"``).
    """
    variables: dict[str, np.ndarray] = {}
    folder = ""
    for weight_name in _attr_strings(layer_group, "weight_names", path):
        if owner is not None and _owner(weight_name) != owner:
            continue
        kind = _variable_kind(weight_name)
        if kind in variables:
            raise StateError(f"layer {layer!r} has two {kind} weights", path=path)
        dataset = _child(layer_group, weight_name, path)
        variables[kind] = _read_array(
            dataset, f"{layer_group.name}/{weight_name}", path
        )
        folder = weight_name.rpartition("/")[0]
    return variables, folder


def _is_batchnorm_weights(kinds: set[str]) -> bool:
    return {"moving_mean", "moving_variance"} <= kinds and kinds <= (
        set(VARIABLE_NAMES) | _RENORM_VARIABLES
    )


def _read_legacy(
    root: h5py.Group,
    root_path: str,
    model: Any,
    path: Path,
    hints: dict[str, bool | None],
) -> list[KerasBatchNorm]:
    layer_names = _attr_strings(root, "layer_names", path)
    prefix = f"{root_path}/" if root_path else ""
    if model is None:
        return _read_legacy_weights_only(root, prefix, layer_names, path, hints)
    layers = []
    for found in _find_batchnorms(model, path):
        top = found.outer[0] if found.outer else found.name
        if top not in layer_names:
            raise StateError(
                f"layer {top!r} of the model config has no weights group", path=path
            )
        group = _group(root, top, path)
        owner = found.name if found.outer else None
        variables, folder = _legacy_layer_weights(group, owner, found.name, path)
        if not variables:
            raise StateError(
                f"layer {found.name!r} has no weights in {group.name}", path=path
            )
        rank = len(found.input_shape) if found.input_shape is not None else None
        file_config = found.entry.get("config") or {}
        where = f"{prefix}{top}/{folder}" if found.outer else f"{prefix}{top}"
        try:
            config = normalize_batchnorm_config(
                file_config,
                input_rank=rank,
                class_name=found.entry["class_name"],
                path=path,
            )
        except UnsupportedLayerError as problem:
            layers.append(
                _unsupported(
                    file_config["name"],
                    where,
                    file_config,
                    variables,
                    found.input_shape,
                    problem,
                    path,
                )
            )
            continue
        layers.append(
            _finish(
                config["name"],
                where,
                config,
                variables,
                found.input_shape,
                path,
                file_config=file_config,
            )
        )
    return layers


def _read_legacy_weights_only(
    root: h5py.Group,
    prefix: str,
    layer_names: list[str],
    path: Path,
    hints: dict[str, bool | None],
) -> list[KerasBatchNorm]:
    layers = []
    for top in layer_names:
        group = _group(root, top, path)
        weight_names = _attr_strings(group, "weight_names", path)
        owners: dict[str, set[str]] = {}
        for weight_name in weight_names:
            owners.setdefault(_owner(weight_name), set()).add(
                _variable_kind(weight_name)
            )
        candidates = [o for o, kinds in owners.items() if _is_batchnorm_weights(kinds)]
        for owner in candidates:
            if len(owners) == 1 and (
                owner in ("", top) or not weight_names[0].startswith(f"{top}/")
            ):
                # The group holds one layer's weights: it is that layer, even
                # where tf.keras named its variables otherwise.
                name, only = top, None
            else:
                # A nested model's group: the owner names the inner layer.
                name, only = owner, owner
            variables, folder = _legacy_layer_weights(group, only, name, path)
            where = f"{prefix}{top}" if only is None else f"{prefix}{top}/{folder}"
            layers.append(_finish(name, where, None, variables, None, path))
    return layers


# --------------------------------------------------------------------------
# Choosing a layer


def select_layer(
    layers: list[KerasBatchNorm], name: str | None, *, path: str | os.PathLike[str]
) -> KerasBatchNorm:
    """Pick one layer by name, or the only one when no name is given.

    Unsupported layers count like the others (an only supported layer among
    several is not guessed), but one is never returned: choosing it raises
    its problem.

    Args:
        layers: What :func:`read_batchnorm_layers` returned.
        name: The layer's name (or, where nested models repeat a name, its
            ``path``); None to take the only BatchNormalization layer.
        path: The file, for error messages.

    Returns:
        The chosen layer, a supported one.

    Raises:
        StateError: If the file has no BatchNormalization layer.
        UnsupportedLayerError: If the chosen layer is unsupported (renorm,
            virtual batches, ambiguous variables...): its ``problem``.
        UsageError: If ``name`` matches no layer (or several), or is None and
            there are several; the message lists the layers by name, marking
            the unsupported ones.

    Example:
        >>> bn = KerasBatchNorm("bn", "layers/batch_normalization", None, {}, None)
        >>> select_layer([bn], None, path="m.keras").name
        'bn'
    """
    chosen = _choose(layers, name, path)
    if chosen.problem is not None:
        raise chosen.problem
    return chosen


def _choose(
    layers: list[KerasBatchNorm], name: str | None, path: str | os.PathLike[str]
) -> KerasBatchNorm:
    if not layers:
        raise StateError("the file has no BatchNormalization layer", path=path)
    if name is None:
        if len(layers) == 1:
            return layers[0]
        raise UsageError(
            f"the file has {len(layers)} BatchNormalization layers: {_listing(layers)}",
            path=path,
            hint="choose one with --layer NAME",
        )
    matches = [layer for layer in layers if layer.name == name]
    if len(matches) == 1:
        return matches[0]
    by_path = [layer for layer in layers if layer.path == name]
    if len(by_path) == 1:
        return by_path[0]
    if matches:
        raise UsageError(
            f"several BatchNormalization layers are named {name!r}: {_listing(layers)}",
            path=path,
            hint="choose one by its path, given in parentheses",
        )
    raise UsageError(
        f"no BatchNormalization layer named {name!r}; the file has: {_listing(layers)}",
        path=path,
    )


def _listing(layers: Sequence[KerasBatchNorm]) -> str:
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer.name] = counts.get(layer.name, 0) + 1
    return ", ".join(
        (layer.name if counts[layer.name] == 1 else f"{layer.name} ({layer.path})")
        + ("" if layer.problem is None else " [unsupported]")
        for layer in layers
    )


# --------------------------------------------------------------------------
# Writing


def _export_config(config: Mapping[str, Any], target: Path) -> dict[str, Any]:
    """The config written into an exported model (SPEC section 8)."""
    normalized = normalize_batchnorm_config(config, path=target)
    # Older Keras (before the renorm keys) refuses unknown keys: leave them out
    # while renorm is off. synchronized=True only loads on TensorFlow, and
    # inference is the same either way (the caller warns).
    for key in _RENORM_KEYS:
        normalized.pop(key)
    normalized["synchronized"] = False
    return normalized


#: By name: bfloat16's dtype is ml_dtypes', imported only where it is used.
_WRITABLE_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16"})


def _ordered_variables(
    config: Mapping[str, Any], variables: Mapping[str, np.ndarray], target: Path
) -> list[tuple[str, np.ndarray]]:
    layer = config["name"]
    expected = _expected_names(config["center"], config["scale"])
    if sorted(variables) != sorted(expected):
        raise StateError(
            f"layer {layer!r}: variables {sorted(variables)} do not match "
            f"center={config['center']}, scale={config['scale']} "
            f"(which need {sorted(expected)})",
            path=target,
        )
    ordered = []
    lengths = set()
    for name in expected:
        array = np.asarray(variables[name])
        if array.ndim != 1 or array.dtype.name not in _WRITABLE_DTYPES:
            raise StateError(
                f"layer {layer!r}: {name} is {array.dtype} of shape {array.shape}; "
                "expected a 1-D float16/bfloat16/float32/float64 array",
                path=target,
            )
        lengths.add(array.shape[0])
        ordered.append((name, np.ascontiguousarray(array)))
    if len(lengths) != 1 or 0 in lengths:
        raise StateError(
            f"layer {layer!r}: variables of lengths {sorted(lengths)}", path=target
        )
    return ordered


def _write_weights(
    f: h5py.File,
    model_name: str,
    input_name: str,
    layer_name: str,
    ordered: Sequence[tuple[str, np.ndarray]],
) -> None:
    """Write Keras 3.15's weights layout of Functional([InputLayer, BN])."""
    f.create_group("vars").attrs["name"] = model_name
    f.create_group("layers/input_layer/vars").attrs["name"] = input_name
    group = f.create_group("layers/batch_normalization/vars")
    group.attrs["name"] = layer_name
    for index, (_, array) in enumerate(ordered):
        dataset = group.create_dataset(str(index), data=array)
        if array.dtype.name == "bfloat16":
            # h5py stores bfloat16 as 2-byte opaque data; Keras marks it so.
            dataset.attrs["dtype"] = "bfloat16"


def _names(config: Mapping[str, Any]) -> tuple[str, str, str]:
    layer = config["name"]
    input_name = "input_layer" if layer != "input_layer" else "input_layer_1"
    model = "functional" if "functional" not in (layer, input_name) else "model"
    return model, input_name, layer


def _compute_dtype(config: Mapping[str, Any]) -> str:
    policy = config["dtype"]["config"]["name"]
    return str(policy).removeprefix("mixed_")


def _model_config(
    config: dict[str, Any], sample_shape: Sequence[int | None]
) -> dict[str, Any]:
    model_name, input_name, layer_name = _names(config)
    batch_shape = [None, *sample_shape]
    dtype = _compute_dtype(config)
    input_layer: dict[str, Any] = {
        "module": "keras.layers",
        "class_name": "InputLayer",
        # "ragged" and "optional" are left at their defaults: older Keras
        # InputLayers do not know them.
        "config": {
            "batch_shape": batch_shape,
            "dtype": dtype,
            "sparse": False,
            "name": input_name,
        },
        "registered_name": None,
        "name": input_name,
        "inbound_nodes": [],
    }
    tensor = {
        "class_name": "__keras_tensor__",
        "config": {
            "shape": batch_shape,
            "dtype": dtype,
            "keras_history": [input_name, 0, 0],
        },
    }
    batchnorm = {
        "module": "keras.layers",
        "class_name": "BatchNormalization",
        "config": config,
        "registered_name": None,
        "build_config": {"input_shape": batch_shape},
        "name": layer_name,
        "inbound_nodes": [{"args": [tensor], "kwargs": {"mask": None}}],
    }
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {
            "name": model_name,
            "trainable": True,
            "layers": [input_layer, batchnorm],
            "input_layers": [input_name, 0, 0],
            "output_layers": [layer_name, 0, 0],
        },
        "registered_name": "Functional",
        "build_config": {"input_shape": None},
    }


def _check_sample_shape(
    config: Mapping[str, Any],
    sample_shape: Sequence[int | None],
    channels: int,
    target: Path,
) -> tuple[int | None, ...]:
    """Validate the per-sample shape; None marks a dimension of any size."""
    shape = tuple(sample_shape)
    if not shape or not all(
        d is None
        or (isinstance(d, int | np.integer) and not isinstance(d, bool) and d > 0)
        for d in shape
    ):
        raise StateError(
            f"bad per-sample shape {shape}: expected positive ints or None",
            path=target,
        )
    shape = tuple(None if d is None else int(d) for d in shape)
    rank = len(shape) + 1
    axis = config["axis"]
    if not -rank <= axis < rank or axis in (0, -rank):
        raise StateError(
            f"axis {axis} is not a channel axis of inputs shaped (batch, "
            f"{', '.join(map(str, shape))})",
            path=target,
        )
    declared = shape[axis - 1 if axis > 0 else axis]
    if declared != channels:
        raise StateError(
            f"per-sample shape {shape} has {declared} channels on axis {axis}, "
            f"the variables {channels}",
            path=target,
        )
    return shape


def write_keras_model(
    path: str | os.PathLike[str],
    config: dict[str, Any],
    variables: Mapping[str, np.ndarray],
    sample_shape: tuple[int | None, ...],
) -> None:
    """Write a ``.keras`` model: an Input, then one BatchNormalization.

    The archive holds ``metadata.json``, ``config.json`` (a Functional model:
    an InputLayer with ``batch_shape [None, *sample_shape]``, then the layer)
    and ``model.weights.h5``, as Keras 3.15 writes them, so that
    ``keras.saving.load_model`` loads it without bncli. The config leaves out
    the renorm keys and writes ``synchronized: false`` (SPEC section 8).

    Args:
        path: The ``.keras`` file to write (replaced atomically).
        config: The layer's config in :func:`normalize_batchnorm_config` form.
        variables: ``gamma`` (if scale), ``beta`` (if center), ``moving_mean``
            and ``moving_variance``, 1-D arrays of length C in the dtype to
            store (float32 normally; float16, bfloat16, float64 too).
        sample_shape: The shape of one sample, without the batch dimension;
            its channel axis must have C entries.

    Raises:
        StateError: If the config asks for renorm, or the variables do not
            match the config or the sample shape.

    Example:
        >>> write_keras_model("bn.keras", cfg, weights, (5,))  # doctest: +SKIP
    """
    target = Path(path)
    exported = _export_config(config, target)
    ordered = _ordered_variables(exported, variables, target)
    channels = ordered[0][1].shape[0]
    shape = _check_sample_shape(exported, sample_shape, channels, target)
    model_name, input_name, layer_name = _names(exported)
    config_json = json.dumps(_model_config(exported, shape))
    metadata_json = json.dumps(
        {
            "keras_version": _KERAS_VERSION_WRITTEN,
            "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
        }
    )
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        _write_weights(f, model_name, input_name, layer_name, ordered)
    with atomic_path(path) as tmp:
        # Keras writes its archives uncompressed (ZIP_STORED) in this order.
        with zipfile.ZipFile(tmp, "w") as zf:
            zf.writestr("metadata.json", metadata_json)
            zf.writestr("config.json", config_json)
            zf.writestr("model.weights.h5", buffer.getvalue())


def write_weights_h5(
    path: str | os.PathLike[str],
    config: dict[str, Any],
    variables: Mapping[str, np.ndarray],
) -> None:
    """Write the Keras 3 weights file of the model :func:`write_keras_model` writes.

    It loads with ``model.load_weights(path)`` into
    ``Sequential([Input(shape), BatchNormalization(**config)])`` or the
    Functional equivalent: Keras matches weights by position
    (``layers/batch_normalization/vars``), not by name.

    Args:
        path: The ``.weights.h5`` file to write (replaced atomically).
        config: The layer's config in :func:`normalize_batchnorm_config` form.
        variables: As for :func:`write_keras_model`.

    Raises:
        StateError: If the config asks for renorm or the variables do not
            match it.

    Example:
        >>> write_weights_h5("bn.weights.h5", cfg, weights)  # doctest: +SKIP
    """
    target = Path(path)
    exported = _export_config(config, target)
    ordered = _ordered_variables(exported, variables, target)
    model_name, input_name, layer_name = _names(exported)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write_weights(f, model_name, input_name, layer_name, ordered)
