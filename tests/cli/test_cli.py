"""The commands through click's CliRunner (in-process) and one real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bncli
from tests.conftest import PRECISE

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"
DOCUMENTED_KEYS = [
    "config",
    "variables",
    "features",
    "progress",
    "initializer_share",
    "regularization",
    "statistics",
    "convergence",
]


@pytest.fixture
def table(tmp_path):
    rng = np.random.default_rng(7)
    n = 100
    a = rng.normal(10, 3, n)
    nulls = np.zeros(n, bool)
    nulls[[4, 50]] = True
    t = pa.table(
        {
            "id": np.arange(n),
            "a": pa.array(a, mask=nulls),
            "b": rng.normal(-2, 0.5, n).astype(np.float32),
            "label": [f"x{i}" for i in range(n)],
        }
    )
    pq.write_table(t, tmp_path / "t.parquet", row_group_size=30)
    return t


def test_fit_transform_inspect_on_a_table(run_cli, tmp_path, table):
    r = run_cli(
        "fit",
        "s.h5",
        "t.parquet",
        "--exclude",
        "id",
        "--momentum",
        "0.6",
        "--batch-size",
        "16",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["batches"] == 7 and summary["samples"] == 100
    assert isinstance(summary["seconds"], float)

    r = run_cli("inspect", "s.h5", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert list(doc) == DOCUMENTED_KEYS
    assert doc["features"] == ["a", "b"]
    assert doc["progress"] == {"batches_seen": 7, "samples_seen": 100, "epochs": 1}
    assert doc["initializer_share"] == pytest.approx(0.6**7, rel=1e-14)
    assert doc["regularization"] == {"gamma": 0.0, "beta": 0.0}
    assert list(doc["variables"]) == ["gamma", "beta", "moving_mean", "moving_variance"]
    # Floats at full precision: they read back equal to the state.
    state = bncli.load(tmp_path / "s.h5")
    assert np.array_equal(
        np.float32(doc["variables"]["moving_mean"]), state.moving_mean
    )

    r = run_cli("transform", "s.h5", "t.parquet", "-o", "out.parquet")
    assert r.exit_code == 0, r.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column_names == table.column_names
    assert out["id"].equals(table["id"]) and out["label"].equals(table["label"])
    assert out["a"].null_count == 2 and out["a"].is_null().equals(table["a"].is_null())
    assert out["a"].type == pa.float32()
    b = table["b"].to_numpy().astype(np.float64)
    expected = (b - state.moving_mean64[1]) / np.sqrt(state.moving_variance64[1] + 1e-3)
    np.testing.assert_allclose(out["b"].to_numpy(), expected, rtol=1e-6, atol=1e-6)

    r = run_cli("inspect", "s.h5")
    assert r.exit_code == 0
    assert "moving mean" in r.stdout and "a" in r.stdout
    assert "warning: the initializers still weigh" in r.stderr  # 0.6**7 > 1%


def test_continuing_fit_takes_options_from_the_state(run_cli, tmp_path, table):
    assert (
        run_cli(
            "fit", "s.h5", "t.parquet", "--columns", "b,a", "--momentum", "0.9"
        ).exit_code
        == 0
    )
    r = run_cli("fit", "s.h5", "t.parquet", "--json")
    assert r.exit_code == 0, r.stderr
    state = bncli.load(tmp_path / "s.h5")
    assert state.features == ["b", "a"] and state.momentum == 0.9
    assert state.batches_seen == 8 and state.samples_seen == 200
    r = run_cli("fit", "s.h5", "t.parquet", "--momentum", "0.8")
    assert r.exit_code == 4
    assert "--momentum 0.8 contradicts the state's momentum 0.9" in r.stderr


def test_transform_training_leaves_the_state_alone(run_cli, tmp_path):
    x = np.random.default_rng(2).normal(5, 2, size=(40, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert run_cli("fit", "s.h5", "x.npy").exit_code == 0
    before = (tmp_path / "s.h5").read_bytes()
    r = run_cli(
        "transform", "s.h5", "x.npy", "-o", "y.npy", "--training", "--batch-size", "8"
    )
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "s.h5").read_bytes() == before
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32 and y.shape == x.shape
    batches = x.astype(np.float64).reshape(5, 8, 3)
    expected = (batches - batches.mean(1, keepdims=True)) / np.sqrt(
        batches.var(1, keepdims=True) + 1e-3
    )
    np.testing.assert_allclose(y, expected.reshape(40, 3), rtol=1e-5, atol=1e-5)


def test_image_tensor_channel_axis(run_cli, tmp_path):
    x = np.load(SAMPLE / "images.npy")
    r = run_cli(
        "fit", "s.h5", SAMPLE / "images.npy", "--momentum", "0", "--batch-size", "256"
    )
    assert r.exit_code == 0, r.stderr
    state = bncli.load(tmp_path / "s.h5")
    np.testing.assert_allclose(
        state.moving_mean64, x.astype(np.float64).mean((0, 1, 2)), **PRECISE
    )
    assert state.sample_shape == (8, 8, 3)
    r = run_cli("transform", "s.h5", SAMPLE / "images.npy", "-o", "y.npy")
    assert r.exit_code == 0 and np.load(tmp_path / "y.npy").shape == (256, 8, 8, 3)


def test_freeze_unfreeze(run_cli, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    run_cli("fit", "s.h5", "x.npy")
    assert run_cli("freeze", "s.h5").exit_code == 0
    assert bncli.load(tmp_path / "s.h5").trainable is False
    r = run_cli("fit", "s.h5", "x.npy")
    assert r.exit_code == 4 and "bncli unfreeze" in r.stderr
    assert run_cli("unfreeze", "s.h5").exit_code == 0
    assert run_cli("fit", "s.h5", "x.npy").exit_code == 0


def test_set_values_and_constraints(run_cli, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 3)))
    run_cli("fit", "s.h5", "x.npy", "--gamma-constraint", "non_neg")
    np.save(tmp_path / "mm.npy", np.array([1.0, 2.0, 3.0]))
    r = run_cli("set", "s.h5", "--gamma", "-1,2,3", "--moving-mean", "mm.npy")
    assert r.exit_code == 0, r.stderr
    state = bncli.load(tmp_path / "s.h5")
    np.testing.assert_array_equal(state.gamma, [0, 2, 3])
    np.testing.assert_array_equal(state.moving_mean64, [1, 2, 3])
    before = (tmp_path / "s.h5").read_bytes()
    r = run_cli("set", "s.h5", "--beta", "1,2")
    assert r.exit_code == 2 and "2 values given, the state has 3 channels" in r.stderr
    assert (tmp_path / "s.h5").read_bytes() == before


def test_usage_errors_are_one_line(run_cli):
    for args in (
        ["fit"],
        ["fit", "s.h5", "x.npy", "--bogus"],
        ["nosuchcommand"],
        ["fit", "s.h5", "x", "--batch-size", "0"],
    ):
        r = run_cli(*args)
        assert r.exit_code == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
        assert "Usage:" not in r.stderr


def test_drift_and_html(run_cli, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(0, 1, (512, 2)))
    np.save(tmp_path / "b.npy", rng.normal([0, 3], 1, (512, 2)))
    run_cli("fit", "s.h5", "a.npy", "--momentum", "0")
    r = run_cli("inspect", "s.h5", "--data", "a.npy", "--fail-on-drift", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["drift"]["drift"] is False
    r = run_cli(
        "inspect", "s.h5", "--data", "b.npy", "--fail-on-drift", "--html", "r.html"
    )
    assert r.exit_code == 5
    assert "drift in 1 channel(s): 1" in r.stderr
    page = (tmp_path / "r.html").read_text()
    assert page.count("<svg") == 2 and "<script" not in page


def test_drift_numbers_with_nulls_and_a_channel_without_data(run_cli, tmp_path):
    """Each channel is compared on its own non-null values, against plain NumPy."""
    rng = np.random.default_rng(1)
    x = rng.normal(2, 3, 200)
    pq.write_table(
        pa.table({"x": x, "y": rng.normal(0, 1, 200)}), tmp_path / "t.parquet"
    )
    run_cli("fit", "s.h5", "t.parquet", "--momentum", "0.5")
    nulls = np.zeros(100, bool)
    nulls[::4] = True
    new_x = rng.normal(5, 1, 100)
    table = pa.table(
        {
            "x": pa.array(new_x, mask=nulls),
            "y": pa.array(np.zeros(100), mask=np.ones(100, bool)),  # all null
        }
    )
    pq.write_table(table, tmp_path / "new.parquet")
    r = run_cli("inspect", "s.h5", "--data", "new.parquet", "--json")
    assert r.exit_code == 0, r.stderr
    drift = json.loads(r.stdout)["drift"]
    state = bncli.load(tmp_path / "s.h5")
    values = new_x[~nulls]
    scale = state.moving_variance64[0] + state.epsilon
    cx, cy = drift["channels"]
    assert cx["count"] == 75 and drift["samples"] == 100
    np.testing.assert_allclose(cx["mean"], values.mean(), **PRECISE)
    np.testing.assert_allclose(cx["variance"], values.var(), **PRECISE)
    np.testing.assert_allclose(
        cx["mean_shift"], (values.mean() - state.moving_mean64[0]) / np.sqrt(scale),
        **PRECISE,
    )  # fmt: skip
    np.testing.assert_allclose(cx["variance_ratio"], values.var() / scale, **PRECISE)
    assert cx["drift"] is True
    assert cy == {
        "feature": "y", "count": 0, "mean": None, "variance": None,
        "mean_shift": None, "variance_ratio": None, "drift": False,
    }  # fmt: skip
    r = run_cli("inspect", "s.h5", "--data", "new.parquet", "--html", "r.html")
    assert r.exit_code == 0, r.stderr
    assert "no data" in r.stdout and "no data" in (tmp_path / "r.html").read_text()
    assert "warning: no value to compare in channel(s): y" in r.stderr


def test_every_command_help_has_summary_and_example(run_cli):
    from bncli.cli.main import COMMANDS

    r = run_cli("--help")
    for name in COMMANDS:
        assert name in r.stdout
        r2 = run_cli(name, "--help")
        assert r2.exit_code == 0
        assert f"bncli {name} " in r2.stdout.split("Example:")[1], name


def test_subprocess_readme_flow(tmp_path):
    env = {**os.environ, "NO_COLOR": "1"}
    state = tmp_path / "s.h5"
    out = tmp_path / "n.parquet"
    cmds = [
        [
            "fit",
            str(state),
            str(SAMPLE / "features.parquet"),
            "--exclude",
            "id",
            "--momentum",
            "0.9",
        ],
        ["transform", str(state), str(SAMPLE / "features.parquet"), "-o", str(out)],
        ["inspect", str(state)],
    ]
    for args in cmds:
        done = subprocess.run(
            [sys.executable, "-m", "bncli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert "tiny" in done.stdout and "\x1b[" not in done.stdout
    assert pq.read_table(out).num_rows == 2000
    with h5py.File(state) as f:
        assert f.attrs["format"] == "bncli-state"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "bncli",
            "fit",
            str(state),
            str(tmp_path / "nope.parquet"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        bad.returncode == 3
        and bad.stderr == f"error: {tmp_path / 'nope.parquet'}: no such file\n"
    )


def test_help_imports_no_heavy_module():
    code = (
        "import sys\n"
        "from bncli.cli.main import cli\n"
        "try:\n    cli.main(args=['--help'], standalone_mode=False)\nexcept SystemExit: pass\n"
        "sys.stderr.write(','.join(m for m in ('pyarrow', 'h5py', 'rich', 'dask', 'keras') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert "Commands:" in done.stdout
    assert done.stderr == "", done.stderr


def test_dask_only_options_need_the_dask_engine(run_cli, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    r = run_cli("fit", "s.h5", "x.npy", "--scheduler", "tcp://127.0.0.1:1")
    assert r.exit_code == 2 and r.stderr == "error: --scheduler needs --engine dask\n"
    assert not (tmp_path / "s.h5").exists()
    run_cli("fit", "s.h5", "x.npy")
    r = run_cli("transform", "s.h5", "x.npy", "-o", "y.parquet", "--single-file")
    assert r.exit_code == 2 and "--single-file needs --engine dask" in r.stderr
