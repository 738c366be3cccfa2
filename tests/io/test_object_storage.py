"""Inputs in object storage: ``s3://`` URLs against a local S3 server.

The tests start moto's server on 127.0.0.1 themselves (a dev extra) and put
the objects there with pyarrow; every fit from a URL must equal the same fit
from the local file. The server is stopped at the end of the module.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import bncli

N = 300


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A local S3 server holding a bucket of data, and the same data in files."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    folder = tmp_path_factory.mktemp("s3-local")
    x = np.random.default_rng(9).normal(3.0, 2.0, (N, 3))
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})
    np.save(folder / "x.npy", x)
    np.savez(folder / "x.npz", x=x)
    np.savez_compressed(folder / "xc.npz", x=x)
    pq.write_table(table.slice(0, 200), folder / "p1.parquet", row_group_size=50)
    pq.write_table(table.slice(200), folder / "p2.parquet", row_group_size=50)
    pacsv.write_csv(table, folder / "t.csv")
    store = fs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True)
    store.create_dir("data")
    for name in ("x.npy", "x.npz", "xc.npz", "p1.parquet", "p2.parquet", "t.csv"):
        key = f"data/{'parts/' if name.startswith('p') else ''}{name}"
        with store.open_output_stream(key) as out:
            out.write((folder / name).read_bytes())
    with store.open_output_stream("data/parts/_SUCCESS") as out:
        out.write(b"")
    yield {"folder": folder, "x": x}
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
)


def _fit(*inputs, **options):
    layer = bncli.BatchNormalization()
    layer.fit(list(inputs), batch_size=16, **options)
    return layer


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("s3://data/x.npy", ["x.npy"]),
        ("s3://data/x.npz", ["x.npy"]),
        ("s3://data/xc.npz", ["x.npy"]),
        ("s3://data/t.csv", ["t.csv"]),
        ("s3://data/parts/", ["p1.parquet", "p2.parquet"]),
        ("s3://data/parts", ["p1.parquet", "p2.parquet"]),
    ],
)
def test_a_fit_from_s3_equals_the_fit_from_files(s3, url, local):
    from_url = _fit(url)
    from_files = _fit(*(s3["folder"] / name for name in local))
    np.testing.assert_array_equal(from_url.moving_mean64, from_files.moving_mean64)
    np.testing.assert_array_equal(
        from_url.moving_variance64, from_files.moving_variance64
    )
    assert from_url.samples_seen == N


def test_the_cli_reads_urls_and_transforms_them_to_a_local_file(s3, tmp_path, run_cli):
    done = run_cli("fit", "s.h5", "s3://data/parts/", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["samples"] == N
    out = run_cli("transform", "s.h5", "s3://data/parts/", "-o", "y.parquet")
    assert out.exit_code == 0, out.stderr
    assert pq.read_table(tmp_path / "y.parquet").num_rows == N


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["fit", "s.h5", "s3://data/missing.parquet"], 3, "error: s3://data/missing.parquet: no such file or object\n"),
        (["fit", "s3://data/state.h5", "s3://data/x.npy"], 2, "error: s3://data/state.h5: a state is a local file, not a URL"),
        (["inspect", "s3://data/state.h5"], 2, "a state is a local file, not a URL"),
        (["transform", "s.h5", "s3://data/x.npy", "-o", "s3://data/x.npy", "--overwrite"], 2, "error: s3://data/x.npy: the output is one of the inputs (s3://data/x.npy)"),
        (["transform", "s.h5", "x.npy", "-o", "s3://data/x.npy"], 2, "error: s3://data/x.npy: output exists; pass --overwrite to replace it"),
        (["transform", "s.h5", "x.npy", "-o", "s3://data/parts"], 2, "error: s3://data/parts: is a prefix (a folder of objects); the output is one object"),
        (["transform", "s.h5", "x.npy", "-o", "s3://nobucket/y.npy"], 2, "error: s3://nobucket/y.npy: the output's bucket or folder s3://nobucket does not exist"),
        (["export", "s.h5", "s3://data/m.keras"], 2, "error: s3://data/m.keras: this output is a local file, not a URL"),
        (["transform", "s.h5", "x.npy", "-o", "s3://data/new/y.parquet", "--engine", "dask"], 2, "error: s3://data/new/y.parquet: --engine dask writes Parquet to a URL as one object; give --single-file"),
    ],
)  # fmt: skip
def test_url_errors_name_the_url(s3, tmp_path, run_cli, args, code, message):
    np.save(tmp_path / "x.npy", s3["x"])
    assert run_cli("fit", "s.h5", "x.npy").exit_code == 0
    result = run_cli(*args)
    assert result.exit_code == code, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.dask
@pytest.mark.slow
def test_dask_workers_open_the_urls_themselves(s3):
    """A cluster of its own, started with the server's address in its environment."""
    from bncli.engines import dask_engine
    from bncli.engines.base import FitOptions

    layer = bncli.BatchNormalization()
    dask_engine.fit_layer(
        layer, ["s3://data/parts/"], FitOptions(batch_size=16, workers=2), tasks=4
    )
    local = _fit(s3["folder"] / "p1.parquet", s3["folder"] / "p2.parquet")
    np.testing.assert_allclose(layer.moving_mean64, local.moving_mean64, rtol=1e-12)


def _store():
    from pyarrow import fs

    return fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"])


def _multipart_uploads(bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


@pytest.mark.parametrize("name", ["y.parquet", "y.npy", "y.csv.gz", "y.arrow"])
def test_a_transform_to_a_url_uploads_what_a_local_output_holds(
    s3, tmp_path, run_cli, name
):
    np.save(tmp_path / "x.npy", s3["x"])
    assert run_cli("fit", "s.h5", "x.npy").exit_code == 0
    local = run_cli("transform", "s.h5", "x.npy", "-o", name)
    assert local.exit_code == 0, local.stderr
    url = f"s3://data/out-{tmp_path.name}/{name}"
    remote = run_cli("transform", "s.h5", "x.npy", "-o", url)
    assert remote.exit_code == 0, remote.stderr
    with _store().open_input_stream(url.removeprefix("s3://")) as f:
        uploaded = f.read()
    if name.endswith(".gz"):  # gzip's header holds a time stamp
        import gzip

        assert gzip.decompress(uploaded) == gzip.decompress(
            (tmp_path / name).read_bytes()
        )
    else:
        assert uploaded == (tmp_path / name).read_bytes()
    again = run_cli("transform", "s.h5", "x.npy", "-o", url, "--overwrite")
    assert again.exit_code == 0, again.stderr


def test_a_failed_transform_leaves_nothing_under_the_url(s3, tmp_path, run_cli):
    """A NaN far into the input fails the command after rows were written."""
    x = np.random.default_rng(3).normal(size=(200_000, 3))
    np.save(tmp_path / "fit.npy", x[:1000])
    x[-1, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    assert run_cli("fit", "s.h5", "fit.npy").exit_code == 0
    url = f"s3://data/failed-{tmp_path.name}/y.parquet"
    done = run_cli("transform", "s.h5", "x.npy", "-o", url)
    assert done.exit_code == 3, done.stderr
    assert "NaN" in done.stderr
    from pyarrow import fs

    listed = _store().get_file_info(fs.FileSelector("data", recursive=True))
    assert not [e.path for e in listed if f"failed-{tmp_path.name}" in e.path]
    assert _multipart_uploads("data") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.npy", "s.h5", "x.npy"]


def test_the_python_api_and_a_real_process_write_urls(s3, tmp_path):
    import subprocess
    import sys

    from bncli.workflows import transform_state

    np.save(tmp_path / "x.npy", s3["x"])
    layer = _fit(tmp_path / "x.npy")
    layer.save(tmp_path / "s.h5")
    url = f"s3://data/api-{tmp_path.name}/y.npy"
    summary = transform_state(tmp_path / "s.h5", [tmp_path / "x.npy"], url)
    assert summary.samples == N
    with _store().open_input_stream(url.removeprefix("s3://")) as f:
        import io

        y = np.load(io.BytesIO(f.read()))
    expected = (s3["x"] - layer.moving_mean64) / np.sqrt(layer.moving_variance64 + 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    process = subprocess.run(
        [sys.executable, "-m", "bncli", "transform", str(tmp_path / "s.h5"), str(tmp_path / "x.npy"), "-o", url],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert process.returncode == 2
    assert (
        process.stderr
        == f"error: {url}: output exists; pass --overwrite to replace it\n"
    )


@pytest.mark.dask
@pytest.mark.slow
def test_dask_joins_its_parts_into_one_uploaded_object(s3, tmp_path, scheduler):
    from bncli.workflows import transform_state

    np.save(tmp_path / "x.npy", s3["x"])
    _fit(tmp_path / "x.npy").save(tmp_path / "s.h5")
    url = f"s3://data/dask-{tmp_path.name}/y.parquet"
    transform_state(
        tmp_path / "s.h5", [tmp_path / "x.npy"], url, engine="dask", scheduler=scheduler, single_file=True
    )  # fmt: skip
    transform_state(tmp_path / "s.h5", [tmp_path / "x.npy"], tmp_path / "y.parquet")
    with _store().open_input_file(url.removeprefix("s3://")) as f:
        remote = pq.read_table(f)
    assert remote.equals(pq.read_table(tmp_path / "y.parquet"))


def test_hive_keys_of_a_prefix_are_columns(s3, tmp_path, run_cli):
    store = _store()
    table = pa.table({"v": s3["x"][:, 0], "w": s3["x"][:, 1]})
    for year, piece in (("2023", table.slice(0, 100)), ("2024", table.slice(100))):
        with store.open_output_stream(f"data/sales/year={year}/p.parquet") as out:
            pq.write_table(piece, out)
    assert run_cli("fit", "s.h5", "s3://data/sales").exit_code == 0
    done = run_cli("transform", "s.h5", "s3://data/sales/", "-o", "y.parquet")
    assert done.exit_code == 0, done.stderr
    years = pq.read_table(tmp_path / "y.parquet")["year"].to_pylist()
    assert years == ["2023"] * 100 + ["2024"] * 200


def test_a_file_url_output_is_a_local_file_renamed_into_place(tmp_path, run_cli):
    np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(50, 3)))
    assert run_cli("fit", "s.h5", "x.npy").exit_code == 0
    url = f"file://{tmp_path}/y.npy"
    done = run_cli("transform", "s.h5", "x.npy", "-o", url)
    assert done.exit_code == 0, done.stderr
    assert np.load(tmp_path / "y.npy").shape == (50, 3)
    again = run_cli("transform", "s.h5", "x.npy", "-o", url)
    assert (again.exit_code, again.stderr) == (
        2,
        f"error: {url}: output exists; pass --overwrite to replace it\n",
    )
    itself = run_cli(
        "transform",
        "s.h5",
        f"file://{tmp_path}/x.npy",
        "-o",
        url.replace("y.npy", "x.npy"),
        "--overwrite",
    )
    assert itself.exit_code == 2
    assert "the output is one of the inputs" in itself.stderr
