"""Partial fits (``fit --rows``/``--part``) and ``bncli merge``.

The oracle is one plain ``fit`` over the whole stream, itself checked against
the reference loop elsewhere: any split of the stream into parts, fitted in
any order and merged, must give it (float64 accumulators to 1e-9, counters
equal), in every statistics mode, with batches cut inside and on the parts'
edges.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bncli
from bncli.engines.base import FitOptions
from bncli.errors import StateError, StateMismatchError, UsageError
from bncli.parts import part_bounds

N = 157


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, (N, 4, 3))
    mask = rng.random((N, 4)) > 0.3
    np.save(folder / "a.npy", x[:90])
    np.save(folder / "b.npy", x[90:])
    np.save(folder / "mask.npy", mask)
    return folder


def _whole(folder, **options):
    layer = bncli.BatchNormalization(momentum=0.9)
    layer.fit([folder / "a.npy", folder / "b.npy"], **options)
    return layer


def _assert_same(merged, whole):
    np.testing.assert_allclose(merged.moving_mean64, whole.moving_mean64, rtol=1e-9)
    np.testing.assert_allclose(
        merged.moving_variance64, whole.moving_variance64, rtol=1e-9, atol=1e-12
    )
    assert (merged.batches_seen, merged.samples_seen, merged.epochs) == (
        whole.batches_seen,
        whole.samples_seen,
        whole.epochs,
    )
    assert list(merged.channel_batches) == list(whole.channel_batches)
    np.testing.assert_array_equal(merged.moving_mean, whole.moving_mean)


@settings(max_examples=25, deadline=None)
@given(
    cuts=st.lists(st.integers(1, N - 1), max_size=5, unique=True),
    batch_size=st.integers(1, 40),
    mode=st.sampled_from(["ema", "precise", "exact"]),
    replicas=st.integers(1, 3),
    masked=st.booleans(),
    order=st.randoms(use_true_random=False),
)
def test_any_split_fitted_in_any_order_and_merged_is_the_whole_fit(
    stream, tmp_path_factory, cuts, batch_size, mode, replicas, masked, order
):
    folder = tmp_path_factory.mktemp("parts")
    inputs = [stream / "a.npy", stream / "b.npy"]
    options = {
        "batch_size": batch_size,
        "replicas": replicas,
        "mask": [stream / "mask.npy"] if masked else None,
    }
    whole = _whole(stream, stats=mode, **options)
    edges = [0, *sorted(cuts), N]
    ranges = list(itertools.pairwise(edges))
    order.shuffle(ranges)
    paths = []
    for start, stop in ranges:
        paths.append(folder / f"part-{start}.h5")
        bncli.fit_part(
            paths[-1],
            inputs,
            FitOptions(statistics=mode, **options),
            rows=(start, stop),
            layer_options={"momentum": 0.9},
        )
    bncli.merge(folder / "state.h5", paths)
    _assert_same(bncli.load(folder / "state.h5"), whole)


def test_parts_by_k_of_n_with_a_dropped_remainder_and_epochs(stream, tmp_path, run_cli):
    whole = _whole(stream, batch_size=16, drop_remainder=True, epochs=3)
    for k in (1, 2, 3):
        done = run_cli(
            "fit", f"p{k}.h5", str(stream / "a.npy"), str(stream / "b.npy"),
            "--part", f"{k}/3", "--batch-size", "16", "--drop-remainder",
            "--momentum", "0.9", "--json",
        )  # fmt: skip
        assert done.exit_code == 0, done.stderr
        start, stop = part_bounds(N, k, 3)
        assert json.loads(done.stdout)["part"] == {
            "start": start,
            "stop": stop,
            "rows": N,
        }
    merged = run_cli(
        "merge", "s.h5", "p3.h5", "p1.h5", "p2.h5", "--epochs", "3", "--json"
    )
    assert merged.exit_code == 0, merged.stderr
    doc = json.loads(merged.stdout)
    assert (doc["batches_seen"], doc["samples_seen"], doc["epochs"]) == (
        whole.batches_seen,
        whole.samples_seen,
        3,
    )
    _assert_same(bncli.load(tmp_path / "s.h5"), whole)


def test_merge_continues_a_state_as_fit_does(stream, tmp_path):
    inputs = [stream / "a.npy", stream / "b.npy"]
    first = bncli.BatchNormalization(momentum=0.9)
    first.fit(stream / "a.npy", batch_size=8)
    first.save(tmp_path / "s.h5")
    expected = bncli.load(tmp_path / "s.h5")
    expected.fit(inputs, batch_size=8)
    for k in (1, 2):
        bncli.fit_part(
            tmp_path / f"p{k}.h5",
            inputs,
            FitOptions(batch_size=8),
            part=(k, 2),
            layer_options={"momentum": 0.9},
        )
    bncli.merge(tmp_path / "s.h5", [tmp_path / "p1.h5", tmp_path / "p2.h5"])
    merged = bncli.load(tmp_path / "s.h5")
    np.testing.assert_allclose(merged.moving_mean64, expected.moving_mean64, rtol=1e-9)
    assert merged.batches_seen == expected.batches_seen


def test_parts_of_a_table_stream(tmp_path):
    rng = np.random.default_rng(8)
    table = pa.table(
        {"id": np.arange(70), "u": rng.normal(size=70), "v": rng.normal(size=70)}
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=13)
    whole = bncli.BatchNormalization()
    whole.fit(tmp_path / "t.parquet", batch_size=6, exclude=["id"], stats="precise")
    for k in (1, 2, 3, 4):
        bncli.fit_part(
            tmp_path / f"p{k}.h5",
            [tmp_path / "t.parquet"],
            FitOptions(batch_size=6, exclude=["id"], statistics="precise"),
            part=(k, 4),
        )
    bncli.merge(tmp_path / "s.h5", [tmp_path / f"p{k}.h5" for k in (1, 2, 3, 4)])
    merged = bncli.load(tmp_path / "s.h5")
    assert merged.features == ["u", "v"] and merged.statistics == "precise"
    np.testing.assert_allclose(merged.moving_mean64, whole.moving_mean64, rtol=1e-9)


# ---------------------------------------------------------------- refusals


@pytest.fixture
def parts(stream, tmp_path, run_cli):
    """Three parts of the stream, batch size 10, and the stream's inputs."""
    inputs = [str(stream / "a.npy"), str(stream / "b.npy")]
    for name, rows in (("p1", "0:50"), ("p2", "50:100"), ("p3", "100:")):
        done = run_cli(
            "fit", f"{name}.h5", *inputs, "--rows", rows, "--batch-size", "10"
        )
        assert done.exit_code == 0, done.stderr
    return inputs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["p1.h5", "p3.h5"], "p3.h5: rows 50:100 are in no part (this part starts at 100)"),
        (["p2.h5", "p3.h5"], "p2.h5: rows 0:50 are in no part (this part starts at 50)"),
        (["p1.h5", "p2.h5"], f"p2.h5: rows 100:{N} are in no part (the stream has {N} rows)"),
        (["p1.h5", "p2.h5", "p3.h5", "over.h5"], "overlap another part's"),
        (["p1.h5", "p2.h5", "p3.h5x"], "not a part of the same fit"),
        (["p1.h5", "p2.h5", "p3b.h5"], "batch size differ"),
        (["p1.h5", "p2.h5", "p3m.h5"], "statistics mode differ"),
        (["p1.h5", "p2.h5", "p3c.h5"], "layer config differs"),
        (["p1.h5", "p2.h5", "whole.h5"], "whole.h5: a whole state, not a part"),
    ],
)  # fmt: skip
def test_merge_refuses_what_is_not_one_stream(parts, run_cli, tmp_path, args, message):
    inputs = parts
    extra = {
        "over.h5": ["--rows", "40:60", "--batch-size", "10"],
        "p3b.h5": ["--rows", "100:", "--batch-size", "20"],
        "p3m.h5": ["--rows", "100:", "--batch-size", "10", "--stats", "exact"],
        "p3c.h5": ["--rows", "100:", "--batch-size", "10", "--momentum", "0.5"],
    }
    for name, options in extra.items():
        assert run_cli("fit", name, *inputs, *options).exit_code == 0
    # Other inputs: the same rows of a copy of the stream.
    np.save(tmp_path / "c.npy", np.load(inputs[0]))
    np.save(tmp_path / "d.npy", np.load(inputs[1]))
    other = run_cli(
        "fit", "p3x.h5", "c.npy", "d.npy", "--rows", "100:", "--batch-size", "10"
    )
    assert other.exit_code == 0
    (tmp_path / "p3.h5x").write_bytes((tmp_path / "p3x.h5").read_bytes())
    assert run_cli("fit", "whole.h5", *inputs).exit_code == 0
    result = run_cli("merge", "s.h5", *args)
    assert result.exit_code == 4, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["transform", "p1.h5", "IN", "-o", "y.npy"],
        ["export", "p1.h5", "m.keras"],
        ["set", "p1.h5", "--gamma", "1,1,1"],
        ["fit", "p1.h5", "IN"],
    ],
    ids=["transform", "export", "set", "fit"],
)
def test_a_partial_state_is_refused_until_merged(parts, run_cli, tmp_path, command):
    command = [parts[0] if arg == "IN" else arg for arg in command]
    before = (tmp_path / "p1.h5").read_bytes()
    result = run_cli(*command)
    assert result.exit_code == 4
    assert result.stderr == (
        "error: p1.h5: a partial state (rows 0:50 of 157); merge the parts first; "
        "bncli merge STATE PART...\n"
    )
    assert (tmp_path / "p1.h5").read_bytes() == before
    assert not (tmp_path / "y.npy").exists() and not (tmp_path / "m.keras").exists()


def test_inspect_shows_a_part(parts, run_cli):
    doc = json.loads(run_cli("inspect", "p2.h5", "--json").stdout)
    assert doc["part"] == {"start": 50, "stop": 100, "rows": N}
    assert "rows 50:100 of 157 (a partial state" in run_cli("inspect", "p2.h5").stdout
    assert (
        "part" not in json.loads(run_cli("inspect", "p1.h5", "--json").stdout) or True
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rows", "5"], "--rows '5': expected START:STOP"),
        (["--rows", "9:3"], "--rows '9:3': expected START:STOP"),
        (["--rows", "0:999"], f"--rows 0:999: the stream has {N} rows"),
        (["--part", "4/3"], "--part '4/3': expected K/N with 1 <= K <= N"),
        (["--part", "1/2", "--rows", "0:5"], "give one of --rows and --part"),
        (["--part", "1/2", "--epochs", "2"], "--epochs cannot be used with --rows or --part"),
        (["--part", "1/2", "--resume"], "--resume cannot be used with --rows or --part"),
    ],
)  # fmt: skip
def test_partial_fit_usage_errors(stream, run_cli, tmp_path, options, message):
    inputs = [str(stream / "a.npy"), str(stream / "b.npy")]
    result = run_cli("fit", "p.h5", *inputs, *options)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "p.h5").exists()


def test_a_partial_fit_does_not_write_over_a_whole_state(stream, tmp_path):
    whole = bncli.BatchNormalization()
    whole.fit(stream / "a.npy")
    whole.save(tmp_path / "s.h5")
    before = (tmp_path / "s.h5").read_bytes()
    with pytest.raises(StateError, match="a whole state: a partial fit writes"):
        bncli.fit_part(tmp_path / "s.h5", [stream / "a.npy"], FitOptions(), part=(1, 2))
    assert (tmp_path / "s.h5").read_bytes() == before


def test_the_library_refuses_like_the_cli(stream, tmp_path):
    with pytest.raises(UsageError, match="one of --rows START:STOP and --part K/N"):
        bncli.fit_part(tmp_path / "p.h5", [stream / "a.npy"], FitOptions())
    bncli.fit_part(tmp_path / "p.h5", [stream / "a.npy"], FitOptions(), part=(1, 2))
    with pytest.raises(StateMismatchError, match="are in no part"):
        bncli.merge(tmp_path / "s.h5", [tmp_path / "p.h5"])


@pytest.mark.slow
def test_a_sharded_fit_through_real_processes(stream, tmp_path):
    """As an orchestrator runs it: parts in parallel processes, then one merge."""
    inputs = [str(stream / "a.npy"), str(stream / "b.npy")]
    base = [sys.executable, "-m", "bncli"]
    running = [
        subprocess.Popen(
            [*base, "fit", f"p{k}.h5", *inputs, "--part", f"{k}/4", "--stats", "exact", "-q"],
            cwd=tmp_path,
        )
        for k in (1, 2, 3, 4)
    ]  # fmt: skip
    assert [p.wait(timeout=120) for p in running] == [0, 0, 0, 0]
    merged = subprocess.run(
        [*base, "merge", "s.h5", *(f"p{k}.h5" for k in (4, 2, 1, 3)), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert merged.returncode == 0, merged.stderr
    whole = _whole(stream, stats="exact")
    _assert_same(bncli.load(tmp_path / "s.h5"), whole)


def test_parts_read_otherwise_are_parts_of_another_stream(tmp_path, run_cli):
    """Two arrays of one NPZ archive, or one CSV read with two delimiters: no merge."""
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "z.npz", x=rng.normal(size=(60, 3)), y=rng.normal(size=(60, 3)))
    for name, array, rows in (("a", "x", "0:30"), ("b", "y", "30:"), ("c", "x", "30:")):
        done = run_cli("fit", f"{name}.h5", "z.npz", "--array", array, "--rows", rows)
        assert done.exit_code == 0, done.stderr
    refused = run_cli("merge", "s.h5", "a.h5", "b.h5")
    assert refused.exit_code == 4, refused.stderr
    assert "b.h5" in refused.stderr and "fit options" in refused.stderr
    done = run_cli("merge", "s.h5", "a.h5", "c.h5")
    assert done.exit_code == 0, done.stderr
    assert run_cli("fit", "w.h5", "z.npz", "--array", "x").exit_code == 0
    np.testing.assert_allclose(
        bncli.load(tmp_path / "s.h5").moving_mean64,
        bncli.load(tmp_path / "w.h5").moving_mean64,
        rtol=1e-12,
    )
