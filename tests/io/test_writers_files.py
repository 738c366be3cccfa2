"""Files as their writers write them: pandas frames, Arrow types, compressed CSV.

pandas itself writes the inputs and reads the outputs back (the oracle for
what a pandas user sees); the expected values are the frame's own numbers.
"""

from __future__ import annotations

import bz2
import decimal
import gzip
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import bncli


@pytest.fixture
def frame():
    rng = np.random.default_rng(4)
    n = 40
    return pd.DataFrame(
        {
            "count": pd.array(rng.integers(0, 50, n), dtype="Int64"),
            "price": rng.normal(10.0, 2.0, n),
            "name": [f"r{i}" for i in range(n)],
        }
    )


@pytest.mark.parametrize("fmt", ["parquet", "feather"])
def test_pandas_reads_back_what_transform_writes(frame, tmp_path, run_cli, fmt):
    frame.loc[3, "count"] = pd.NA
    path = tmp_path / f"in.{fmt}"
    getattr(frame, f"to_{fmt}")(path)
    assert run_cli("fit", "s.h5", str(path)).exit_code == 0
    assert bncli.load(tmp_path / "s.h5").features == ["count", "price"]
    done = run_cli("transform", "s.h5", str(path), "-o", f"out.{fmt}")
    assert done.exit_code == 0, done.stderr
    back = getattr(pd, f"read_{fmt}")(tmp_path / f"out.{fmt}")
    assert list(back.columns) == ["count", "price", "name"]
    assert back["count"].dtype.kind == "f" and back["count"].isna().sum() == 1
    assert list(back["name"]) == list(frame["name"])


def test_a_pandas_index_is_never_a_channel_and_passes_through(frame, tmp_path, run_cli):
    kept = frame[frame["price"] > 10]  # filtered: the index is not a range
    kept.to_parquet(tmp_path / "in.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "in.parquet").names
    assert run_cli("fit", "s.h5", "in.parquet").exit_code == 0
    assert bncli.load(tmp_path / "s.h5").features == ["count", "price"]
    assert (
        run_cli("transform", "s.h5", "in.parquet", "-o", "out.parquet").exit_code == 0
    )
    back = pd.read_parquet(tmp_path / "out.parquet")
    assert list(back.index) == list(kept.index)


def test_decimal_dictionary_and_named_bool_columns_are_channels(tmp_path):
    values = [1.5, 2.25, -3.0, 4.0]
    table = pa.table(
        {
            "d": pa.array(
                [decimal.Decimal(str(v)) for v in values], pa.decimal128(6, 2)
            ),
            "k": pa.array([1, 2, 1, 3]).dictionary_encode(),
            "flag": pa.array([True, False, True, True]),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    feather.write_feather(table, tmp_path / "t.feather")
    for name in ("t.parquet", "t.feather"):
        layer = bncli.BatchNormalization()
        layer.fit(tmp_path / name, batch_size=4)
        assert layer.features == ["d", "k"], name  # bool: only when named
        named = bncli.BatchNormalization(momentum=0.0)
        named.fit(tmp_path / name, batch_size=4, columns=["d", "k", "flag"])
        np.testing.assert_allclose(named.moving_mean64, [np.mean(values), 1.75, 0.75])


def test_columns_with_commas_or_spaces_as_a_json_list(tmp_path, run_cli):
    table = pa.table(
        {"rev, usd": [1.0, 2.0, 3.0], " padded ": [4.0, 5.0, 6.0], "x": [0.0] * 3}
    )
    pq.write_table(table, tmp_path / "t.parquet")
    names = json.dumps(["rev, usd", " padded "])
    assert run_cli("fit", "s.h5", "t.parquet", "--columns", names).exit_code == 0
    assert bncli.load(tmp_path / "s.h5").features == ["rev, usd", " padded "]
    bad = run_cli("fit", "s2.h5", "t.parquet", "--columns", '["a", 3]')
    assert (
        bad.exit_code == 2
        and "a JSON list of names must hold non-empty strings" in bad.stderr
    )


def test_compressed_csv_reads_as_the_plain_file(tmp_path):
    text = "a,b\n" + "".join(f"{i * 0.5},{-i}\n" for i in range(30))
    (tmp_path / "p.csv").write_text(text)
    (tmp_path / "g.csv.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "b.csv.bz2").write_bytes(bz2.compress(text.encode()))
    with pa.CompressedOutputStream(str(tmp_path / "z.csv.zst"), "zstd") as out:
        out.write(text.encode())
    with pa.CompressedOutputStream(str(tmp_path / "l.csv.lz4"), "lz4") as out:
        out.write(text.encode())
    plain = bncli.BatchNormalization()
    plain.fit(tmp_path / "p.csv", batch_size=7)
    for name in ("g.csv.gz", "b.csv.bz2", "z.csv.zst", "l.csv.lz4"):
        layer = bncli.BatchNormalization()
        layer.fit(tmp_path / name, batch_size=7)
        np.testing.assert_array_equal(layer.moving_mean64, plain.moving_mean64)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "g.csv.gz").write_bytes((tmp_path / "g.csv.gz").read_bytes())
    layer = bncli.BatchNormalization()
    layer.fit(folder, batch_size=7)  # a folder's compressed CSV is found
    np.testing.assert_array_equal(layer.moving_mean64, plain.moving_mean64)


def test_csv_nan_and_inf_are_numbers_and_empty_cells_nulls(tmp_path, run_cli):
    (tmp_path / "c.csv").write_text("a,b\n1,NaN\n2,inf\n3,\n4,5\n")
    strict = run_cli("fit", "s.h5", "c.csv")
    assert strict.exit_code == 3
    assert strict.stderr.startswith("error: c.csv: column 'b', row 0: NaN in a channel")
    masked = run_cli(
        "fit", "s.h5", "c.csv", "--nan-policy", "mask", "--batch-size", "4"
    )
    assert masked.exit_code == 0
    layer = bncli.load(tmp_path / "s.h5")
    # b: NaN and inf masked, the empty cell a null: only 5 counts.
    assert layer.moving_mean64[1] == pytest.approx(0.99 * 0.0 + 0.01 * 5.0)


# ------------------------------------------------------------------- stdin


@pytest.mark.parametrize("fmt", ["parquet", "feather", "csv", "arrows", "npy"])
def test_stdin_is_told_by_its_first_bytes(tmp_path, run_cli, fmt):
    x = np.random.default_rng(6).normal(size=(30, 2))
    table = pa.table({"a": x[:, 0], "b": x[:, 1]})
    path = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "feather":
        feather.write_feather(table, path)
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    elif fmt == "arrows":
        with pa.ipc.new_stream(str(path), table.schema) as writer:
            writer.write_table(table)
    else:
        np.save(path, x)
    done = run_cli("fit", "s.h5", "-", "--batch-size", "10", input=path.read_bytes())
    assert done.exit_code == 0, done.stderr
    from_file = bncli.BatchNormalization()
    from_file.fit(path, batch_size=10)
    np.testing.assert_allclose(
        bncli.load(tmp_path / "s.h5").moving_mean64, from_file.moving_mean64
    )


def test_unrecognized_stdin_is_exit_3_naming_what_it_saw(run_cli):
    done = run_cli("fit", "s.h5", "-", input=b"\x1f\x8b\x08\x00binary\x00")
    assert done.exit_code == 3
    assert done.stderr == (
        "error: -: unrecognized data on stdin (first bytes: 1f 8b 08 00 62 69 6e 61); "
        "bncli reads an Arrow IPC stream or file, Parquet, NPY or CSV\n"
    )


@pytest.mark.slow
def test_parquet_piped_through_a_real_process(tmp_path):
    import subprocess
    import sys

    pq.write_table(pa.table({"a": np.arange(20.0)}), tmp_path / "in.parquet")
    with open(tmp_path / "in.parquet", "rb") as stdin:
        done = subprocess.run(
            [sys.executable, "-m", "bncli", "fit", "s.h5", "-", "-q"],
            stdin=stdin,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert bncli.load(tmp_path / "s.h5").samples_seen == 20
    leftovers = list((tmp_path).glob("bncli-stdin-*"))
    assert leftovers == []


@pytest.mark.parametrize("suffix", [".csv.gz", ".csv.bz2", ".csv.zst", ".csv.lz4"])
def test_compressed_csv_outputs(tmp_path, run_cli, suffix):
    text = "a,b\n" + "".join(f"{i * 0.5},{-i}\n" for i in range(30))
    (tmp_path / "p.csv").write_text(text)
    assert run_cli("fit", "s.h5", "p.csv").exit_code == 0
    done = run_cli("transform", "s.h5", "p.csv", "-o", f"y{suffix}")
    assert done.exit_code == 0, done.stderr
    assert run_cli("transform", "s.h5", "p.csv", "-o", "y.csv").exit_code == 0
    import pyarrow.csv as pacsv

    with pa.input_stream(str(tmp_path / f"y{suffix}"), compression="detect") as f:
        compressed = pacsv.read_csv(f)
    assert compressed.equals(pacsv.read_csv(tmp_path / "y.csv"))
    raw = (tmp_path / f"y{suffix}").read_bytes()
    assert raw[:4] != b"a,b\n"[:4]  # not plain text


def _csv_with(tmp_path, name, rows, bad_row, bad_line):
    """A CSV of ``rows`` rows (``a`` int, ``b`` float, ``c`` text), one line replaced."""
    rng = np.random.default_rng(1)
    b = np.round(rng.normal(size=rows), 6)
    lines = ["a,b,c", *(f"{i},{v},q{i % 7}" for i, v in enumerate(b))]
    lines[bad_row + 1] = bad_line
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("rows", "bad_row"),
    [(300, 10), (300, 0), (300, 299), (700_000, 650_000)],
    ids=["small", "first-row", "last-row", "after-the-first-8-MiB"],
)
def test_csv_non_numbers_name_their_row_whatever_the_size(
    tmp_path, run_cli, rows, bad_row
):
    path = _csv_with(tmp_path, "d.csv", rows, bad_row, "7,?,q")
    if rows > 1000:
        assert path.stat().st_size > 8 << 20  # past pyarrow's first block
    done = run_cli("fit", "s.h5", "d.csv")
    assert done.exit_code == 3
    hint = "; --exclude b if it is not a channel" if rows < 1000 else ""
    assert (
        done.stderr
        == f"error: d.csv: column 'b', row {bad_row}: '?' is not a number{hint}\n"
    )
    named = run_cli("fit", "s.h5", "d.csv", "--columns", "a,b")
    assert named.exit_code == 3
    assert f"column 'b', row {bad_row}: '?' is not a number" in named.stderr
    # Not a channel: the column is never parsed by the fit.
    assert run_cli("fit", "s.h5", "d.csv", "--exclude", "b").exit_code == 0


def test_a_text_column_is_no_channel_and_a_float_in_an_integer_column_is_named(
    tmp_path, run_cli
):
    # ``c`` holds text, a few cells of which are numbers: not a column of numbers.
    path = _csv_with(tmp_path, "t.csv", 300, 5, "5,0.5,12")
    done = run_cli("fit", "s.h5", "t.csv")
    assert done.exit_code == 0, done.stderr
    assert bncli.load(tmp_path / "s.h5").features == ["a", "b"]
    assert pd.read_csv(path).shape == (300, 3)
    _csv_with(tmp_path, "i.csv", 700_000, 650_000, "7.5,0.5,q")
    late = run_cli("fit", "i.h5", "i.csv")
    assert late.exit_code == 3
    assert late.stderr == (
        "error: i.csv: column 'a', row 650000: '7.5' is not an integer "
        "(the column is int64, as its first 8 MiB said)\n"
    )
    assert run_cli("fit", "i.h5", "i.csv", "--columns", "b").exit_code == 0


@pytest.mark.slow
def test_csv_row_errors_through_a_real_process(tmp_path):
    import subprocess
    import sys

    _csv_with(tmp_path, "d.csv", 300, 42, "7,oops,q")
    gz = tmp_path / "d.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "d.csv").read_bytes()))
    done = subprocess.run(
        [sys.executable, "-m", "bncli", "fit", "s.h5", "d.csv.gz"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3
    assert done.stderr == (
        "error: d.csv.gz: column 'b', row 42: 'oops' is not a number; "
        "--exclude b if it is not a channel\n"
    )


# ------------------------------------------------------------ NPZ archives


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, (500, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "one.npz", data=x)
    np.savez_compressed(tmp_path / "two.npz", x=x, y=x[:, :2] * 2)
    return x


@pytest.mark.parametrize(
    ("name", "array"), [("one.npz", None), ("two.npz", "x")], ids=["stored", "deflated"]
)
def test_an_npz_array_fits_and_transforms_as_the_npy_of_it(
    tmp_path, run_cli, arrays, name, array
):
    assert run_cli("fit", "ref.h5", "x.npy").exit_code == 0
    assert run_cli("transform", "ref.h5", "x.npy", "-o", "ref.npy").exit_code == 0
    chosen = ["--array", array] if array else []
    done = run_cli("fit", "s.h5", name, *chosen)
    assert done.exit_code == 0, done.stderr
    ref, got = bncli.load(tmp_path / "ref.h5"), bncli.load(tmp_path / "s.h5")
    np.testing.assert_array_equal(got.moving_mean64, ref.moving_mean64)
    np.testing.assert_array_equal(got.moving_variance64, ref.moving_variance64)
    out = run_cli("transform", "s.h5", name, *chosen, "-o", "y.npy")
    assert out.exit_code == 0, out.stderr
    np.testing.assert_array_equal(
        np.load(tmp_path / "y.npy"), np.load(tmp_path / "ref.npy")
    )
    piped = run_cli("fit", "p.h5", "-", *chosen, input=(tmp_path / name).read_bytes())
    assert piped.exit_code == 0, piped.stderr
    np.testing.assert_array_equal(
        bncli.load(tmp_path / "p.h5").moving_mean64, ref.moving_mean64
    )


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["two.npz"], 2, "error: two.npz: the archive holds 2 arrays (x, y); choose one with --array NAME\n"),
        (["two.npz", "--array", "z"], 2, "error: two.npz: --array z: no such array in the archive (arrays: x, y)\n"),
        (["x.npy", "--array", "x"], 2, "error: --array chooses an array of .npz inputs; there is none\n"),
        (["bad.npz"], 3, "error: bad.npz: corrupt NPZ archive (File is not a zip file)\n"),
        (["empty.npz"], 3, "error: empty.npz: the archive holds no NPY arrays\n"),
        (["lying.npz"], 3, "error: lying.npz: truncated NPZ member x.npy: its header claims 1,600,000 bytes (shape (1000, 200)), the member holds 800\n"),
        (["objects.npz"], 3, "error: objects.npz: NPY array of Python objects (would need pickle, which bncli never loads)\n"),
    ],
)  # fmt: skip
def test_npz_errors(tmp_path, run_cli, arrays, args, code, message):
    import io
    import zipfile

    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with zipfile.ZipFile(tmp_path / "empty.npz", "w") as z:
        z.writestr("readme.txt", "no arrays")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (1000, 200)}
    )
    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as z:
        z.writestr("x.npy", header.getvalue() + b"\x00" * 800)
    with zipfile.ZipFile(tmp_path / "objects.npz", "w") as z:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.array([[1, "a"]], dtype=object))
        z.writestr("x.npy", buffer.getvalue())
    done = run_cli("fit", "s.h5", *args)
    assert (done.exit_code, done.stderr) == (code, message)


# ----------------------------------------------------------- --delimiter


def test_a_delimiter_reads_and_writes_csv_alike(tmp_path, run_cli):
    rng = np.random.default_rng(8)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"])
    frame["note"] = "x, y"  # a comma inside a field of a semicolon file
    frame.to_csv(tmp_path / "comma.csv", index=False)
    frame.to_csv(tmp_path / "semi.csv", index=False, sep=";")
    frame.to_csv(tmp_path / "tabs.csv.gz", index=False, sep="\t")
    assert run_cli("fit", "ref.h5", "comma.csv").exit_code == 0
    ref = bncli.load(tmp_path / "ref.h5")
    for name, delimiter in [
        ("semi.csv", ";"),
        ("tabs.csv.gz", "\\t"),
        ("tabs.csv.gz", "tab"),
    ]:
        done = run_cli("fit", f"{delimiter}.h5", name, "--delimiter", delimiter)
        assert done.exit_code == 0, done.stderr
        got = bncli.load(tmp_path / f"{delimiter}.h5")
        assert got.features == ["a", "b", "c"]
        np.testing.assert_allclose(got.moving_mean64, ref.moving_mean64, rtol=1e-12)
    out = run_cli("transform", ";.h5", "semi.csv", "--delimiter", ";", "-o", "y.csv")
    assert out.exit_code == 0, out.stderr
    back = pd.read_csv(tmp_path / "y.csv", sep=";")
    assert list(back.columns) == ["a", "b", "c", "note"]
    assert (back["note"] == "x, y").all()
    wrong = run_cli("fit", "w.h5", "semi.csv")
    assert wrong.exit_code == 3
    assert wrong.stderr.startswith(
        "error: semi.csv: cannot read as csv (CSV parse error"
    )
    assert wrong.stderr.endswith("; its header is split by ';': give --delimiter ';'\n")
    (tmp_path / "plain.csv").write_text("a;b\n1;2\n")
    alone = run_cli("fit", "w.h5", "plain.csv")
    assert (alone.exit_code, alone.stderr) == (
        3,
        "error: plain.csv: one column only, named 'a;b'; its header is split by "
        "';': give --delimiter ';'\n",
    )
    bad = run_cli("fit", "w.h5", "semi.csv", "--delimiter", ";;")
    assert bad.exit_code == 2
    assert bad.stderr == (
        "error: --delimiter must be one character (not a quote or a line end), got ';;'\n"
    )
    # The Python API reads alike: BatchNormalization.fit(delimiter=, array=)
    api = bncli.BatchNormalization()
    api.fit(tmp_path / "tabs.csv.gz", delimiter="tab")
    assert api.features == ["a", "b", "c"]
    np.testing.assert_allclose(api.moving_mean64, ref.moving_mean64, rtol=1e-12)
    with pytest.raises(bncli.errors.UsageError, match="one character"):
        bncli.BatchNormalization().fit(tmp_path / "semi.csv", delimiter=";;")
    np.savez(tmp_path / "two.npz", x=frame[["a", "b", "c"]].to_numpy(), y=np.ones(4))
    npz = bncli.BatchNormalization()
    npz.fit(tmp_path / "two.npz", array="x")
    np.testing.assert_allclose(npz.moving_mean64, ref.moving_mean64, rtol=1e-12)


@pytest.mark.dask
@pytest.mark.slow
def test_dask_workers_read_npz_and_delimited_csv_as_the_local_engine(
    tmp_path, scheduler, arrays
):
    from bncli.engines.base import FitOptions, TransformOptions
    from bncli.io.sources import ReadOptions
    from bncli.workflows import fit_state, transform_state

    read = ReadOptions(array="x")
    for engine in ("local", "dask"):
        fit_state(
            tmp_path / f"{engine}.h5",
            [tmp_path / "two.npz"],
            FitOptions(read=read),
            engine=engine,
            scheduler=scheduler if engine == "dask" else None,
        )
    local, dask = (bncli.load(tmp_path / f"{e}.h5") for e in ("local", "dask"))
    np.testing.assert_allclose(dask.moving_mean64, local.moving_mean64, rtol=1e-12)
    frame = pd.DataFrame(arrays, columns=list("abcd"))
    frame.to_csv(tmp_path / "semi.csv", index=False, sep=";")
    semi = ReadOptions(delimiter=";")
    fit_state(tmp_path / "c.h5", [tmp_path / "semi.csv"], FitOptions(read=semi))
    for engine in ("local", "dask"):
        transform_state(
            tmp_path / "c.h5",
            [tmp_path / "semi.csv"],
            tmp_path / f"{engine}.csv",
            TransformOptions(read=semi),
            engine=engine,
            scheduler=scheduler if engine == "dask" else None,
        )
    assert (tmp_path / "dask.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert (tmp_path / "dask.csv").read_text().startswith('"a";"b";"c";"d"\n')


# ------------------------------------------------------ Hive partition keys


@pytest.fixture
def hive(tmp_path):
    """A dataset partitioned by pyarrow as Hive does: ``year=/region=`` folders."""
    import pyarrow.dataset as ds

    rng = np.random.default_rng(4)
    table = pa.table(
        {
            "year": [2023] * 60 + [2024] * 60,
            "region": ["eu", "us", "a/b", None] * 30,
            "v": rng.normal(size=120),
            "w": rng.normal(size=120),
        }
    )
    ds.write_dataset(
        table,
        tmp_path / "sales",
        format="parquet",
        partitioning=["year", "region"],
        partitioning_flavor="hive",
    )
    return table


def test_hive_keys_are_columns_that_pass_through_transform(tmp_path, run_cli, hive):
    import pyarrow.dataset as ds

    done = run_cli("fit", "s.h5", "sales")
    assert done.exit_code == 0, done.stderr
    assert bncli.load(tmp_path / "s.h5").features == ["v", "w"]  # keys: no channels
    out = run_cli("transform", "s.h5", "sales", "-o", "y.parquet")
    assert out.exit_code == 0, out.stderr
    got = pq.read_table(tmp_path / "y.parquet")
    assert got.schema.names == ["v", "w", "year", "region"]
    # Each row keeps its partition: the same rows, keyed as pyarrow reads them.
    expected = ds.dataset(tmp_path / "sales", partitioning="hive").to_table()
    pairs = sorted(
        zip(got["year"].to_pylist(), got["region"].to_pylist(), strict=True), key=str
    )
    want = sorted(
        zip(
            [str(y) for y in expected["year"].to_pylist()],
            expected["region"].to_pylist(),
            strict=True,
        ),
        key=str,
    )
    assert pairs == want
    assert {"a/b", None} <= set(got["region"].to_pylist())  # %2F decoded; Hive's null
    assert len(pd.read_parquet(tmp_path / "y.parquet")) == 120
    named = run_cli("fit", "k.h5", "sales", "--columns", "v,year")
    assert named.exit_code == 3
    assert "column 'year': column is not numeric (type string)" in named.stderr
    # Below the folder given only: year=2023 given, its region folders are keys.
    part = run_cli("transform", "s.h5", "sales/year=2023", "-o", "p.parquet")
    assert part.exit_code == 0, part.stderr
    assert pq.read_table(tmp_path / "p.parquet").schema.names == ["v", "w", "region"]


def test_a_files_own_column_wins_over_a_key_of_its_name(tmp_path, run_cli):
    folder = tmp_path / "d" / "v=folder"
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table({"v": [1.0, 2.0, 3.0], "w": [0.5, 1.5, 2.5]}), folder / "p.parquet"
    )
    assert run_cli("fit", "s.h5", "d").exit_code == 0
    assert bncli.load(tmp_path / "s.h5").features == ["v", "w"]


@pytest.mark.dask
@pytest.mark.slow
def test_dask_workers_keep_the_hive_keys(tmp_path, scheduler, hive):
    from bncli.engines.base import FitOptions
    from bncli.workflows import fit_state, transform_state

    fit_state(tmp_path / "s.h5", [tmp_path / "sales"], FitOptions())
    for engine in ("local", "dask"):
        transform_state(
            tmp_path / "s.h5",
            [tmp_path / "sales"],
            tmp_path / f"{engine}.parquet",
            **(
                {"engine": "dask", "scheduler": scheduler, "single_file": True}
                if engine == "dask"
                else {}
            ),
        )
    local = pq.read_table(tmp_path / "local.parquet")
    assert pq.read_table(tmp_path / "dask.parquet").equals(local)


def test_parquet_outputs_gather_chunks_into_row_groups_of_8_mib(tmp_path, run_cli):
    """A row group per chunk made files of thousands of 16Ki-row groups:
    the output's groups hold ~8 MiB (16 B a row here: 512Ki rows), the
    outputs they keep pending are never reused for later chunks, and a null
    stays a null in whichever group it falls."""
    from bncli.io.sinks import TableSink

    n, rows_per_group = 1_200_000, TableSink.ROW_GROUP_BYTES // 16
    rng = np.random.default_rng(11)
    x = rng.normal(3.0, 2.0, size=(n, 4)).astype(np.float32)
    nulls = np.zeros(n, dtype=bool)
    nulls[[5, rows_per_group + 7, n - 1]] = True
    columns = {
        f"c{j}": pa.array(x[:, j], mask=nulls if j == 2 else None) for j in range(4)
    }
    pq.write_table(pa.table(columns), tmp_path / "in.parquet", row_group_size=300_000)
    assert run_cli("fit", "s.h5", "in.parquet", "--quiet").exit_code == 0
    done = run_cli("transform", "s.h5", "in.parquet", "-o", "out.parquet", "--quiet")
    assert done.exit_code == 0, done.stderr
    meta = pq.read_metadata(tmp_path / "out.parquet")
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes == [rows_per_group, rows_per_group, n - 2 * rows_per_group]
    # The values: the plain formula in float64 from the saved state.
    state = bncli.load(tmp_path / "s.h5")
    mean = np.asarray(state.moving_mean, dtype=np.float64)
    var = np.asarray(state.moving_variance, dtype=np.float64)
    expected = (x - mean) / np.sqrt(var + state.epsilon)
    back = pq.read_table(tmp_path / "out.parquet")
    for j in range(4):
        column = back.column(f"c{j}")
        got = column.to_numpy(zero_copy_only=False)
        if j == 2:
            assert column.null_count == 3
            assert np.isnan(got[nulls]).all()
        keep = ~nulls if j == 2 else slice(None)
        np.testing.assert_allclose(got[keep], expected[keep, j], rtol=2e-6, atol=2e-6)
