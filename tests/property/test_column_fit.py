"""The column-by-column fit of Parquet files (``bncli.engines.columns``).

With ranges and decoded pieces made tiny, so that batches straddle ranges,
row groups and files: the state equals the per-batch reference loop
(tests/reference.py, NumPy float64) and the fit of whole chunks, for every
statistic, with nulls, a mask column, replicas, epochs, a dropped remainder
and one worker or two; errors name what the fit of whole chunks names; a
checkpoint inside a range resumes to the state of one uninterrupted fit.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bncli
from bncli.engines import columns
from bncli.errors import DataError
from bncli.io.readers.parquet import ParquetSource
from tests import reference
from tests.conftest import FAST


@pytest.fixture
def tiny_ranges(monkeypatch):
    """Ranges of ``rows`` rows or more (a function to set it), columns decoded
    a batch at a time."""
    monkeypatch.setattr(columns, "PIECE_BYTES", 1)
    monkeypatch.setattr(columns, "MIN_ROWS", 1)
    monkeypatch.setattr(columns, "GROUPS", columns.GROUPS)
    return lambda rows: monkeypatch.setattr(columns, "RANGE_ROWS", rows)


@pytest.fixture
def chunks_only():
    """A context in which fits read whole chunks (the column path is off)."""

    @contextlib.contextmanager
    def off():
        applies = columns.applies
        columns.applies = lambda *a: False
        try:
            yield
        finally:
            columns.applies = applies

    return off


@st.composite
def tables(draw):
    """Rows of 2-4 channels of mixed types, with nulls, a row mask, files."""
    samples = draw(st.integers(1, 80))
    channels = draw(st.integers(2, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = rng.normal(rng.uniform(-5, 5, channels), rng.uniform(0.1, 4, channels),
                      (samples, channels))  # fmt: skip
    kinds = [
        draw(st.sampled_from(["float64", "float32", "int32"])) for _ in range(channels)
    ]
    for j, kind in enumerate(kinds):
        if kind != "float64":  # the values the file holds
            data[:, j] = data[:, j].astype(kind).astype(np.float64)
    nulls = rng.random((samples, channels)) < 0.2 if draw(st.booleans()) else None
    keep = rng.random(samples) < 0.7 if draw(st.booleans()) else None
    cuts = sorted(
        set(draw(st.lists(st.integers(1, 79), max_size=3))) & set(range(1, samples))
    )
    batch_size = draw(st.integers(1, 13))
    return {
        "data": data,
        "kinds": kinds,
        "nulls": nulls,
        "keep": keep,
        "cuts": cuts,
        "row_group_size": draw(st.integers(1, 20)),
        "batch_size": batch_size,
        "epochs": draw(st.integers(1, 2)),
        "drop_remainder": draw(st.booleans()) and samples >= batch_size,
        "replicas": draw(st.sampled_from([1, 1, 2])),
        "momentum": draw(st.sampled_from([0.0, 0.5, 0.9])),
        "range_rows": draw(st.integers(1, 40)),
        "workers": draw(st.sampled_from([1, 2])),
        # tasks a range's channels spread over: 64 reads a column a task,
        # 1 and 2 read them in groups (of all, or of 2 and the rest)
        "groups": draw(st.sampled_from([64, 1, 2])),
    }  # fmt: skip


def write(where: Path, table) -> list[Path]:
    data, nulls, keep = table["data"], table["nulls"], table["keep"]
    edges = [0, *table["cuts"], len(data)]
    paths = []
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        arrays = {}
        for j, kind in enumerate(table["kinds"]):
            values = data[lo:hi, j].astype(kind)
            mask = None if nulls is None else nulls[lo:hi, j]
            arrays[f"c{j}"] = pa.array(values, mask=mask)
        if keep is not None:
            arrays["keep"] = pa.array(keep[lo:hi])
        paths.append(where / f"part{i}.parquet")
        pq.write_table(
            pa.table(arrays), paths[-1], row_group_size=table["row_group_size"]
        )
    return paths


def fit(paths, table, stats="ema"):
    bn = bncli.BatchNormalization(momentum=table["momentum"])
    bn.fit(
        paths,
        batch_size=table["batch_size"],
        epochs=table["epochs"],
        drop_remainder=table["drop_remainder"],
        replicas=table["replicas"],
        mask_column="keep" if table["keep"] is not None else None,
        workers=table["workers"],
        stats=stats,
    )
    return bn


def cell_mask(table):
    """True where a cell counts: not null, in a kept row."""
    keep = np.ones(table["data"].shape, bool)
    if table["nulls"] is not None:
        keep &= ~table["nulls"]
    if table["keep"] is not None:
        keep &= table["keep"][:, None]
    return keep


@pytest.mark.parametrize("stats", ["ema", "precise", "exact"])
@given(table=tables())
def test_equals_the_reference_and_the_fit_of_whole_chunks(
    table, stats, tiny_ranges, chunks_only
):
    tiny_ranges(table["range_rows"])
    columns.GROUPS = table["groups"]  # restored by tiny_ranges's monkeypatch
    mask = cell_mask(table)
    with tempfile.TemporaryDirectory() as name:
        paths = write(Path(name), table)
        by_column = fit(paths, table, stats)
        with chunks_only():
            by_chunk = fit(paths, table, stats)
    options = {"batch_size": table["batch_size"], "replicas": table["replicas"],
               "drop_remainder": table["drop_remainder"]}  # fmt: skip
    if stats == "ema":
        ref = reference.fit(table["data"], mask, momentum=table["momentum"],
                            epochs=table["epochs"], **options)  # fmt: skip
        mean, variance = ref.moving_mean, ref.moving_variance
        assert by_column.batches_seen == ref.batches_seen
        np.testing.assert_array_equal(by_column.channel_batches, ref.channel_batches)
    elif stats == "precise":
        mean, variance = reference.precise_reference(
            table["data"], mask[:, None, :], epochs=table["epochs"], **options
        )
    else:
        fitted = len(table["data"])
        if table["drop_remainder"]:
            fitted = fitted // table["batch_size"] * table["batch_size"]
        # Every value counted, once (the epochs repeat them); a channel with
        # no value keeps its initial 0 and 1.
        mean, variance = np.zeros(mask.shape[1]), np.ones(mask.shape[1])
        for j in range(mask.shape[1]):
            values = table["data"][:fitted, j][mask[:fitted, j]]
            if values.size:
                mean[j], variance[j] = values.mean(), values.var()
    np.testing.assert_allclose(by_column.moving_mean64, mean, **FAST)
    np.testing.assert_allclose(by_column.moving_variance64, variance, **FAST)
    assert by_column.samples_seen == by_chunk.samples_seen
    np.testing.assert_allclose(by_column.moving_mean64, by_chunk.moving_mean64,
                               rtol=1e-12, atol=1e-15)  # fmt: skip
    np.testing.assert_allclose(by_column.moving_variance64, by_chunk.moving_variance64,
                               rtol=1e-12, atol=1e-15)  # fmt: skip


def test_parquet_of_two_channels_or_more_is_fitted_by_column(tmp_path, monkeypatch):
    monkeypatch.setattr(columns, "MIN_ROWS", 2)
    monkeypatch.setattr(columns, "MAX_CHANNELS", 2)
    calls = []
    real = columns.epoch_folds
    monkeypatch.setattr(
        columns, "epoch_folds", lambda *a: calls.append(a[0].features) or real(*a)
    )
    pq.write_table(pa.table({"a": [1.0, 2.0], "b": [3.0, 5.0]}), tmp_path / "t.parquet")
    pq.write_table(pa.table({"a": [1.0, 2.0]}), tmp_path / "one.parquet")
    pq.write_table(pa.table({"a": [1.0], "b": [3.0]}), tmp_path / "short.parquet")
    pq.write_table(pa.table({k: [1.0, 2.0] for k in "abc"}), tmp_path / "wide.parquet")
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    (tmp_path / "t.csv").write_text("a,b\n1,3\n2,5\n")
    for name in ("t.parquet", "one.parquet", "short.parquet", "wide.parquet",
                 "x.npy", "t.csv"):  # fmt: skip
        bncli.BatchNormalization().fit(tmp_path / name)
    assert calls == [["a", "b"]]


def _nan_table(tmp_path: Path) -> Path:
    """NaNs in column b at row 30 and in column a at row 40 (and inf in c)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 3))
    x[40, 0] = np.nan
    x[30, 1] = np.nan
    x[70, 2] = np.inf
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}), path,
                   row_group_size=16)  # fmt: skip
    return path


@pytest.mark.parametrize("range_rows", [1, 40, 1 << 20])
def test_the_error_names_the_first_bad_value_in_stream_order(
    tmp_path, tiny_ranges, chunks_only, range_rows
):
    tiny_ranges(range_rows)
    path = _nan_table(tmp_path)
    with pytest.raises(DataError) as by_column:
        bncli.BatchNormalization().fit(path, batch_size=8)
    with chunks_only(), pytest.raises(DataError) as by_chunk:
        bncli.BatchNormalization().fit(path, batch_size=8)
    assert str(by_column.value) == str(by_chunk.value)
    assert "'b'" in str(by_column.value) and "30" in str(by_column.value)


def test_nan_policy_mask_leaves_the_bad_values_out(tmp_path, tiny_ranges):
    tiny_ranges(20)
    path = _nan_table(tmp_path)
    bn = bncli.BatchNormalization(momentum=0.5)
    bn.fit(path, batch_size=8, nan_policy="mask")
    x = pq.read_table(path).to_pandas().to_numpy()
    ref = reference.fit(x, np.isfinite(x), momentum=0.5, batch_size=8)
    np.testing.assert_allclose(bn.moving_mean64, ref.moving_mean, **FAST)
    np.testing.assert_allclose(bn.moving_variance64, ref.moving_variance, **FAST)


@pytest.mark.parametrize("every", [1, 2])
def test_a_checkpoint_inside_a_range_resumes_to_the_same_state(
    tmp_path, tiny_ranges, every
):
    """Ranges of 25 rows, batches of 10: most ranges end inside a batch, whose
    start is where the checkpoint resumes."""
    tiny_ranges(25)
    x = np.random.default_rng(5).normal(size=(203, 2))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1]}), path, row_group_size=25)
    whole = bncli.BatchNormalization(momentum=0.8)
    whole.fit(path, batch_size=10, epochs=2)

    saved = []

    class Crash(Exception):
        pass

    def save_then_crash(layer):
        saved.append(layer.resume["sample"])
        layer.save(tmp_path / f"c{len(saved)}.h5")
        if len(saved) == 3:
            raise Crash

    with pytest.raises(Crash):
        bncli.BatchNormalization(momentum=0.8).fit(
            path, batch_size=10, epochs=2, checkpoint_every=every,
            checkpoint=save_then_crash,
        )  # fmt: skip
    assert all(s % 10 == 0 for s in saved)
    resumed = bncli.load(tmp_path / "c3.h5")
    resumed.fit(path, batch_size=10, epochs=2, resume=True)
    np.testing.assert_allclose(resumed.moving_mean64, whole.moving_mean64, rtol=1e-13)
    np.testing.assert_allclose(
        resumed.moving_variance64, whole.moving_variance64, rtol=1e-13
    )
    assert resumed.batches_seen == whole.batches_seen
    ref = reference.fit(x, momentum=0.8, batch_size=10, epochs=2)
    np.testing.assert_allclose(resumed.moving_mean64, ref.moving_mean, **FAST)


def test_threads_read_one_parquet_source_at_once(tmp_path):
    """Each read has a pyarrow reader of its own: one reader used by two
    threads at once deadlocked, or crashed, now and then (a 1 GiB fit hung
    every time). The values two threads read side by side are the file's."""
    x = np.random.default_rng(2).normal(size=(50_000, 4))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({f"c{j}": x[:, j] for j in range(4)}), path,
                   row_group_size=4096)  # fmt: skip
    source = ParquetSource(str(path))
    assert source._reader() is not source._reader()
    got: dict[tuple[int, int], np.ndarray] = {}

    def read(k: int) -> None:
        for _ in range(10):
            for j in range(k, 4, 2):
                batches = source.chunks(0, 1000, [f"c{j}"])
                got[k, j] = np.concatenate([b.column(0).to_numpy() for b in batches])

    threads = [threading.Thread(target=read, args=(k,), daemon=True) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "the readers deadlocked"
    for (_, j), values in got.items():
        np.testing.assert_array_equal(values, x[:, j])
    assert len(got) == 4


def test_a_wide_table_is_read_a_group_of_columns_a_task(tmp_path):
    """1,024 float32 columns: read whole chunks at a time, pyarrow held every
    column's reader and pages (111 MiB of Arrow's memory for this 32 MiB
    file); 16 columns a task hold a few MiB. Arrow's own accounting, in a
    fresh process."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8192, 1024)).astype(np.float32)
    path = tmp_path / "wide.parquet"
    table = pa.table({f"c{j}": x[:, j] for j in range(1024)})
    pq.write_table(table, path, row_group_size=4096)
    assert [len(g) for g in columns.column_groups(table.column_names)] == [16] * 64
    code = (
        "import sys, pyarrow as pa, numpy as np, bncli\n"
        "from bncli.engines import columns\n"
        "columns.MIN_ROWS = 1  # 8,192 rows: the column path all the same\n"
        "bn = bncli.BatchNormalization(momentum=0.0)\n"
        "bn.fit(sys.argv[1], batch_size=8192)\n"
        "np.save(sys.argv[2], bn.moving_mean64)\n"
        "print(pa.default_memory_pool().max_memory())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "mean.npy")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 32 << 20
    # one batch of every row, momentum 0: the moving mean is the data's mean
    np.testing.assert_allclose(
        np.load(tmp_path / "mean.npy"), x.astype(np.float64).mean(axis=0), **FAST
    )
