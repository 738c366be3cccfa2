"""The Dask cluster as the Dask engine meets it: connect, probe, collect.

Dask is imported here only inside the functions that need it (it is an
optional extra, never imported when bncli is).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from bncli.engines.threads import default_workers
from bncli.errors import BncliError, UsageError

__all__ = [
    "CONNECT_TIMEOUT",
    "INSTALL_COMMAND",
    "SCHEDULER_SCHEMES",
    "connect",
    "environment_kept",
    "first_line",
    "import_distributed",
    "probe",
    "results",
]

#: What to run when Dask is missing.
INSTALL_COMMAND = "pip install 'bncli[dask]'"
#: The address schemes of a scheduler that bncli can reach from its own process.
SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss")
#: Seconds to wait for a scheduler to answer.
CONNECT_TIMEOUT = 5.0


def import_distributed() -> Any:
    """``distributed``, or a usage error naming the install command."""
    try:
        import distributed
    except ImportError as e:
        raise UsageError(
            f"--engine dask needs Dask, which is not installed; install it with: "
            f"{INSTALL_COMMAND}"
        ) from e
    return distributed


def _unreachable(address: str, reason: str) -> BncliError:
    return BncliError(
        f"cannot reach the Dask scheduler at {address} ({reason})",
        hint="check the address and that the scheduler is running",
    )


def probe(address: str) -> None:
    """Fail fast, with one clear error, when no Dask scheduler answers at ``address``.

    A plain socket first: Dask's own connect retries until its timeout even
    when the port is closed, where a socket is refused at once. Then Dask's
    handshake, alone, so that a service that is not a scheduler is named as
    such, rather than failing deep inside a half-built client.
    """
    from distributed.comm.addressing import parse_address, parse_host_port
    from distributed.comm.core import connect
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
    except ValueError as e:
        raise UsageError(f"bad scheduler address {address!r} ({e})") from e
    if scheme not in SCHEDULER_SCHEMES:
        # inproc:// lives in one process (bncli's has no scheduler), and ucx://
        # needs UCX: both would only time out, with Dask's traceback.
        raise UsageError(
            f"scheduler address {address!r}: the {scheme}:// scheme is not "
            f"supported; use one of {', '.join(s + '://' for s in SCHEDULER_SCHEMES)}"
        )
    if scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parse_host_port(location, 8786)
    except ValueError as e:
        raise UsageError(f"bad scheduler address {address!r} ({e})") from e
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise _unreachable(address, e.strerror or type(e).__name__) from e
    if scheme != "tcp":
        return  # a TLS handshake needs the client's credentials

    async def handshake() -> None:
        # Dask bounds the connection but not its handshake: a service that
        # accepts and then waits for a request of its own (an HTTP server, the
        # dashboard's port) would hold the handshake forever.
        comm = await asyncio.wait_for(
            connect(address, timeout=CONNECT_TIMEOUT),  # type: ignore[no-untyped-call]
            CONNECT_TIMEOUT,
        )
        await comm.close()

    # In a thread of its own, as the caller may be running an event loop.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            pool.submit(asyncio.run, handshake()).result()
        except TimeoutError as e:
            raise _unreachable(
                address,
                f"no Dask handshake within {CONNECT_TIMEOUT:g} s: what answers is "
                "not a Dask scheduler",
            ) from e
        except OSError as e:
            raise _unreachable(address, first_line(e)) from e
        except Exception as e:
            raise _unreachable(address, "what answers is not a Dask scheduler") from e


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """Undo, on the way out, what the block changed in this process's environment.

    A local cluster's nannies set their workers' variables in their own
    parent's ``os.environ`` before spawning them, and leave them there:
    ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``OPENBLAS_NUM_THREADS`` 1,
    ``MALLOC_TRIM_THRESHOLD_``, ``PYTHONHASHSEED`` (distributed's
    ``distributed.nanny.pre-spawn-environ``). A program that called the
    library would run its later subprocesses under them.
    """
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in before]:
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


@contextlib.contextmanager
def connect(
    distributed: Any, scheduler: str | None, workers: int | None
) -> Iterator[tuple[Any, int]]:
    """A client of ``scheduler``, or of a local cluster of ``workers`` processes.

    The process's environment is as it was once the cluster is closed (see
    :func:`environment_kept`).

    Yields:
        ``(client, threads)``: the client and the cluster's worker threads.
    """
    with environment_kept():
        with _connect(distributed, scheduler, workers) as connected:
            yield connected


@contextlib.contextmanager
def _connect(
    distributed: Any, scheduler: str | None, workers: int | None
) -> Iterator[tuple[Any, int]]:
    cluster = None
    if scheduler is not None:
        probe(scheduler)
        try:
            client = distributed.Client(
                scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False
            )
        except Exception as e:
            raise _unreachable(scheduler, first_line(e)) from e
    else:
        # (the environment restored at once as well: pyarrow sizes its
        # thread pool from OMP_NUM_THREADS when first used, for good)
        with warnings.catch_warnings(), environment_kept():
            # Its HTTP server moves off a busy port 8787 with a warning that
            # would only add noise on stderr.
            warnings.filterwarnings("ignore", "Port .* is already in use", UserWarning)
            cluster = distributed.LocalCluster(
                n_workers=workers or default_workers(),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        client = distributed.Client(cluster, set_as_default=False)
    try:
        threads = sum(client.nthreads().values())
        if not threads:
            try:
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as e:
                raise BncliError(
                    f"the Dask scheduler at {scheduler} has no worker",
                    hint="start workers with: dask worker ADDRESS",
                ) from e
            threads = sum(client.nthreads().values())
        yield client, max(threads, 1)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def results(distributed: Any, futures: Sequence[Any]) -> Iterator[Any]:
    """The futures' results in order; a failed task raises its own error."""
    try:
        for future in futures:
            try:
                yield future.result()
            except BncliError:
                raise
            except distributed.KilledWorker as e:
                raise BncliError(
                    f"a Dask worker died while running a task ({e})",
                    hint="check the workers' memory and logs",
                ) from e
            except (OSError, distributed.client.FutureCancelledError) as e:
                raise BncliError(
                    f"the Dask cluster failed ({type(e).__name__}: {e})"
                ) from e
    finally:
        for future in futures:
            if not future.done():
                future.cancel()
