"""The library's workflows are the commands: ``fit_state`` is ``bncli fit``."""

from __future__ import annotations

import numpy as np
import pytest

import bncli
from bncli.engines.base import FitOptions
from bncli.errors import StateMismatchError
from bncli.workflows import fit_state
from tests.conftest import PRECISE


def test_fit_state_creates_then_continues_a_state_file(tmp_path):
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(40, 3))
    np.save(tmp_path / "x.npy", x)
    state = tmp_path / "s.h5"
    options = FitOptions(batch_size=40)
    first = fit_state(
        state, [tmp_path / "x.npy"], options, layer_options={"momentum": 0.5}
    )
    assert (first.summary.batches, first.batches_seen, first.samples_seen) == (1, 1, 40)
    second = fit_state(state, [tmp_path / "x.npy"], options)
    assert second.batches_seen == 2
    # two updates of momentum 0.5 toward the batch's statistics, from 0 and 1
    mean, var = x.mean(axis=0), x.var(axis=0)
    layer = bncli.load(state)
    np.testing.assert_allclose(layer.moving_mean64, 0.75 * mean, **PRECISE)
    np.testing.assert_allclose(layer.moving_variance64, 0.25 + 0.75 * var, **PRECISE)


def test_fit_state_refuses_options_that_contradict_the_state(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((8, 2)))
    state = tmp_path / "s.h5"
    fit_state(
        state, [tmp_path / "x.npy"], FitOptions(), layer_options={"momentum": 0.9}
    )
    before = state.read_bytes()
    with pytest.raises(StateMismatchError, match=r"--momentum 0\.5 contradicts"):
        fit_state(
            state, [tmp_path / "x.npy"], FitOptions(), layer_options={"momentum": 0.5}
        )
    assert state.read_bytes() == before
