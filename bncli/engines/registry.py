"""The engines by name, as ``--engine`` and ``BatchNormalization.fit`` give them.

Each engine's module is imported only when it is chosen (the Dask engine's
needs Dask, an optional extra).
"""

from __future__ import annotations

from bncli.engines.session import FitEngine
from bncli.errors import UsageError

__all__ = ["ENGINES", "make_engine"]

#: The engines' names.
ENGINES = ("local", "dask")


def make_engine(
    name: str = "local",
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    tasks: int | None = None,
) -> FitEngine:
    """The engine called ``name``.

    Args:
        name: ``"local"`` (threads of this process) or ``"dask"``.
        scheduler: the Dask scheduler's address (``None``: a local cluster).
        workers: threads (local) or worker processes of a local Dask cluster;
            ``None`` means every core.
        tasks: Dask tasks per epoch (``None``: planned from the data).

    Raises:
        UsageError: an unknown name, or a Dask option with the local engine.
    """
    if name == "local":
        if scheduler is not None or tasks is not None:
            raise UsageError("a scheduler and tasks are options of the dask engine")
        from bncli.engines.local import LocalEngine

        return LocalEngine(workers)
    if name == "dask":
        from bncli.engines.dask_engine import DaskEngine

        return DaskEngine(scheduler, workers, tasks)
    raise UsageError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
