"""Keras model and weights files, read and written as plain data.

bncli never imports Keras: a ``.keras`` archive is a zip of JSON and HDF5
members, and the HDF5 files (Keras 3 ``.weights.h5``, legacy ``.h5``) are read
with h5py. This module finds the BatchNormalization layers of such a file
(:func:`read_batchnorm_layers`); its neighbours normalize their configs to
Keras 3.15's ``get_config()`` form and write a one-layer Keras model back in
Keras 3's own layout. In short:

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

import io
import json
import mmap
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

from bncli.errors import BncliError, StateError, StateNotFoundError
from bncli.io import checksums
from bncli.io.detect import stored_member_start
from bncli.keras_compat.config import normalize_batchnorm_config
from bncli.keras_compat.detect import (
    hdf5_kind,
    is_keras_file,
    sniff_keras_format,
)
from bncli.keras_compat.hdf5_reading import attr_text, group_of, read_budget
from bncli.keras_compat.keras3 import read_bare_weights, read_with_config
from bncli.keras_compat.legacy import read_legacy
from bncli.keras_compat.records import (
    BATCHNORM_CLASSES,
    CONFIG_MAX_BYTES,
    SPOOL_BYTES,
    VARIABLE_NAMES,
    ZIP_BOMB_FLOOR_BYTES,
    ZIP_MAX_EXPANSION,
    KerasBatchNorm,
)
from bncli.keras_compat.selection import select_layer
from bncli.keras_compat.writing import write_keras_model, write_weights_h5

# The Keras-file modules' public names, imported from here by their callers.
__all__ = [
    "VARIABLE_NAMES",
    "KerasBatchNorm",
    "is_keras_file",
    "model_layer_count",
    "normalize_batchnorm_config",
    "read_batchnorm_layers",
    "select_layer",
    "write_keras_model",
    "write_weights_h5",
]


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
        with read_budget():
            kind = sniff_keras_format(target)
            if kind == "dir":
                return _parsed_in_child(lambda: _read_keras_dir(target, hints), target)
            if kind == "zip":
                return _read_keras_zip(target, hints)
            if kind == "hdf5":
                return _parsed_in_child(lambda: _read_hdf5_file(target, hints), target)
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
        return read_hdf5_layers(f, path, hints)


def _parsed_in_child(
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
            _read_member(zf, "config.json", CONFIG_MAX_BYTES, path), path
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
        if info.compress_type == zipfile.ZIP_STORED:
            # As Keras writes it: the member's bytes lie in the archive as
            # they are. Its CRC-32 is checked over them in place, and libhdf5
            # reads only what it needs of them, through a window on the
            # archive: no copy, so the cost follows the BN layers read, not
            # the model's size.
            with open(path, "rb") as raw:
                window = stored_member(raw, info, path)
                with h5py.File(window, "r") as f:
                    return read_with_config(model, f, path, hints)
        # Decompressed once, to its end, into memory (a temporary file past
        # 64 MiB): zipfile checks the member's CRC-32 at the end, so a damaged
        # member is refused before libhdf5 parses it (libhdf5 loops forever on
        # some damaged files: HDFGroup/hdf5#1707), and libhdf5's seeks are
        # then cheap. Seeking in the deflated member itself restarts the
        # decompression at every backward seek: a crafted layout made that
        # minutes of work.
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as copy:
            with zf.open(info) as member:
                shutil.copyfileobj(member, copy, 1 << 20)
            copy.seek(0)
            with h5py.File(copy, "r") as f:
                return read_with_config(model, f, path, hints)


def stored_member(raw: Any, info: zipfile.ZipInfo, path: Path) -> MemberWindow:
    """A read-only window on a stored member of the open archive ``raw``, CRC checked.

    Raises:
        StateError: a damaged local header, or bytes whose CRC-32 is not the
            member's (refused before libhdf5 parses a byte).
    """
    start = stored_member_start(raw, info)
    if start is None:
        raise StateError(
            f"corrupt Keras archive (bad local header of {info.filename})", path=path
        )
    crc = 0
    if info.file_size:  # the mapped pages are the page cache's: no copy
        with mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                crc = checksums.crc32(view[start : start + info.file_size])
            finally:
                view.release()
    if crc != info.CRC:
        raise StateError(
            f"corrupt Keras archive (Bad CRC-32 for file {info.filename!r})", path=path
        )
    return MemberWindow(raw, start, info.file_size)


class MemberWindow(io.RawIOBase):
    """Bytes ``[start, start + size)`` of an open file, as a file of their own."""

    def __init__(self, raw: Any, start: int, size: int) -> None:
        super().__init__()
        self._raw = raw
        self._start = start
        self._size = size
        self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(base + offset, 0)
        return self._at

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), max(self._size - self._at, 0))
        if not want:
            return 0
        self._raw.seek(self._start + self._at)
        got = self._raw.readinto(memoryview(buffer)[:want])
        self._at += got
        return int(got)


def _read_keras_dir(path: Path, hints: dict[str, bool | None]) -> list[KerasBatchNorm]:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise StateError("not a Keras model folder: no config.json", path=path)
    if config_path.stat().st_size > CONFIG_MAX_BYTES:
        raise StateError(
            f"config.json is larger than {CONFIG_MAX_BYTES >> 20} MiB", path=path
        )
    model = _parse_json(config_path.read_bytes(), path)
    weights_path = path / "model.weights.h5"
    if not weights_path.is_file():
        raise StateError("the model folder has no model.weights.h5", path=path)
    with h5py.File(weights_path, "r") as f:
        return read_with_config(model, f, path, hints)


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
        info.file_size > ZIP_BOMB_FLOOR_BYTES
        and info.file_size > ZIP_MAX_EXPANSION * max(info.compress_size, 1)
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


def read_hdf5_layers(
    f: h5py.File, path: Path, hints: dict[str, bool | None]
) -> list[KerasBatchNorm]:
    """The layers of an open Keras HDF5 file (legacy, legacy weights or Keras 3 weights)."""
    kind = hdf5_kind(f)
    if kind == "legacy":
        raw = attr_text(f, "model_config")
        if raw is None or len(raw) > CONFIG_MAX_BYTES:
            raise StateError("unreadable model_config attribute", path=path)
        model = _parse_json(raw, path)
        root = group_of(f, "model_weights", path)
        return read_legacy(root, "model_weights", model, path, hints)
    if kind == "legacy_weights":
        return read_legacy(f, "", None, path, hints)
    if kind == "weights":
        return read_bare_weights(f, path, hints)
    if attr_text(f, "format") == "bncli-state":
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


def model_layer_count(path: str | os.PathLike[str]) -> int | None:
    """The layers of the model a Keras file holds, input layers left out.

    1 for the one-layer models ``export`` writes; None where the file does
    not tell (a weights-only file's layers are its weight groups). Never
    raises for a damaged file: None.
    """
    target = Path(path)
    try:
        kind = sniff_keras_format(target)
        if kind in ("zip", "dir"):
            if kind == "zip":
                with zipfile.ZipFile(target) as zf:
                    raw = _read_member(zf, "config.json", CONFIG_MAX_BYTES, target)
            else:
                raw = (target / "config.json").read_bytes()[: CONFIG_MAX_BYTES + 1]
            return _count_layers(_parse_json(raw, target))
        if kind == "hdf5":
            from bncli.io.child import bounded

            def count() -> int:  # -1: the file does not tell
                with h5py.File(target, "r") as f:
                    if "model_config" in f.attrs:
                        text = attr_text(f, "model_config")
                        found = None if text is None else _parse_json(text, target)
                        layers = _count_layers(found)
                        return -1 if layers is None else layers
                    if "layers" in f and isinstance(f["layers"], h5py.Group):
                        return len(f["layers"])
                    names = f.attrs.get("layer_names")
                    return -1 if names is None else len(names)

            counted: int = bounded(count, path=target, encode=int, decode=int)
            return None if counted < 0 else counted
    except (BncliError, OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return None


def _count_layers(model: Any) -> int | None:
    if not isinstance(model, dict):
        return None
    config = model.get("config")
    if model.get("class_name") in BATCHNORM_CLASSES:
        return 1
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list):
        return None
    return sum(
        1
        for entry in layers
        if isinstance(entry, dict) and entry.get("class_name") != "InputLayer"
    )
