"""Population statistics (``--stats precise|exact``), resets and convergence.

Every expected value is written here in plain NumPy float64, from the
definitions and nothing in bncli: ``precise`` is the equal-weight mean over
batches of the batch means and biased variances (PyTorch's ``momentum=None``
cumulative average, written out below), ``exact`` the mean and biased
variance of every unmasked value.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bncli
from bncli.errors import NotConvergedError, StateMismatchError, UsageError
from tests.conftest import PRECISE
from tests.reference import cells as _cells
from tests.reference import exact_reference, precise_reference

RNG = np.random.default_rng(5)


# ------------------------------------------------------------- the two modes


@pytest.mark.parametrize(
    ("batch_size", "replicas", "drop_remainder", "epochs"),
    [(32, 1, False, 1), (7, 3, False, 2), (10, 2, True, 1)],
)
def test_precise_on_arrays_is_the_mean_of_batch_statistics(
    tmp_path, batch_size, replicas, drop_remainder, epochs
):
    x = RNG.normal(3.0, 2.0, (101, 4, 3))
    np.save(tmp_path / "x.npy", x)
    layer = bncli.BatchNormalization(axis=1)
    layer.fit(
        tmp_path / "x.npy",
        batch_size=batch_size,
        replicas=replicas,
        drop_remainder=drop_remainder,
        epochs=epochs,
        stats="precise",
    )
    mean, variance = precise_reference(
        x,
        axis=1,
        batch_size=batch_size,
        replicas=replicas,
        drop_remainder=drop_remainder,
        epochs=epochs,
    )
    np.testing.assert_allclose(layer.moving_mean64, mean, **PRECISE)
    np.testing.assert_allclose(layer.moving_variance64, variance, **PRECISE)
    assert layer.statistics == "precise"
    np.testing.assert_array_equal(layer.initializer_share(), 0.0)


@pytest.mark.parametrize("axis", [1, -1])
def test_exact_on_arrays_is_the_population_whatever_the_batching(tmp_path, axis):
    x = RNG.normal(-1.0, 4.0, (90, 5, 3))
    cells = _cells(x, axis)  # (N, positions, C)
    mask = RNG.random(cells.shape[:2]) > 0.3  # the shape without the channel axis
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "m.npy", mask)
    layer = bncli.BatchNormalization(axis=axis)
    layer.fit(
        tmp_path / "x.npy",
        batch_size=7,
        replicas=2,
        epochs=3,
        stats="exact",
        mask=[tmp_path / "m.npy"],
    )
    keep = np.broadcast_to(mask[:, :, None], cells.shape)
    mean, variance = exact_reference(x, keep, axis=axis)
    np.testing.assert_allclose(layer.moving_mean64, mean, **PRECISE)
    np.testing.assert_allclose(layer.moving_variance64, variance, **PRECISE)


def test_both_modes_on_a_table_with_nulls_and_a_mask_column(tmp_path):
    n = 83
    a = RNG.normal(10.0, 3.0, n)
    b = RNG.normal(-2.0, 0.5, n)
    nulls = RNG.random(n) < 0.15
    keep = RNG.random(n) > 0.2
    table = pa.table(
        {
            "a": pa.array(a, mask=nulls),
            "b": b,
            "keep": keep,
        }
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=20)
    valid = np.stack([~nulls & keep, keep], axis=1)[:, None, :]
    x = np.stack([np.where(nulls, 0.0, a), b], axis=1)
    for mode, reference in (("exact", None), ("precise", 9)):
        layer = bncli.BatchNormalization()
        layer.fit(
            tmp_path / "t.parquet",
            batch_size=9,
            mask_column="keep",
            stats=mode,
        )
        if reference is None:
            mean, variance = exact_reference(x, valid)
        else:
            mean, variance = precise_reference(x, valid, batch_size=reference)
        np.testing.assert_allclose(layer.moving_mean64, mean, **PRECISE)
        np.testing.assert_allclose(layer.moving_variance64, variance, **PRECISE)


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    batch_size=st.integers(1, 17),
    mode=st.sampled_from(["precise", "exact"]),
)
def test_results_do_not_depend_on_the_split_into_files(
    tmp_path_factory, sizes, batch_size, mode
):
    folder = tmp_path_factory.mktemp("split")
    x = np.random.default_rng(sum(sizes)).normal(2.0, 3.0, (sum(sizes), 2))
    paths = []
    start = 0
    for i, size in enumerate(sizes):
        paths.append(folder / f"{i}.npy")
        np.save(paths[-1], x[start : start + size])
        start += size
    layer = bncli.BatchNormalization()
    layer.fit(paths, batch_size=batch_size, stats=mode)
    if mode == "exact":
        mean, variance = exact_reference(x)
    else:
        mean, variance = precise_reference(x, batch_size=batch_size)
    np.testing.assert_allclose(layer.moving_mean64, mean, **PRECISE)
    np.testing.assert_allclose(layer.moving_variance64, variance, **PRECISE)


@pytest.mark.parametrize("mode", ["precise", "exact"])
def test_a_continued_fit_equals_one_fit(tmp_path, mode):
    x = RNG.normal(size=(96, 3))
    np.save(tmp_path / "a.npy", x[:64])
    np.save(tmp_path / "b.npy", x[64:])
    np.save(tmp_path / "all.npy", x)
    one = bncli.BatchNormalization()
    one.fit(tmp_path / "all.npy", batch_size=16, stats=mode)
    one.save(tmp_path / "one.h5")
    two = bncli.BatchNormalization()
    two.fit(tmp_path / "a.npy", batch_size=16, stats=mode)
    two.save(tmp_path / "two.h5")
    two = bncli.load(tmp_path / "two.h5")
    assert two.statistics == mode
    two.fit(tmp_path / "b.npy", batch_size=16)  # keeps the state's mode
    np.testing.assert_allclose(two.moving_mean64, one.moving_mean64, rtol=1e-12)
    np.testing.assert_allclose(two.moving_variance64, one.moving_variance64, rtol=1e-12)
    assert (two.batches_seen, two.samples_seen) == (one.batches_seen, one.samples_seen)


def test_the_layers_own_training_call_follows_its_mode():
    layer = bncli.BatchNormalization()
    x1, x2 = RNG.normal(size=(8, 2)), RNG.normal(5.0, 2.0, size=(24, 2))
    layer(x1, training=True)
    layer.reset_statistics("exact")
    layer(x1, training=True)
    layer(x2, training=True)
    both = np.concatenate([x1, x2])
    np.testing.assert_allclose(layer.moving_mean64, both.mean(axis=0), **PRECISE)
    np.testing.assert_allclose(layer.moving_variance64, both.var(axis=0), **PRECISE)


# ------------------------------------------------------------------ changes


def test_another_mode_on_a_fitted_state_is_refused_unless_reset(tmp_path):
    x = RNG.normal(size=(40, 2))
    np.save(tmp_path / "x.npy", x)
    layer = bncli.BatchNormalization(momentum=0.5)
    layer.fit(tmp_path / "x.npy")
    before = layer.moving_mean64.copy()
    with pytest.raises(StateMismatchError, match="--stats exact contradicts"):
        layer.fit(tmp_path / "x.npy", stats="exact")
    np.testing.assert_array_equal(layer.moving_mean64, before)
    layer.fit(tmp_path / "x.npy", stats="exact", reset_statistics=True)
    np.testing.assert_allclose(layer.moving_mean64, x.mean(axis=0), **PRECISE)
    assert (layer.batches_seen, layer.samples_seen, layer.epochs) == (2, 40, 1)


def test_reset_keeps_config_gamma_and_beta(tmp_path):
    np.save(tmp_path / "x.npy", RNG.normal(size=(40, 2)))
    layer = bncli.BatchNormalization(
        momentum=0.7, moving_variance_initializer="constant:2"
    )
    layer.fit(tmp_path / "x.npy")
    layer.gamma = [0.5, 2.0]
    layer.beta = [1.0, -1.0]
    config = layer.get_config()
    layer.reset_statistics()
    np.testing.assert_array_equal(layer.moving_mean64, [0.0, 0.0])
    np.testing.assert_array_equal(layer.moving_variance64, [2.0, 2.0])
    assert layer.get_config() == config
    np.testing.assert_array_equal(layer.gamma, [0.5, 2.0])
    np.testing.assert_array_equal(layer.beta, [1.0, -1.0])
    assert (layer.batches_seen, layer.samples_seen, layer.epochs) == (0, 0, 0)


def test_an_unknown_mode_is_a_usage_error(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    with pytest.raises(UsageError, match="statistics must be one of ema, precise"):
        bncli.BatchNormalization().fit(tmp_path / "x.npy", stats="median")


# -------------------------------------------------------------- convergence


def test_convergence_of_an_ema_state(tmp_path, run_cli):
    x = RNG.normal(4.0, 2.0, (50, 2))
    np.save(tmp_path / "x.npy", x)
    assert (
        run_cli(
            "fit", "s.h5", "x.npy", "--momentum", "0.9", "--batch-size", "10"
        ).exit_code
        == 0
    )
    doc = json.loads(run_cli("inspect", "s.h5", "--json").stdout)
    assert doc["statistics"] == "ema"
    found = doc["convergence"]
    assert found["window"] == pytest.approx(10.0)
    assert found["share"] == pytest.approx([0.9**5] * 2)
    assert (
        found["batches_to_1_percent"] == math.ceil(math.log(0.01) / math.log(0.9)) - 5
    )
    # Debiased: the batches' own weighted average, without the initial values.
    weights = np.array([0.1 * 0.9 ** (4 - k) for k in range(5)])
    means = np.array([x[10 * k : 10 * k + 10].mean(axis=0) for k in range(5)])
    expected = (weights[:, None] * means).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(found["debiased"]["moving_mean"], expected, rtol=1e-9)


def test_convergence_without_constant_initializers_has_no_debiased_values(
    tmp_path, run_cli
):
    np.save(tmp_path / "x.npy", RNG.normal(size=(20, 2)))
    args = ["--moving-mean-initializer", "random_normal", "--seed", "1"]
    assert run_cli("fit", "s.h5", "x.npy", *args).exit_code == 0
    doc = json.loads(run_cli("inspect", "s.h5", "--json").stdout)
    assert doc["convergence"]["debiased"] is None


def test_population_modes_have_no_share_once_fitted(tmp_path, run_cli):
    np.save(tmp_path / "x.npy", RNG.normal(size=(20, 2)))
    assert run_cli("fit", "s.h5", "x.npy", "--stats", "exact").exit_code == 0
    result = run_cli("inspect", "s.h5", "--json")
    doc = json.loads(result.stdout)
    assert (doc["statistics"], doc["initializer_share"]) == ("exact", 0.0)
    assert doc["convergence"]["batches_to_1_percent"] == 0
    text = run_cli("inspect", "s.h5")
    assert "exact (the mean and variance of every value)" in text.stdout
    assert "fit on more batches" not in text.stderr


def test_until_share_goes_on_until_the_share_is_below(tmp_path, run_cli):
    np.save(tmp_path / "x.npy", RNG.normal(size=(30, 2)))  # 3 batches an epoch
    result = run_cli(
        "fit", "s.h5", "x.npy", "--momentum", "0.9", "--batch-size", "10",
        "--until-share", "0.05", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # 0.9 ** (3 * epochs) < 0.05 first at 10 epochs (0.9**30 = 0.042).
    epochs = next(e for e in range(1, 100) if 0.9 ** (3 * e) < 0.05)
    assert json.loads(result.stdout)["epochs"] == epochs
    assert bncli.load(tmp_path / "s.h5").epochs == epochs


def test_until_share_capped_is_exit_3_with_the_state_saved(tmp_path, run_cli):
    np.save(tmp_path / "x.npy", RNG.normal(size=(30, 2)))
    result = run_cli(
        "fit", "s.h5", "x.npy", "--momentum", "0.99", "--batch-size", "10",
        "--until-share", "0.01", "--max-epochs", "4",
    )  # fmt: skip
    assert result.exit_code == 3
    assert result.stderr.startswith("error: the initializers still weigh ")
    assert "after 4 epochs, not under --until-share 0.01" in result.stderr
    assert bncli.load(tmp_path / "s.h5").batches_seen == 12


def test_until_share_refusals(tmp_path, run_cli):
    np.save(tmp_path / "x.npy", RNG.normal(size=(30, 2)))
    exact = run_cli("fit", "s.h5", "x.npy", "--stats", "exact", "--until-share", "0.1")
    assert exact.exit_code == 2 and "for the ema statistics" in exact.stderr
    stdin = run_cli("fit", "s.h5", "-", "--until-share", "0.1")
    assert stdin.exit_code == 2 and "not with '-' (stdin)" in stdin.stderr
    with pytest.raises(NotConvergedError):
        bncli.BatchNormalization(momentum=0.999).fit(
            tmp_path / "x.npy", until_share=0.01, max_epochs=2
        )
    assert not (tmp_path / "s.h5").exists()


def test_an_imported_layer_starts_from_its_values(tmp_path, run_cli):
    np.save(tmp_path / "x.npy", RNG.normal(3.0, 1.0, (40, 2)))
    assert run_cli("fit", "s.h5", "x.npy", "--momentum", "0.9").exit_code == 0
    assert run_cli("export", "s.h5", "m.keras").exit_code == 0
    assert run_cli("import", "m.keras", "-o", "i.h5").exit_code == 0
    inspected = run_cli("inspect", "i.h5", "--json")
    doc = json.loads(inspected.stdout)
    assert doc["initializer_share"] == 0.0
    assert doc["convergence"]["batches_to_1_percent"] == 0
    assert "fit on more batches" not in run_cli("inspect", "i.h5").stderr
    # Re-estimated from data: the statistics start again, in the mode asked.
    fitted = run_cli("fit", "i.h5", "x.npy", "--reset-statistics", "--stats", "precise")
    assert fitted.exit_code == 0, fitted.stderr
    layer = bncli.load(tmp_path / "i.h5")
    assert (layer.statistics, layer.statistics_start) == ("precise", "initializers")


@pytest.mark.parametrize("mode", ["precise", "exact"])
def test_an_interrupted_fit_resumed_equals_one_fit(tmp_path, mode):
    x = RNG.normal(size=(200_000, 2))
    np.save(tmp_path / "x.npy", x)
    one = bncli.BatchNormalization()
    one.fit(tmp_path / "x.npy", batch_size=8, epochs=2, stats=mode)

    class Stop(Exception):
        pass

    def checkpoint_then_stop(layer):
        layer.save(tmp_path / "checkpoint.h5")
        raise Stop

    layer = bncli.BatchNormalization()
    with pytest.raises(Stop):
        layer.fit(
            tmp_path / "x.npy",
            batch_size=8,
            epochs=2,
            stats=mode,
            checkpoint_every=5_000,
            checkpoint=checkpoint_then_stop,
        )
    resumed = bncli.load(tmp_path / "checkpoint.h5")
    assert resumed.statistics == mode and 0 < resumed.batches_seen < one.batches_seen
    resumed.fit([], resume=True)
    np.testing.assert_allclose(resumed.moving_mean64, one.moving_mean64, rtol=1e-9)
    np.testing.assert_allclose(
        resumed.moving_variance64, one.moving_variance64, rtol=1e-9
    )
    assert (resumed.batches_seen, resumed.samples_seen) == (
        one.batches_seen,
        one.samples_seen,
    )


def test_the_cli_refuses_another_mode_naming_the_state(tmp_path, run_cli):
    np.save(tmp_path / "x.npy", RNG.normal(size=(40, 2)))
    assert run_cli("fit", "s.h5", "x.npy").exit_code == 0
    before = (tmp_path / "s.h5").read_bytes()
    result = run_cli("fit", "s.h5", "x.npy", "--stats", "exact")
    assert result.exit_code == 4
    assert result.stderr == (
        "error: s.h5: --stats exact contradicts the state's statistics ema; "
        "add --reset-statistics to start them again in that mode\n"
    )
    assert (tmp_path / "s.h5").read_bytes() == before


@pytest.mark.slow
def test_modes_through_a_real_process(tmp_path):
    import subprocess
    import sys

    x = RNG.normal(size=(40, 2))
    np.save(tmp_path / "x.npy", x)

    def bncli_run(*args):
        return subprocess.run(
            [sys.executable, "-m", "bncli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )

    assert bncli_run("fit", "s.h5", "x.npy", "--stats", "exact", "-q").returncode == 0
    doc = json.loads(bncli_run("inspect", "s.h5", "--json").stdout)
    assert doc["statistics"] == "exact"
    np.testing.assert_allclose(
        doc["variables"]["moving_mean"], x.mean(axis=0), rtol=1e-6
    )
    refused = bncli_run("fit", "s.h5", "x.npy", "--stats", "ema")
    assert refused.returncode == 4
    assert refused.stderr.startswith("error: s.h5: --stats ema contradicts")
