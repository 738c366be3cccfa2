"""Pipes and formats end to end: stdin/stdout streams, every output format, NO_COLOR."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import bncli
from tests.cli.terminal import run_with_terminal_stderr


def bncli_run(*args, stdin=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "bncli", *map(str, args)],
        input=stdin,
        capture_output=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.fixture
def fitted(tmp_path):
    rng = np.random.default_rng(4)
    n = 300
    nulls = np.zeros(n, bool)
    nulls[[7, 200]] = True
    table = pa.table(
        {
            "id": np.arange(n),
            "x": pa.array(rng.normal(5, 2, n), mask=nulls),
            "y": rng.normal(-1, 0.1, n),
            "tag": ["t"] * n,
        }
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=64)
    assert (
        bncli_run(
            "fit", "s.h5", "t.parquet", "--exclude", "id", cwd=tmp_path
        ).returncode
        == 0
    )
    return tmp_path, table


def expected(tmp_path, table, column):
    state = bncli.load(tmp_path / "s.h5")
    j = state.features.index(column)
    values = table[column].to_numpy(zero_copy_only=False)
    return (values - state.moving_mean64[j]) / np.sqrt(
        state.moving_variance64[j] + state.epsilon
    )


def test_arrow_stream_through_a_pipe(fitted):
    tmp_path, table = fitted
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=50)
    done = bncli_run(
        "transform", "s.h5", "-", "-o", "-", stdin=sink.getvalue(), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    out = pa.ipc.open_stream(done.stdout).read_all()
    assert out.column_names == table.column_names and out.num_rows == 300
    assert out["x"].is_null().equals(table["x"].is_null())
    np.testing.assert_allclose(
        out["y"].to_numpy(), expected(tmp_path, table, "y"), rtol=1e-5, atol=1e-6
    )
    # And fit from a pipe: the state of fitting the file. The stream comes in
    # 50-row batches and the file's fit goes column by column: the same batch
    # moments, folded in another order, so equal to the last bits or so.
    done = bncli_run(
        "fit", "p.h5", "-", "--exclude", "id", stdin=sink.getvalue(), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    piped, filed = bncli.load(tmp_path / "p.h5"), bncli.load(tmp_path / "s.h5")
    for name in ("moving_mean64", "moving_variance64"):
        np.testing.assert_allclose(
            getattr(piped, name), getattr(filed, name), rtol=1e-14, atol=0
        )


def test_npy_through_a_pipe(tmp_path):
    x = np.random.default_rng(0).normal(2, 3, size=(50, 4, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert bncli_run("fit", "s.h5", "x.npy", cwd=tmp_path).returncode == 0
    buf = io.BytesIO()
    np.save(buf, x)
    done = bncli_run(
        "transform", "s.h5", "-", "-o", "-", stdin=buf.getvalue(), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    y = np.load(io.BytesIO(done.stdout))
    assert (
        bncli_run("transform", "s.h5", "x.npy", "-o", "y.npy", cwd=tmp_path).returncode
        == 0
    )
    np.testing.assert_array_equal(y, np.load(tmp_path / "y.npy"))


@pytest.mark.parametrize("command", ["fit", "transform"])
def test_empty_stdin_is_one_clear_error(fitted, command):
    tmp_path, _ = fitted
    args = ["s.h5", "-"] + (["-o", "-"] if command == "transform" else [])
    before = (tmp_path / "s.h5").read_bytes()
    done = bncli_run(command, *args, stdin=b"", cwd=tmp_path)
    assert done.returncode == 3
    assert done.stderr.decode() == (
        "error: -: empty input: nothing on stdin; "
        "pipe an Arrow IPC stream or file, Parquet, NPY or CSV into it\n"
    )
    assert done.stdout == b""
    assert (tmp_path / "s.h5").read_bytes() == before


def test_stdin_cannot_be_replayed(tmp_path):
    done = bncli_run("fit", "s.h5", "-", "--epochs", "2", stdin=b"", cwd=tmp_path)
    assert done.returncode == 2 and b"cannot be replayed" in done.stderr


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".feather", ".ipc", ".csv"])
def test_every_table_output_format(fitted, suffix, run_cli):
    tmp_path, table = fitted
    done = run_cli("transform", "s.h5", "t.parquet", "-o", f"out{suffix}")
    assert done.exit_code == 0, done.stderr
    path = tmp_path / f"out{suffix}"
    if suffix == ".parquet":
        out = pq.read_table(path)
    elif suffix == ".csv":
        out = pacsv.read_csv(path)
    else:
        out = feather.read_table(path)
    assert out.num_rows == table.num_rows and out.column_names == table.column_names
    assert out["x"].null_count == 2
    np.testing.assert_allclose(
        out["y"].to_numpy(), expected(tmp_path, table, "y"), rtol=1e-5, atol=1e-6
    )
    # The output reads back as an input too.
    again = run_cli("transform", "s.h5", path.name, "-o", f"again{suffix}.npy")
    assert again.exit_code == 0, again.stderr


def test_table_to_npy_and_2d_array_to_table(fitted, run_cli):
    tmp_path, table = fitted
    assert run_cli("transform", "s.h5", "t.parquet", "-o", "out.npy").exit_code == 0
    y = np.load(tmp_path / "out.npy")
    assert y.shape == (300, 2)
    np.testing.assert_allclose(
        y[:, 1], expected(tmp_path, table, "y"), rtol=1e-5, atol=1e-6
    )
    # x's null cells (rows 7 and 200) are NaN: NPY has no nulls.
    assert np.isnan(y[:, 0]).nonzero()[0].tolist() == [7, 200]
    np.testing.assert_allclose(
        y[:, 0], expected(tmp_path, table, "x"), rtol=1e-5, atol=1e-6
    )
    np.save(tmp_path / "a.npy", np.ones((5, 2)))
    assert run_cli("fit", "a.h5", "a.npy").exit_code == 0
    assert run_cli("transform", "a.h5", "a.npy", "-o", "a.parquet").exit_code == 0
    assert pq.read_table(tmp_path / "a.parquet").column_names == ["0", "1"]
    np.save(tmp_path / "img.npy", np.ones((5, 2, 2)))
    assert run_cli("fit", "img.h5", "img.npy").exit_code == 0
    done = run_cli("transform", "img.h5", "img.npy", "-o", "img.parquet")
    assert done.exit_code == 2 and "can only be written as .npy" in done.stderr
    assert not (tmp_path / "img.parquet").exists()


def test_no_color_on_a_terminal(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((200_000, 4), dtype=np.float32))
    code, err = run_with_terminal_stderr(
        ["fit", "s.h5", "x.npy"], tmp_path, env={"NO_COLOR": "1"}
    )
    assert code == 0
    assert "samples/s" in err
    assert "\x1b[3" not in err and "\x1b[9" not in err  # no colour codes


def test_nested_columns_pass_through_and_csv_refuses_them(tmp_path, run_cli):
    n = 40
    table = pa.table(
        {
            "x": np.arange(n, dtype=np.float32),
            "l": pa.array([[i, i + 1] for i in range(n)]),
            "s": pa.array([{"p": i, "q": str(i)} for i in range(n)]),
        }
    )
    pq.write_table(table, tmp_path / "nested.parquet", row_group_size=16)
    assert run_cli("fit", "s.h5", "nested.parquet").exit_code == 0
    for suffix in (".parquet", ".arrow"):
        result = run_cli("transform", "s.h5", "nested.parquet", "-o", f"y{suffix}")
        assert result.exit_code == 0, result.stderr
    out = pq.read_table(tmp_path / "y.parquet")
    assert out.column("l").equals(table.column("l"))
    assert out.column("s").equals(table.column("s"))
    assert (
        feather.read_table(tmp_path / "y.arrow").column("s").equals(table.column("s"))
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("transform", "s.h5", "nested.parquet", "-o", "y.csv")
    assert result.exit_code == 2
    assert result.stderr == (
        "error: y.csv: CSV cannot hold column 'l' of type list<element: int64>; "
        "write .parquet or .arrow instead\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before
