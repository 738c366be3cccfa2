"""OpenBLAS's threads in bncli's own process: asleep at once, but for recalibrate.

NumPy's OpenBLAS waits for work busily for 2**28 cycles after it starts
(about 0.08 s of a core per command); the CLI sets ``OPENBLAS_THREAD_TIMEOUT``
to its least before NumPy is imported, for every command but recalibrate
(the only one that calls BLAS). The environment's own value wins, and a
process that imported NumPy already is left alone. What is tested is the
setting NumPy is imported under, not time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from bncli.cli.main import BLAS_THREAD_TIMEOUT

VARIABLE = "OPENBLAS_THREAD_TIMEOUT"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    env.update(extra)
    return env


def _seen(code: str, **env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(**env),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _chosen(args: list[str], before: str = "", **env: str) -> str:
    code = (
        f"{before}\n"
        "import os\n"
        "from bncli.cli.main import _quiet_blas\n"
        f"_quiet_blas({args!r})\n"
        f"print(os.environ.get({VARIABLE!r}))\n"
    )
    return _seen(code, **env)


def test_commands_but_recalibrate_set_the_least_timeout():
    assert BLAS_THREAD_TIMEOUT == "4"
    for args in (["fit", "s.h5", "x.npy"], ["--debug", "transform"], ["inspect"], []):
        assert _chosen(args) == "4", args


def test_recalibrate_keeps_openblas_as_it_is():
    assert _chosen(["recalibrate", "m.keras", "x.npy", "-o", "out.keras"]) == "None"
    assert _chosen(["--debug", "recalibrate"]) == "None"


def test_the_environment_chooses_first():
    assert _chosen(["fit"], **{VARIABLE: "20"}) == "20"


def test_a_process_that_imported_numpy_is_left_alone():
    assert _chosen(["fit"], before="import numpy") == "None"


def test_a_fit_imports_numpy_under_the_setting(tmp_path):
    # End to end through main(): the variable is in place when the fit has
    # imported NumPy (and so OpenBLAS, which reads it as it loads).
    data = tmp_path / "x.npy"
    np.save(data, np.arange(64, dtype=np.float32).reshape(16, 4))
    state = tmp_path / "s.h5"
    code = (
        "import atexit, os, sys\n"
        "atexit.register(lambda: print(os.environ.get("
        f"{VARIABLE!r}), 'numpy' in sys.modules))\n"
        "from bncli.cli.main import main\n"
        f"main(['fit', {str(state)!r}, {str(data)!r}])\n"
    )
    assert _seen(code) == "4 True"
    assert state.exists()
