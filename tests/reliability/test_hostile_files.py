"""Crafted HDF5 and Keras files: nothing read from outside them, bounded work.

HDF5 lets a dataset keep its bytes in any local file (external storage) or
map other files' datasets (virtual datasets); a crafted state or model would
then make ``inspect --json`` print a private file as gamma. Each test crafts
its file itself, with h5py, the way an attacker would.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import zipfile

import h5py
import numpy as np
import pytest

from bncli.state import seal

pytestmark = pytest.mark.slow

BNCLI = (sys.executable, "-m", "bncli")
SECRET = b"TOP-SECRET-0123456789abcdef" * 4  # 108 bytes: 27 float32 values


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.key"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


@pytest.fixture
def state(run_cli, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(64, 2)))
    assert run_cli("fit", "s.h5", "x.npy", "--quiet").exit_code == 0
    return tmp_path / "s.h5"


def _point_outside(f, name, secret, how):
    """Replace dataset ``name`` by one whose data lives in ``secret``."""
    shape, dtype = f[name].shape, f[name].dtype
    del f[name]
    if how == "external":
        f.create_dataset(
            name, shape, dtype, external=[(str(secret), 0, shape[0] * dtype.itemsize)]
        )
    else:
        with h5py.File(secret.with_suffix(".h5"), "w") as other:
            other["data"] = np.frombuffer(SECRET[:8], np.float32)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(secret.with_suffix(".h5"), "data", shape=shape)
        f.create_virtual_dataset(name, layout)


def _no_secret(result) -> None:
    assert b"TOP-SECRET" not in (result.stdout or b"")
    floats = np.frombuffer(SECRET[:8], np.float32)
    for value in floats:
        assert repr(float(value)) not in result.stdout.decode(errors="replace")


@pytest.mark.parametrize("how", ["external", "virtual"])
def test_a_state_pointing_outside_itself_is_refused(state, secret, tmp_path, how):
    with h5py.File(state, "a") as f:
        _point_outside(f, "variables/gamma", secret, how)
    seal(state)  # anyone can seal: the checksum proves integrity, not origin
    done = subprocess.run(
        [*BNCLI, "inspect", "s.h5", "--json"], capture_output=True, cwd=tmp_path
    )
    _no_secret(done)
    assert done.returncode == 4
    word = "external files" if how == "external" else "virtual dataset"
    assert done.stderr.decode().startswith(
        "error: s.h5: corrupt state (variables/gamma"
    )
    assert word in done.stderr.decode()


@pytest.mark.parametrize("how", ["external", "virtual"])
def test_a_weights_file_pointing_outside_itself_is_refused(
    run_cli, state, secret, tmp_path, how
):
    assert run_cli("export", "s.h5", "m.weights.h5").exit_code == 0
    with h5py.File(tmp_path / "m.weights.h5", "a") as f:
        _point_outside(f, "layers/batch_normalization/vars/0", secret, how)
    for args in (["inspect", "m.weights.h5", "--json"], ["import", "m.weights.h5"]):
        extra = ["-o", "i.h5"] if args[0] == "import" else []
        done = subprocess.run(
            [*BNCLI, *args, *extra], capture_output=True, cwd=tmp_path, timeout=120
        )
        _no_secret(done)
        assert done.returncode == 4, done.stderr
        assert "/layers/batch_normalization/vars/0" in done.stderr.decode()
    assert not (tmp_path / "i.h5").exists()


def test_a_keras_archive_pointing_outside_itself_is_refused(
    run_cli, state, secret, tmp_path
):
    assert run_cli("export", "s.h5", "m.keras").exit_code == 0
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    weights = tmp_path / "w.h5"
    weights.write_bytes(members["model.weights.h5"])
    with h5py.File(weights, "a") as f:
        _point_outside(f, "layers/batch_normalization/vars/0", secret, "external")
    members["model.weights.h5"] = weights.read_bytes()
    with zipfile.ZipFile(tmp_path / "bad.keras", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    result = run_cli("inspect", "bad.keras", "--json")
    assert result.exit_code == 4
    assert "TOP-SECRET" not in result.stdout
    assert "external files" in result.stderr
    # export --into or a plain export never copies the bytes either
    assert run_cli("import", "bad.keras", "-o", "i.h5").exit_code == 4
    assert not (tmp_path / "i.h5").exists()


def test_an_external_fifo_never_blocks_inspect(run_cli, state, tmp_path):
    import os

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with h5py.File(state, "a") as f:
        del f["variables/beta"]
        f.create_dataset("variables/beta", (2,), "f4", external=[(str(fifo), 0, 8)])
    seal(state)
    result = run_cli("inspect", "s.h5")  # would block forever on the FIFO
    assert result.exit_code == 4
    assert "external files" in result.stderr


def test_hard_linked_large_datasets_are_bounded(tmp_path):
    # 150 KB on disk: one unallocated 2**24-value dataset, hard-linked as every
    # variable of 64 layers (2**32 values to read if each link were read).
    path = tmp_path / "bomb.weights.h5"
    with h5py.File(path, "w") as f:
        big = f.create_dataset("big", (1 << 24,), "f4")
        for layer in range(64):
            vars_ = f.create_group(f"layers/batch_normalization_{layer}/vars")
            for i in range(4):
                vars_[str(i)] = big
    assert path.stat().st_size < 256 * 1024

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    done = subprocess.run(
        [*BNCLI, "inspect", "bomb.weights.h5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        preexec_fn=limited,
        timeout=300,
    )
    assert done.returncode == 4, done.stderr
    assert "refused as a crafted file" in done.stderr


def test_a_legitimate_round_trip_still_works(run_cli, state, tmp_path):
    # the checks refuse what points outside, nothing else
    assert run_cli("export", "s.h5", "m.weights.h5").exit_code == 0
    assert run_cli("import", "m.weights.h5", "-o", "i.h5").exit_code == 0
    original = json.loads(run_cli("inspect", "s.h5", "--json").stdout)
    imported = json.loads(run_cli("inspect", "i.h5", "--json").stdout)
    assert imported["variables"] == original["variables"]


def test_a_deflated_weights_member_is_decompressed_once(
    run_cli, state, tmp_path, monkeypatch
):
    # libhdf5 seeks back and forth; in a deflated zip member every backward
    # seek restarts the decompression, which a crafted layout turned into
    # minutes. The member is decompressed once, whatever the layout.
    assert run_cli("export", "s.h5", "m.keras").exit_code == 0
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    with zipfile.ZipFile(tmp_path / "d.keras", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    size = len(members["model.weights.h5"])
    decompressed = []
    original = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = original(self, n)
        if self.name == "model.weights.h5":
            decompressed.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counting_read)
    from bncli.keras_compat.files import read_batchnorm_layers

    (layer,) = read_batchnorm_layers(tmp_path / "d.keras")
    assert layer.channels == 2
    assert sum(decompressed) == size


def test_a_lambda_regularizer_is_unsupported_alike_in_inspect_and_import(
    run_cli, state, tmp_path
):
    assert run_cli("export", "s.h5", "m.keras").exit_code == 0
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    config = json.loads(members["config.json"])
    (layer,) = [
        layer
        for layer in config["config"]["layers"]
        if layer["class_name"] == "BatchNormalization"
    ]
    layer["config"]["gamma_regularizer"] = {
        "module": "keras.regularizers",
        "class_name": "Lambda",
        "config": {"function": "lambda x: 0"},
        "registered_name": "Lambda",
    }
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "lam.keras", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    listed = json.loads(run_cli("inspect", "lam.keras", "--json").stdout)
    (entry,) = listed["layers"]
    assert entry["supported"] is False
    assert "gamma_regularizer 'Lambda'" in entry["problem"]
    result = run_cli("import", "lam.keras", "-o", "i.h5")
    assert result.exit_code == 4
    assert result.stderr.startswith(
        "error: lam.keras: layer 'batch_normalization': gamma_regularizer 'Lambda' "
        "is not supported"
    )
    assert not (tmp_path / "i.h5").exists()


def test_a_parse_that_never_ends_is_killed_and_refused(
    run_cli, state, tmp_path, monkeypatch
):
    # What libhdf5 does on some damaged files (HDFGroup/hdf5#1707): loop
    # forever in C. Here the parse sleeps instead; the child that runs it is
    # killed at the deadline and the file refused, naming it.
    import os
    import time

    from bncli.io import child
    from bncli.keras_compat import files

    assert run_cli("export", "s.h5", "m.weights.h5").exit_code == 0
    children = []
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid:
            children.append(pid)
        return pid

    def forever(*args, **kwargs):
        time.sleep(3600)

    monkeypatch.setattr(child, "PARSE_SECONDS", 1.0)
    monkeypatch.setattr(child.os, "fork", fork)
    monkeypatch.setattr(files, "read_hdf5_layers", forever)
    result = run_cli("inspect", "m.weights.h5")
    assert result.exit_code == 4
    assert result.stderr == (
        "error: m.weights.h5: not parsed within 1 s: the file is damaged in a way "
        "that makes libhdf5 loop (HDFGroup/hdf5#1707)\n"
    )
    assert children  # and every one of them reaped: none left running
    for pid in children:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"child {pid} still runs")


def test_the_child_sends_back_exactly_what_the_parse_read(run_cli, state, tmp_path):
    # Values cross the process boundary as bytes (no pickle): bit for bit.
    import h5py as h5

    from bncli.keras_compat.files import read_batchnorm_layers

    assert run_cli("export", "s.h5", "m.weights.h5").exit_code == 0
    (layer,) = read_batchnorm_layers(tmp_path / "m.weights.h5")
    with h5.File(tmp_path / "m.weights.h5") as f:
        stored = [f[f"layers/batch_normalization/vars/{i}"][()] for i in range(4)]
    got = [
        layer.variables[k] for k in ("gamma", "beta", "moving_mean", "moving_variance")
    ]
    for a, b in zip(got, stored, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_a_hard_link_graph_of_exponential_paths_is_bounded(run_cli, tmp_path):
    # 40 groups, each holding the next twice: 2**40 paths to walk.
    path = tmp_path / "graph.weights.h5"
    with h5py.File(path, "w") as f:
        groups = [f.create_group(f"g{i}") for i in range(40)]
        for i in range(39):
            groups[i]["a"] = groups[i + 1]
            groups[i]["b"] = groups[i + 1]
        f["layers"] = groups[0]
    result = run_cli("inspect", "graph.weights.h5")
    assert result.exit_code == 4
    assert "groups to walk; refused as a crafted file" in result.stderr
