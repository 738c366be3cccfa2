"""Arrow's memory pool in bncli's own processes: jemalloc with one arena.

The CLI chooses it before pyarrow is imported (Linux only); the environment's
own choice wins, and a program using the library keeps its pool. The bound on
a Parquet fit's resident memory is what the choice is for: with pyarrow's
default pool the freed pages of the decoded batches stayed resident.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the choice is made on Linux only"
    ),
]


def _has_jemalloc() -> bool:
    import pyarrow as pa

    try:
        pa.jemalloc_memory_pool()
    except NotImplementedError:
        return False
    return True


needs_jemalloc = pytest.mark.skipif(
    not _has_jemalloc(), reason="this pyarrow was built without jemalloc"
)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ARROW_DEFAULT_MEMORY_POOL", "JE_ARROW_MALLOC_CONF")
    }
    env.update(extra)
    return env


def _backend(before: str = "", **env: str) -> str:
    code = (
        f"{before}\n"
        "import os\n"
        "from bncli.cli.main import _choose_arrow_pool\n"
        "_choose_arrow_pool()\n"
        "import pyarrow as pa\n"
        "print(pa.default_memory_pool().backend_name, "
        "os.environ.get('JE_ARROW_MALLOC_CONF'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_clean_env(**env),
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.strip()


@needs_jemalloc
def test_the_cli_process_uses_jemalloc_with_one_arena():
    assert _backend() == "jemalloc narenas:1"


@needs_jemalloc
def test_the_environment_chooses_first():
    assert _backend(ARROW_DEFAULT_MEMORY_POOL="system") == "system narenas:1"
    assert _backend(JE_ARROW_MALLOC_CONF="narenas:2") == "jemalloc narenas:2"


def test_a_process_that_imported_pyarrow_keeps_its_pool():
    # As a library (pyarrow already in use), nothing is changed.
    assert _backend(before="import pyarrow") == "mimalloc None"


def _peak_mib(state, data) -> float:
    # VmHWM of the CLI process itself, read as it ends.
    code = (
        "import atexit, pathlib, sys\n"
        "def peak():\n"
        "    line = [l for l in pathlib.Path('/proc/self/status').read_text()"
        ".splitlines() if l.startswith('VmHWM')][0]\n"
        "    sys.__stderr__.write('PEAK ' + line.split()[1] + '\\n')\n"
        "atexit.register(peak)\n"
        "from bncli.cli.main import main\n"
        "main(sys.argv[1:])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "fit", str(state), str(data), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    assert done.returncode == 0, done.stderr
    return int(done.stderr.rsplit("PEAK ", 1)[1]) / 1024


@needs_jemalloc
def test_a_parquet_fit_holds_its_batches_in_flight_not_the_freed_ones(tmp_path):
    """A 128 MiB Parquet fit stays within 90 MiB of a 64-row one's peak.

    Measured: about 74 MiB more with jemalloc (one arena), 97-115 MiB more
    with pyarrow's default pool, whose freed pages stayed resident.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 1 << 21
    table = pa.table(
        {f"c{j}": rng.standard_normal(n, dtype=np.float32) for j in range(16)}
    )
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=1 << 20)
    pq.write_table(table.slice(0, 64), tmp_path / "tiny.parquet")
    del table
    tiny = _peak_mib(tmp_path / "tiny.h5", tmp_path / "tiny.parquet")
    big = _peak_mib(tmp_path / "big.h5", tmp_path / "big.parquet")
    assert big - tiny < 90, (tiny, big)
