"""Shared test settings: tolerances, hypothesis profiles, Keras's backend.

Tolerances live here, once:

- ``PRECISE``: bncli against the plain formula in NumPy float64 (two-pass
  moments), the precise reference.
- ``KERAS``: bncli against Keras 3 itself, a semantic cross-check; Keras
  computes moments in float32 with E[x^2] - E[x]^2, so float32 tolerance.
- ``FAST``: a fast path or engine against the per-batch reference loop.
- ``HALF``: per half-precision dtype, where a policy rounds to it.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "numpy")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest
from hypothesis import HealthCheck, settings

PRECISE = {"rtol": 1e-5, "atol": 1e-8}
KERAS = {"rtol": 2e-4, "atol": 2e-5}
FAST = {"rtol": 1e-6, "atol": 1e-9}
#: bncli against Keras or the reference where a policy rounds inputs, outputs or
#: variables to half precision, keyed by that dtype: 8 units of its resolution
#: (2**-11 for float16, 2**-8 for bfloat16), since Keras rounds the inputs
#: before their moments and its variables after every batch.
HALF = {
    "float16": {"rtol": 8 * 2**-11, "atol": 8 * 2**-11},
    "bfloat16": {"rtol": 8 * 2**-8, "atol": 8 * 2**-8},
}

settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough",
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def run_cli(tmp_path, monkeypatch):
    """Run the CLI in-process through click's CliRunner, with bncli's error edge.

    Works in ``tmp_path``. Returns ``run(*args, input=None)``, whose result
    has ``exit_code``, ``stdout`` and ``stderr``.
    """
    import click
    from click.testing import CliRunner

    from bncli.cli.main import main

    monkeypatch.chdir(tmp_path)

    def run(*args: object, input: bytes | str | None = None):
        argv = [str(a) for a in args]

        @click.command()
        def entry() -> None:
            main(argv)  # always exits, with bncli's own code

        return CliRunner().invoke(entry, [], input=input, catch_exceptions=False)

    return run


@pytest.fixture(scope="session")
def scheduler():
    """A Dask scheduler and two single-threaded worker processes, once per run.

    Shared by every test of the Dask engine (a cluster takes seconds to
    start). The local cluster ``--engine dask`` starts itself, which leaves
    this process's environment as it was (the nannies would leave
    OMP_NUM_THREADS=1, MALLOC_TRIM_THRESHOLD_ and more, under which the
    session's later subprocesses would run).
    """
    from bncli.engines.dask_cluster import connect, import_distributed

    with connect(import_distributed(), None, 2) as (client, _):
        yield client.scheduler.address
