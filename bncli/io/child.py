"""Run a parse of a foreign file in a child process, bounded in time.

libhdf5 loops forever on some damaged files (HDFGroup/hdf5#1707: one changed
byte in the global heap of a ``.weights.h5`` is enough), inside C code that
no signal or thread can interrupt. States carry a checksum and ``.keras``
archives a CRC, checked before libhdf5 sees a byte; a bare ``.weights.h5``, a
legacy ``.h5`` or an unzipped ``.keras`` folder has neither. So their parse
runs in a forked child (no re-import: a fork costs about a millisecond),
which sends its result back as JSON on a pipe (never pickle) and is killed
past a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bncli import errors
from bncli.errors import BncliError, StateError

__all__ = [
    "PARSE_SECONDS",
    "bounded",
    "decode_array",
    "decode_error",
    "encode_array",
    "encode_error",
]

#: Seconds a parse may take before it is taken for a hang. Generous: a
#: ResNet's weights parse in a fraction of a second.
PARSE_SECONDS = 60.0


def encode_array(array: np.ndarray) -> dict[str, str]:
    """An array as JSON data: its dtype's name and its bytes (base64)."""
    return {
        "dtype": array.dtype.name
        if array.dtype.name == "bfloat16"
        else array.dtype.str,
        "shape": json.dumps(list(array.shape)),
        "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode(),
    }


def decode_array(data: dict[str, str]) -> np.ndarray:
    """The array :func:`encode_array` encoded."""
    if data["dtype"] == "bfloat16":
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(data["dtype"])
    flat = np.frombuffer(base64.b64decode(data["data"]), dtype=dtype)
    return flat.reshape(json.loads(data["shape"])).copy()


def encode_error(e: BncliError) -> dict[str, Any]:
    return {
        "class": type(e).__name__,
        "message": e.message,
        "path": e.path,
        "hint": e.hint,
        "reason": getattr(e, "reason", None),
    }


def decode_error(data: dict[str, Any]) -> BncliError:
    """The bncli error :func:`bounded`'s child raised, rebuilt by its class name."""
    cls = getattr(errors, data["class"], None)
    if not (isinstance(cls, type) and issubclass(cls, BncliError)):
        cls = StateError
    if data.get("reason") is not None:
        return cls(  # type: ignore[call-arg]
            data["message"], reason=data["reason"], path=data["path"], hint=data["hint"]
        )
    return cls(data["message"], path=data["path"], hint=data["hint"])


def bounded(
    parse: Callable[[], Any],
    *,
    path: str | os.PathLike[str],
    encode: Callable[[Any], Any],
    decode: Callable[[Any], Any],
    seconds: float | None = None,
) -> Any:
    """``decode(encode(parse()))``, with ``parse`` run in a child process.

    A bncli error raised in the child is raised again here; any other error
    becomes a StateError naming ``path``.

    Raises:
        StateError: the parse took longer than ``seconds`` (the child is
            killed), or the child died.
    """
    limit = PARSE_SECONDS if seconds is None else seconds
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child, reported through the pipe
        code = 0
        try:
            os.close(read_end)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            try:
                message: Any = {"result": encode(parse())}
            except BncliError as e:
                message = {"error": encode_error(e)}
            except Exception as e:  # damaged structures: h5py raises many kinds
                text = str(e).strip().splitlines()
                message = {"unexpected": text[0][:200] if text else type(e).__name__}
            data = json.dumps(message).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view) :]
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                raise StateError(
                    f"not parsed within {limit:g} s: the file is damaged in a way "
                    "that makes libhdf5 loop (HDFGroup/hdf5#1707)",
                    path=path,
                )
            ready, _, _ = select.select([read_end], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(read_end, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise
    finally:
        os.close(read_end)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    try:
        message = json.loads(b"".join(chunks))
    except ValueError:
        message = {"unexpected": "its parsing process died"}
    if "error" in message:
        raise decode_error(message["error"])
    if "unexpected" in message:
        raise StateError(
            f"not a readable Keras model or weights file ({message['unexpected']})",
            path=path,
        )
    return decode(message["result"])
