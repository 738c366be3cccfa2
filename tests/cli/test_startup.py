"""What each command imports: start-up is paid on every call of a pipeline.

``ml_dtypes`` alone costs more than the rest of start-up (0.5 s for 0.7.0),
pyarrow, h5py and rich tens of milliseconds each; pandas, which pyarrow's
own conversions import wherever it is installed, 0.29 s and 45 MiB. These tests pin which
heavy modules each kind of call may import (a test of imports, not of time;
``make bench`` measures the time).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

HEAVY = (
    "ml_dtypes",
    "pyarrow",
    "h5py",
    "rich",
    "dask",
    "distributed",
    "keras",
    "jax",
    "pandas",
    "pyarrow.compute",
)


def imported(args: list[str], cwd) -> set[str]:
    """The heavy modules a CLI call imports, run as the console script runs it."""
    code = (
        "import json, sys\n"
        "from bncli.cli.main import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        f"heavy = {HEAVY!r}\n"
        "sys.__stderr__.write('\\nIMPORTED ' + json.dumps("
        "[m for m in heavy if m in sys.modules]) + '\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )
    line = done.stderr.rsplit("IMPORTED ", 1)[-1]
    return set(json.loads(line))


def test_import_bncli_imports_nothing_heavy():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, bncli; print([m for m in {HEAVY!r} if m in sys.modules])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]", done.stderr
    # numpy is not needed either until a layer is used
    done = subprocess.run(
        [sys.executable, "-c", "import sys, bncli; print('numpy' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False"


def test_public_names_import_on_first_use():
    import bncli

    assert bncli.BatchNormalization.__module__ == "bncli.layer"
    assert callable(bncli.load)
    assert set(bncli.__all__) <= set(dir(bncli))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bncli.nope  # noqa: B018


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["fit", "--help"], ["transform", "--help"]],
)
def test_help_imports_nothing_heavy(args, tmp_path):
    assert imported(args, tmp_path) == set()


def test_small_npy_fit_and_transform_import_only_h5py(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(64, 3)))
    assert imported(["fit", "s.h5", "x.npy", "--quiet"], tmp_path) == {"h5py"}
    assert (tmp_path / "s.h5").exists()
    assert imported(
        ["transform", "s.h5", "x.npy", "-o", "y.npy", "--quiet"], tmp_path
    ) == {"h5py"}
    assert (tmp_path / "y.npy").exists()


def test_bfloat16_imports_ml_dtypes_only_when_used(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((8, 2)))
    args = ["fit", "s.h5", "x.npy", "--quiet", "--dtype", "bfloat16"]
    assert "ml_dtypes" in imported(args, tmp_path)
    assert imported(["fit", "s.h5", "x.npy", "--quiet"], tmp_path) == {
        "ml_dtypes",
        "h5py",
    }


def test_inspect_and_import_of_a_float32_model_do_not_import_ml_dtypes(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((8, 2)))
    assert "ml_dtypes" not in imported(["fit", "s.h5", "x.npy", "--quiet"], tmp_path)
    for args in (
        ["export", "s.h5", "m.weights.h5"],
        ["inspect", "m.weights.h5"],
        ["import", "m.weights.h5", "-o", "i.h5"],
    ):
        assert "ml_dtypes" not in imported(args, tmp_path), args
    assert (tmp_path / "i.h5").exists()


def test_tables_are_read_and_written_without_pandas(tmp_path):
    """pyarrow's ``to_numpy``, ``pa.array`` and ``pa.scalar`` import pandas
    where it is installed: bncli crosses through the buffers instead, for
    every table path (a column at a time, whole chunks with nulls and a mask
    column, CSV and Arrow outputs, Hive keys)."""
    pytest.importorskip("pandas")  # without it, nothing could import it
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 1 << 16  # a fit column by column (bncli.engines.columns.MIN_ROWS)
    columns = {f"c{j}": rng.normal(size=n).astype(np.float32) for j in range(3)}
    pq.write_table(pa.table(columns), tmp_path / "big.parquet")
    nulls = pa.table(
        {
            "a": pa.array([1.0, None, 3.0, 4.0]),
            "b": pa.array([1, 2, None, 4], type=pa.int32()),
            "keep": pa.array([True, None, True, False]),
            "name": pa.array(["w", "x", "y", "z"]),
        }
    )
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    (tmp_path / "hive" / "region=eu").mkdir(parents=True)
    pq.write_table(nulls, tmp_path / "hive" / "region=eu" / "part-0.parquet")
    calls = [
        ["fit", "big.h5", "big.parquet", "--quiet"],
        ["transform", "big.h5", "big.parquet", "-o", "big-out.parquet", "--quiet"],
        ["fit", "n.h5", "nulls.parquet", "--columns", "a,b", "--mask-column", "keep"],
        ["transform", "n.h5", "nulls.parquet", "-o", "n.csv", "--quiet"],
        ["transform", "n.h5", "nulls.parquet", "-o", "n.arrow", "--quiet"],
        ["transform", "n.h5", "hive", "-o", "h.parquet", "--quiet"],
    ]
    for k, args in enumerate(calls):
        heavy = imported(args, tmp_path)
        assert "pandas" not in heavy, args
        if k < 2:  # floats without nulls: no compute kernel either (40 ms)
            assert heavy == {"pyarrow", "h5py"}, args
    for made in ("big.h5", "big-out.parquet", "n.h5", "n.csv", "n.arrow", "h.parquet"):
        assert (tmp_path / made).stat().st_size > 0
