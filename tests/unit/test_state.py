"""The HDF5 state: round trip, validation, atomic replace, lock."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import bncli
from bncli.errors import StateError, StateLockedError, StateNotFoundError
from bncli.state import FORMAT_VERSION, lock, lock_path, read_state, seal


@pytest.fixture
def fitted(tmp_path):
    bn = bncli.BatchNormalization(
        momentum=0.8, epsilon=0.01, gamma_initializer="constant:2"
    )
    rng = np.random.default_rng(3)
    for _ in range(3):
        bn(rng.normal(5, 2, size=(16, 3, 4)), training=True)
    path = tmp_path / "s.h5"
    bn.save(path)
    return bn, path


def test_round_trip_keeps_everything(fitted):
    bn, path = fitted
    back = bncli.load(path)
    assert back.get_config() == bn.get_config()
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        got, want = getattr(back, name), getattr(bn, name)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(back.moving_mean64, bn.moving_mean64)
    np.testing.assert_array_equal(back.moving_variance64, bn.moving_variance64)
    assert (back.batches_seen, back.samples_seen) == (3, 48)
    assert back.sample_shape == (3, 4) and back.channel_axis == 2


def test_layout_is_the_documented_one(fitted):
    _, path = fitted
    with h5py.File(path) as f:
        assert f.attrs["format"] == "bncli-state"
        # Keras's moving average: version 2, which earlier releases read.
        assert f.attrs["format_version"] == 2 < FORMAT_VERSION
        assert f.attrs["statistics"] == "ema"
        assert f.attrs["bncli_version"] == bncli.__version__
        config = json.loads(f.attrs["config"])
        assert config["momentum"] == 0.8
        assert sorted(f["variables"]) == [
            "beta",
            "gamma",
            "moving_mean",
            "moving_variance",
        ]
        assert f["variables/gamma"].dtype == np.float32
        assert f["accumulators/moving_mean"].dtype == np.float64
        assert [x.decode() for x in f["features"][()]] == ["0", "1", "2", "3"]
        assert f["progress"].attrs["batches_seen"] == 3


def test_bfloat16_variables_round_trip(tmp_path):
    bn = bncli.BatchNormalization(dtype="bfloat16")
    bn(np.ones((4, 2)), training=True)
    bn.save(tmp_path / "b.h5")
    back = bncli.load(tmp_path / "b.h5")
    assert back.moving_mean.dtype.name == "bfloat16"
    np.testing.assert_array_equal(
        back.moving_mean.astype(np.float32), bn.moving_mean.astype(np.float32)
    )


#: A valid resume record, for damaging one key at a time.
_RESUME = {
    "inputs": ["/data/x.parquet"],
    "batch_size": 32,
    "epochs": 1,
    "drop_remainder": False,
    "replicas": 1,
    "mask_column": None,
    "mask": None,
    "nan_policy": "error",
    "epoch": 0,
    "sample": 64,
}


def test_a_resume_record_round_trips_with_or_without_files(fitted):
    _, path = fitted
    files = [{"path": "/data/x.parquet", "size": 10, "mtime_ns": 5}]
    for record in (
        _RESUME,
        _RESUME | {"files": files},
        _RESUME | {"delimiter": ";", "array": "x"},
        _RESUME | {"delimiter": "\t", "array": None},
    ):
        _mutate(path, lambda f, r=record: f.attrs.__setitem__("resume", json.dumps(r)))
        assert bncli.load(path).resume == record


def _mutate(path, fn):
    """Change a state's content, and seal it again: whole bytes, bad content."""
    with h5py.File(path, "r+") as f:
        fn(f)
    seal(path)


@pytest.mark.parametrize(
    ("mutation", "message"),
    [
        (lambda f: f.attrs.__setitem__("format", "other"), "not a bncli state"),
        (
            lambda f: f.attrs.__setitem__("format_version", FORMAT_VERSION + 1),
            "newer than this bncli",
        ),
        (lambda f: f.attrs.__setitem__("config", "{not json"), "corrupt state"),
        (
            lambda f: f.attrs.__setitem__("axis", 7),
            "sample shape, axis and channels disagree",
        ),
        (lambda f: f["accumulators"].__delitem__("moving_mean"), "corrupt state"),
        (
            lambda f: (
                f["variables"].__delitem__("gamma"),
                f["variables"].create_dataset("gamma", data=np.ones(9)),
            ),
            "shape",
        ),
        (lambda f: f["progress"].attrs.__setitem__("batches_seen", -1), "negative"),
        (lambda f: f["variables"].__delitem__("beta"), "center/scale"),
        (
            lambda f: f.attrs.__setitem__("resume", json.dumps(_RESUME | {"files": 3})),
            "resume record: bad 'files'",
        ),
        (
            lambda f: f.attrs.__setitem__(
                "resume", json.dumps(_RESUME | {"files": [{"path": "x", "size": -1}]})
            ),
            "resume record: bad 'files'",
        ),
        *[
            (
                lambda f, v=value: f.attrs.__setitem__(
                    "resume", json.dumps(_RESUME | v)
                ),
                f"resume record: bad {next(iter(value))!r}",
            )
            for value in (
                {"delimiter": ";;"},
                {"delimiter": '"'},
                {"delimiter": "\n"},
                {"delimiter": 7},
                {"array": 1},
            )
        ],
    ],
)
def test_invalid_states_are_refused(fitted, mutation, message):
    _, path = fitted
    _mutate(path, mutation)
    with pytest.raises(StateError, match=message):
        bncli.load(path)


def test_not_hdf5_and_missing(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"hello")
    with pytest.raises(StateError, match="not an HDF5 file"):
        read_state(tmp_path / "x.h5")
    with pytest.raises(StateNotFoundError):
        read_state(tmp_path / "none.h5")
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.ones(3)
    with pytest.raises(StateError, match="not a bncli state"):
        read_state(tmp_path / "plain.h5")


def test_save_replaces_atomically_and_leaves_no_temporary(fitted, monkeypatch):
    bn, path = fitted
    before = path.read_bytes()
    inode = path.stat().st_ino

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    import bncli.state as state_module

    monkeypatch.setattr(state_module, "write_vector", boom)
    with pytest.raises(RuntimeError):
        bn.save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(path.parent)) == ["s.h5"]
    monkeypatch.undo()
    bn.save(path)
    assert path.stat().st_ino != inode  # a new file renamed into place


def test_lock_is_exclusive_and_removed(tmp_path):
    path = tmp_path / "s.h5"
    with lock(path):
        assert lock_path(path).exists()
        with pytest.raises(StateLockedError, match="in use by another process"):
            with lock(path):
                pass
    assert not lock_path(path).exists()


def test_only_dead_writers_temporaries_are_removed(tmp_path):
    import subprocess

    from bncli.io import atomic

    finished = subprocess.Popen(["true"])
    finished.wait()
    path = tmp_path / "s.h5"
    stale = tmp_path / f".s.h5.bncli-tmp-{atomic.HOST}-{finished.pid}-abc"
    live = tmp_path / f".s.h5.bncli-tmp-{atomic.HOST}-{os.getppid()}-def"
    foreign = tmp_path / f".s.h5.bncli-tmp-otherhost-{finished.pid}-ghi"
    odd = tmp_path / ".s.h5.bncli-tmp-abc"
    for p in (stale, live, foreign, odd):
        p.write_bytes(b"half")
    with lock(path):
        pass
    assert not stale.exists()
    assert live.exists() and foreign.exists() and odd.exists()


def test_a_transform_removes_a_killed_transforms_temporary(tmp_path, run_cli):
    import subprocess

    from bncli.io import atomic

    finished = subprocess.Popen(["true"])
    finished.wait()
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    run_cli("fit", "s.h5", "x.npy")
    stale = tmp_path / f".y.npy.bncli-tmp-{atomic.HOST}-{finished.pid}-abc"
    stale.write_bytes(b"half an output")
    assert run_cli("transform", "s.h5", "x.npy", "-o", "y.npy").exit_code == 0
    assert not stale.exists() and (tmp_path / "y.npy").exists()


# ------------------------------------------------------------------ the seal


def test_a_state_is_sealed_and_still_plain_hdf5(fitted):
    import hashlib

    from bncli.io.detect import SEAL_MAGIC
    from bncli.state import USERBLOCK_SIZE

    _, path = fitted
    data = path.read_bytes()
    digest = hashlib.sha256(data[USERBLOCK_SIZE:]).hexdigest().encode()
    assert data.startswith(SEAL_MAGIC + digest + b"\n")
    with h5py.File(path, "r") as f:  # any HDF5 reader still opens it
        assert f.userblock_size == USERBLOCK_SIZE
        assert f.attrs["format"] == "bncli-state"


@pytest.mark.parametrize("where", [0.2, 0.5, -1])
def test_a_damaged_sealed_state_never_reaches_libhdf5(fitted, monkeypatch, where):
    """libhdf5 can loop forever on a damaged file: the checksum stops it first."""
    from bncli.state import USERBLOCK_SIZE, is_state

    _, path = fitted
    data = bytearray(path.read_bytes())
    position = len(data) - 1 if where == -1 else int(len(data) * where)
    assert position >= USERBLOCK_SIZE
    data[position] ^= 0x01
    path.write_bytes(data)

    def no_hdf5(*args, **kwargs):
        raise AssertionError("libhdf5 was given a damaged file")

    monkeypatch.setattr(h5py, "File", no_hdf5)
    assert is_state(path)  # by its user block: read_state says what is wrong
    with pytest.raises(StateError, match="checksum mismatch"):
        bncli.load(path)


def test_states_without_a_seal_still_load(fitted, tmp_path):
    """States written before format version 2 have no user block."""
    from bncli.state import write_contents

    bn, _ = fitted
    legacy = tmp_path / "legacy.h5"
    with h5py.File(legacy, "w") as f:
        write_contents(f, bn.to_state())
        f.attrs["format_version"] = 1
    assert legacy.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"
    np.testing.assert_array_equal(bncli.load(legacy).moving_mean64, bn.moving_mean64)
