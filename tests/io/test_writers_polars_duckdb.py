"""Files as Polars and DuckDB write them, read by bncli as the writers read them back.

Each test writes a file with the library itself (its own types: Polars'
categoricals, string views, compressed IPC; DuckDB's decimals, its CSV and
its Hive partitions), fits it with ``--stats exact``, and compares with the
plain formula over the values the writer reads back; the transform's output
must read back in the same library.
"""

from __future__ import annotations

import duckdb
import numpy as np
import polars as pl
import pytest

from tests.reference import exact_reference

N = 1000


@pytest.fixture
def frame():
    rng = np.random.default_rng(12)
    return pl.DataFrame(
        {
            "id": np.arange(N),
            "a": rng.normal(3.0, 2.0, N),
            "b": rng.normal(size=N).astype(np.float32),
            "k": rng.integers(0, 5, N).astype(np.int16),
            "label": pl.Series(["x", "y"] * (N // 2)).cast(pl.Categorical),
            "note": [f"row {i}" for i in range(N)],
            "flag": [True, False] * (N // 2),
        }
    )


def _expected(values):
    mean, variance = exact_reference(np.asarray(values, dtype=np.float64))
    return mean, variance


def _fitted(run_cli, tmp_path, target, *options):
    done = run_cli("fit", "s.h5", target, "--stats", "exact", *options)
    assert done.exit_code == 0, done.stderr
    import bncli

    return bncli.load(tmp_path / "s.h5")


POLARS_WRITERS = {
    "parquet": lambda df, p: df.write_parquet(p),
    "ipc": lambda df, p: df.write_ipc(p),
    "ipc-zstd": lambda df, p: df.write_ipc(p, compression="zstd"),
    "ipc-stream": lambda df, p: df.write_ipc_stream(p),
    "csv": lambda df, p: df.write_csv(p),
}
SUFFIX = {
    "parquet": ".parquet",
    "ipc": ".arrow",
    "ipc-zstd": ".feather",
    "ipc-stream": ".arrows",
    "csv": ".csv",
}
READ_BACK = {
    ".parquet": lambda p: pl.read_parquet(p),
    ".arrow": lambda p: pl.read_ipc(p),
    ".feather": lambda p: pl.read_ipc(p),
    ".arrows": lambda p: pl.read_ipc_stream(p),
    ".csv": lambda p: pl.read_csv(p),
}


@pytest.mark.parametrize("writer", list(POLARS_WRITERS))
def test_polars_files(tmp_path, run_cli, frame, writer):
    name = "data" + SUFFIX[writer]
    POLARS_WRITERS[writer](frame, tmp_path / name)
    layer = _fitted(run_cli, tmp_path, name, "--exclude", "id")
    # Default channels: the numbers; not the categorical, the text, the bools.
    assert layer.features == ["a", "b", "k"]
    back = READ_BACK[SUFFIX[writer]](tmp_path / name)
    mean, variance = _expected(back.select(["a", "b", "k"]).to_numpy())
    np.testing.assert_allclose(layer.moving_mean64, mean, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_variance64, variance, rtol=1e-12)
    out = "out" + SUFFIX[writer]
    done = run_cli("transform", "s.h5", name, "-o", out)
    assert done.exit_code == 0, done.stderr
    result = READ_BACK[SUFFIX[writer]](tmp_path / out)
    assert result.columns == frame.columns
    assert result["note"].to_list() == frame["note"].to_list()
    expected = (back["a"].to_numpy() - mean[0]) / np.sqrt(variance[0] + 1e-3)
    np.testing.assert_allclose(result["a"].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_polars_hive_partitions(tmp_path, run_cli, frame):
    """Polars keeps the key in the files too: the file's own column wins."""
    frame.drop("label").write_parquet(tmp_path / "parts", partition_by=["k"])
    layer = _fitted(run_cli, tmp_path, "parts", "--exclude", "id,k")
    assert layer.features == ["a", "b"]
    done = run_cli("transform", "s.h5", "parts", "-o", "out.parquet")
    assert done.exit_code == 0, done.stderr
    result = pl.read_parquet(tmp_path / "out.parquet")
    assert result["k"].dtype == pl.Int16
    by_id = dict(zip(result["id"].to_list(), result["k"].to_list(), strict=True))
    assert all(by_id[i] == k for i, k in zip(frame["id"], frame["k"], strict=True))


@pytest.fixture
def con(tmp_path):
    connection = duckdb.connect()
    connection.execute(
        "create table t as select i as id, (i * 0.001)::decimal(10, 3) as d, "
        "sin(i) * 5 as r, i % 3 as g, 'x' || i as s from range(1000) tbl(i)"
    )
    yield connection
    connection.close()


@pytest.mark.parametrize(
    ("copy", "name"),
    [
        ("format parquet", "t.parquet"),
        ("format csv, header", "t.csv"),
        ("format csv, header, compression gzip", "t.csv.gz"),
        ("format csv, header, delimiter ';'", "t_semi.csv"),
    ],
)
def test_duckdb_files(tmp_path, run_cli, con, copy, name):
    con.execute(f"copy t to '{tmp_path / name}' ({copy})")
    options = ["--delimiter", ";"] if "delimiter" in copy else []
    layer = _fitted(run_cli, tmp_path, name, "--exclude", "id", *options)
    # The decimal is a channel (read as float64), as is the integer g.
    assert layer.features == ["d", "r", "g"]
    values = con.execute(
        "select d::double, r, g::double from t order by id"
    ).fetchnumpy()
    mean, variance = _expected(np.column_stack(list(values.values())))
    np.testing.assert_allclose(layer.moving_mean64, mean, rtol=1e-12)
    np.testing.assert_allclose(layer.moving_variance64, variance, rtol=1e-12)
    out = "out" + (".csv" if "csv" in copy else ".parquet")
    done = run_cli("transform", "s.h5", name, *options, "-o", out)
    assert done.exit_code == 0, done.stderr
    reader = "read_csv" if out.endswith(".csv") else "read_parquet"
    sep = ", delim = ';'" if options else ""
    rows = con.execute(
        f"select count(*), count(distinct s) from {reader}('{tmp_path / out}'{sep})"
    ).fetchone()
    assert rows == (N, N)


def test_duckdb_hive_partitions(tmp_path, run_cli, con):
    con.execute(f"copy t to '{tmp_path / 'parts'}' (format parquet, partition_by (g))")
    layer = _fitted(run_cli, tmp_path, "parts", "--exclude", "id")
    assert layer.features == ["d", "r"]
    done = run_cli("transform", "s.h5", "parts", "-o", "out.parquet")
    assert done.exit_code == 0, done.stderr
    wrong = con.execute(
        f"select count(*) from read_parquet('{tmp_path / 'out.parquet'}') o "
        "join t on o.id = t.id where o.g::int <> t.g"
    ).fetchone()
    assert wrong == (0,)
