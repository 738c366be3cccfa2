"""Every bad input, as a table: exit code, a piece of the message, nothing changed.

Each case runs in a fresh copy of the same folder of inputs and states; the
folder is compared file by file (hidden ones too: temporaries, lock files)
before and after, so an error can neither leave a partial output nor touch
a state (bytes and mtime). The one line on stderr starts with ``error:``,
there is no traceback, and the message names the file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import bncli
from bncli.cli.main import main
from bncli.state import FORMAT_VERSION, lock, seal
from tests.conftest import FAST, PRECISE
from tests.reliability.helpers import snapshot

ROOT_USER = hasattr(os, "geteuid") and os.geteuid() == 0


def _table(path: Path, n: int = 100, seed: int = 0, **columns: object) -> None:
    rng = np.random.default_rng(seed)
    data = {"a": rng.normal(size=n), "b": rng.normal(size=n)}
    data.update(columns)
    pq.write_table(pa.table(data), path)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(1)
    n = 100
    _table(d / "good.parquet", s=[f"x{i}" for i in range(n)], keep=rng.random(n) > 0.3)
    pq.write_table(pa.table({"a": rng.normal(size=n)}), d / "other.parquet")
    a = rng.normal(size=n)
    a[57] = np.nan
    _table(d / "nan.parquet", a=a)
    _table(d / "nanfull.parquet", a=a, s=["y"] * n, keep=np.ones(n, dtype=bool))
    b = rng.normal(size=40)
    b[5] = np.nan
    _table(d / "nan2.parquet", n=40, b=b)
    pq.write_table(
        pa.table({"a": pa.array([], pa.float64()), "b": pa.array([], pa.float64())}),
        d / "zero.parquet",
    )
    (d / "good.csv").write_text("a,b\n1,2\n3,4\n5,7\n")
    (d / "inf.csv").write_text("a,b\n1,2\n3,inf\n5,6\n")
    (d / "notes.txt").write_text("not data\n")
    (d / "csv_as.parquet").write_text("a,b\n1,2\n")
    (d / "empty.parquet").write_bytes(b"")
    (d / "rand.parquet").write_bytes(rng.bytes(600))
    (d / "rand.npy").write_bytes(rng.bytes(600))
    (d / "rand.csv").write_bytes(b"\xf5\xff" + rng.bytes(600))
    whole = (d / "good.parquet").read_bytes()
    (d / "trunc.parquet").write_bytes(whole[: len(whole) // 2])

    np.save(d / "arr.npy", rng.normal(size=(50, 3)))
    ninf = rng.normal(size=(20, 3))
    ninf[7, 2] = -np.inf
    np.save(d / "ninf.npy", ninf)
    np.save(d / "arr4.npy", rng.normal(size=(10, 4)))
    np.save(d / "one.npy", rng.normal(size=5))
    np.save(d / "empty.npy", np.zeros((0, 3)))
    np.save(d / "hollow.npy", np.zeros((6, 0, 3)))
    np.save(d / "obj.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    np.save(d / "mask_bad.npy", np.ones(49, dtype=bool))
    whole = (d / "arr.npy").read_bytes()
    (d / "trunc.npy").write_bytes(whole[:-100])
    # '{' of the header dict made 'z': NumPy's header parser raises TokenError.
    (d / "header.npy").write_bytes(whole[:10] + b"z" + whole[11:])
    np.savez(d / "pair.npz", gamma=np.ones(2))
    os.replace(d / "pair.npz", d / "npz_as.npy")
    np.save(d / "strings.npy", np.array(["1", "2"]))

    st = bncli.BatchNormalization()
    st.fit(d / "good.parquet")
    st.save(d / "st.h5")
    arr = bncli.BatchNormalization()
    arr.fit(d / "arr.npy")
    arr.save(d / "arr.h5")
    frozen = bncli.load(d / "st.h5")
    frozen.trainable = False
    frozen.save(d / "frozen.h5")
    # States whose bytes are whole (sealed again after the change) but whose
    # content is not: from a newer bncli, or written wrongly by some tool.
    shutil.copy(d / "st.h5", d / "future.h5")
    with h5py.File(d / "future.h5", "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    seal(d / "future.h5")
    shutil.copy(d / "st.h5", d / "nanstate.h5")
    with h5py.File(d / "nanstate.h5", "a") as f:
        f["accumulators/moving_variance"][0] = np.nan
    seal(d / "nanstate.h5")
    shutil.copy(d / "st.h5", d / "badresume.h5")
    with h5py.File(d / "badresume.h5", "a") as f:
        f.attrs["resume"] = '{"inputs": 7}'
    seal(d / "badresume.h5")
    damaged = bytearray((d / "st.h5").read_bytes())
    damaged[-100] ^= 0x10  # one bit, in the HDF5 part
    (d / "flipped.h5").write_bytes(damaged)
    with h5py.File(d / "foreign.h5", "w") as f:
        f["x"] = np.arange(3)
    whole = (d / "st.h5").read_bytes()
    (d / "corrupt.h5").write_bytes(whole[: len(whole) // 3])
    (d / "randstate.h5").write_bytes(rng.bytes(4000))
    (d / "rand.keras").write_bytes(rng.bytes(700))
    with pytest.raises(SystemExit):  # a real model, by bncli's own export
        main(["export", str(d / "st.h5"), str(d / "model.keras")])
    whole = (d / "model.keras").read_bytes()
    (d / "trunc.keras").write_bytes(whole[: len(whole) // 2])
    pq.write_table(pa.table({"a": [1.0]}), d / "out.parquet")
    (d / "sub").mkdir()
    return d


@pytest.fixture
def workdir(tmp_path, template):
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    return tmp_path


def unreadable(d: Path) -> contextlib.AbstractContextManager[None]:
    (d / "good.parquet").chmod(0)
    return contextlib.nullcontext()


def locked(d: Path) -> contextlib.AbstractContextManager[None]:
    return lock(d / "st.h5")  # another holder: flock conflicts across descriptors


ROOT_SKIP = pytest.mark.skipif(
    ROOT_USER, reason="running as root: chmod 000 does not stop root from reading"
)

P = pytest.param
# fmt: off
CASES = [
    # ------------------------------------------------------- input data: 3
    P(["fit", "n.h5", "missing.parquet"], 3, ["missing.parquet", "no such file"], id="missing-input"),
    P(["transform", "st.h5", "missing.csv", "-o", "o.csv"], 3, ["missing.csv", "no such file"], id="missing-input-transform"),
    P(["fit", "n.h5", "good.parquet"], 3, ["good.parquet", "permission denied"], id="unreadable", marks=ROOT_SKIP),
    P(["fit", "n.h5", "trunc.parquet"], 3, ["trunc.parquet", "cannot read as parquet"], id="truncated-parquet"),
    P(["fit", "n.h5", "trunc.npy"], 3, ["trunc.npy", "truncated NPY file: its header claims 1,200 bytes of data (shape (50, 3), float64), the file holds 1,100"], id="truncated-npy"),
    P(["fit", "n.h5", "rand.parquet"], 3, ["rand.parquet", "not a valid parquet file"], id="random-parquet"),
    P(["fit", "n.h5", "rand.npy"], 3, ["rand.npy", "not a valid npy file"], id="random-npy"),
    P(["fit", "n.h5", "header.npy"], 3, ["header.npy", "cannot read the NPY"], id="damaged-npy-header"),
    P(["fit", "n.h5", "arr.npy", "--mask", "header.npy"], 3, ["header.npy", "cannot read the mask"], id="damaged-mask-header"),
    P(["fit", "n.h5", "rand.csv"], 3, ["rand.csv", "cannot read as csv"], id="random-csv"),
    P(["fit", "n.h5", "notes.txt"], 3, ["notes.txt", "unrecognized format", ".parquet"], id="wrong-extension"),
    P(["fit", "n.h5", "csv_as.parquet"], 3, ["csv_as.parquet", "not a valid parquet file"], id="extension-contradicts-content"),
    P(["fit", "n.h5", "empty.parquet"], 3, ["empty.parquet", "empty file"], id="empty-file"),
    P(["fit", "n.h5", "zero.parquet"], 3, ["zero.parquet", "empty input"], id="empty-table"),
    P(["fit", "n.h5", "empty.npy"], 3, ["empty.npy", "empty input"], id="empty-array"),
    P(["fit", "n.h5", "hollow.npy"], 3, ["hollow.npy", "samples of shape (0, 3) hold no values"], id="samples-without-values"),
    P(["fit", "st.h5", "zero.parquet"], 3, ["zero.parquet", "empty input"], id="empty-input-with-state"),
    P(["transform", "st.h5", "zero.parquet", "-o", "o.parquet"], 3, ["zero.parquet", "empty input"], id="empty-input-transform"),
    P(["fit", "n.h5", "sub"], 3, ["sub", "no data files"], id="empty-folder"),
    P(["fit", "n.h5", "good.parquet", "--columns", "a,s"], 3, ["good.parquet", "column 's'", "not numeric"], id="non-numeric-column"),
    P(["fit", "n.h5", "good.parquet", "--columns", "a,zz"], 3, ["good.parquet", "'zz' not found"], id="missing-column"),
    P(["fit", "n.h5", "good.parquet", "--exclude", "zz"], 3, ["good.parquet", "'zz'"], id="missing-excluded-column"),
    P(["fit", "n.h5", "good.parquet", "--mask-column", "zz"], 3, ["good.parquet", "mask column 'zz' not found"], id="missing-mask-column"),
    P(["fit", "n.h5", "good.parquet", "--mask-column", "s"], 3, ["good.parquet", "column 's'", "boolean"], id="non-boolean-mask-column"),
    P(["fit", "n.h5", "nan.parquet"], 3, ["error: nan.parquet: column 'a', row 57: NaN", "--nan-policy mask"], id="nan-parquet"),
    P(["fit", "n.h5", "good.parquet", "nan2.parquet"], 3, ["nan2.parquet: column 'b', row 5: NaN"], id="nan-in-second-file"),
    P(["fit", "n.h5", "inf.csv", "--batch-size", "2"], 3, ["inf.csv: column 'b', row 1: infinity"], id="inf-csv"),
    P(["fit", "n.h5", "ninf.npy"], 3, ["ninf.npy: column '2', row 7: infinity"], id="minus-inf-npy"),
    P(["transform", "st.h5", "nan.parquet", "-o", "o.parquet"], 3, ["nan.parquet: column 'a', row 57: NaN"], id="nan-transform"),
    P(["transform", "st.h5", "good.parquet", "nanfull.parquet", "-o", "o.parquet"], 3, ["nanfull.parquet: column 'a', row 57"], id="nan-after-output-started"),
    P(["transform", "st.h5", "good.parquet", "nanfull.parquet", "-o", "o.parquet", "--training"], 3, ["nanfull.parquet: column 'a', row 57"], id="nan-transform-training"),
    P(["fit", "n.h5", "good.parquet", "other.parquet"], 3, ["other.parquet", "column 'b' is missing"], id="inputs-disagree-tables"),
    P(["fit", "n.h5", "arr.npy", "arr4.npy"], 3, ["arr4.npy", "sample shape (4,)"], id="inputs-disagree-arrays"),
    P(["fit", "n.h5", "good.parquet", "arr.npy"], 3, ["arr.npy", "mix tables and NPY"], id="tables-and-arrays"),
    P(["fit", "n.h5", "one.npy"], 3, ["one.npy", "1-D array"], id="one-dimensional"),
    P(["fit", "n.h5", "obj.npy"], 3, ["obj.npy", "pickle"], id="object-array"),
    P(["fit", "n.h5", "arr.npy", "--mask", "mask_bad.npy"], 3, ["mask_bad.npy", "mask of shape (49,)", "(50,)"], id="mask-wrong-shape"),
    P(["fit", "n.h5", "arr.npy", "--mask", "rand.npy"], 3, ["rand.npy"], id="mask-not-npy"),
    P(["transform", "st.h5", "good.parquet", "nan2.parquet", "-o", "o.parquet"], 3, ["nan2.parquet", "columns differ from the first input's"], id="transform-other-columns-differ"),
    P(["transform", "st.h5", "other.parquet", "-o", "o.parquet"], 3, ["other.parquet", "column 'b'"], id="transform-channels-differ"),
    P(["transform", "arr.h5", "arr4.npy", "-o", "o.npy"], 3, ["arr4.npy"], id="transform-array-channels-differ"),
    # --------------------------------------------------- usage, values: 2
    P(["fit", "n.h5", "arr.npy", "--axis", "5"], 2, ["arr.npy", "axis 5 is out of bounds"], id="axis-out-of-bounds"),
    P(["fit", "n.h5", "arr.npy", "--axis", "0"], 2, ["arr.npy", "axis 0"], id="axis-zero"),
    P(["fit", "n.h5", "arr.npy", "--axis", "x"], 2, ["--axis", "not a valid integer"], id="axis-not-int"),
    P(["fit", "n.h5", "good.parquet", "--batch-size", "0"], 2, ["--batch-size"], id="batch-size-zero"),
    P(["fit", "n.h5", "good.parquet", "--batch-size", "-3"], 2, ["--batch-size"], id="batch-size-negative"),
    P(["fit", "n.h5", "good.parquet", "--epochs", "0"], 2, ["--epochs"], id="epochs-zero"),
    P(["fit", "n.h5", "good.parquet", "--replicas", "0"], 2, ["--replicas"], id="replicas-zero"),
    P(["fit", "n.h5", "good.parquet", "--momentum", "1.5"], 2, ["--momentum", "0<=x<=1"], id="momentum-above-1"),
    P(["fit", "n.h5", "good.parquet", "--momentum", "-0.1"], 2, ["--momentum"], id="momentum-below-0"),
    P(["fit", "n.h5", "good.parquet", "--momentum", "nan"], 2, ["momentum"], id="momentum-nan"),
    P(["fit", "n.h5", "good.parquet", "--epsilon", "0"], 2, ["--epsilon"], id="epsilon-zero"),
    P(["fit", "n.h5", "good.parquet", "--epsilon", "-1e-3"], 2, ["--epsilon"], id="epsilon-negative"),
    P(["fit", "n.h5", "good.parquet", "--epsilon", "inf"], 2, ["epsilon"], id="epsilon-inf"),
    P(["fit", "n.h5", "good.parquet", "--gamma-initializer", "bogus"], 2, ["--gamma-initializer", "unknown initializer 'bogus'", "zeros"], id="unknown-initializer"),
    P(["fit", "n.h5", "good.parquet", "--beta-regularizer", "l3"], 2, ["--beta-regularizer", "l3"], id="unknown-regularizer"),
    P(["fit", "n.h5", "good.parquet", "--gamma-constraint", "max_norm:x"], 2, ["--gamma-constraint"], id="bad-constraint-argument"),
    P(["fit", "n.h5", "good.parquet", "--dtype", "int8"], 2, ["--dtype"], id="bad-dtype"),
    P(["fit", "n.h5", "good.parquet", "--nan-policy", "drop"], 2, ["--nan-policy"], id="bad-nan-policy"),
    P(["fit", "n.h5", "good.parquet", "--no-such-flag"], 2, ["--no-such-flag"], id="unknown-flag"),
    P(["frobnicate"], 2, ["error: No such command 'frobnicate'. (see: bncli --help)"], id="unknown-command"),
    P(["--bogus"], 2, ["error: No such option '--bogus'"], id="unknown-top-level-option"),
    P(["fit", "n.h5", "good.parquet", "--columns", "a", "--exclude", "b"], 2, ["--columns and --exclude"], id="columns-and-exclude"),
    P(["fit", "n.h5", "-", "--epochs", "2"], 2, ["stdin", "replayed"], id="stdin-epochs"),
    P(["fit", "n.h5"], 2, ["INPUT"], id="no-input"),
    P(["fit", "nodir/n.h5", "good.parquet"], 2, ["nodir/n.h5", "folder", "does not exist"], id="state-folder-missing"),
    P(["transform", "st.h5", "good.parquet", "-o", "out.parquet"], 2, ["out.parquet", "output exists", "--overwrite"], id="output-exists"),
    P(["transform", "st.h5", "good.parquet", "-o", "good.parquet"], 2, ["good.parquet", "one of the inputs"], id="output-is-input"),
    P(["transform", "st.h5", "good.parquet", "-o", "./good.parquet", "--overwrite"], 2, ["good.parquet", "one of the inputs"], id="output-is-input-overwrite"),
    P(["transform", "st.h5", "good.parquet", "-o", "nodir/o.parquet"], 2, ["nodir/o.parquet", "does not exist"], id="output-folder-missing"),
    P(["transform", "st.h5", "good.parquet", "-o", "o.xlsx"], 2, ["o.xlsx", "unknown output extension"], id="output-extension"),
    P(["transform", "st.h5", "good.parquet", "-o", "o.parquet", "--columns", "a"], 2, ["--columns"], id="transform-columns"),
    P(["export", "st.h5", "out.parquet"], 2, ["out.parquet"], id="export-extension"),
    P(["set", "st.h5", "--gamma", "1,2,3"], 2, ["--gamma", "3 values", "2 channels"], id="set-wrong-count"),
    P(["fit", "n.h5", "good.parquet", "--columns", "a,b", "--dtype", "float16", "--gamma-initializer", "constant:1e6"], 2, ["gamma_initializer: 1e+06 does not fit the float16 variables", "wider policy"], id="initializer-overflows-float16"),
    P(["fit", "n.h5", "good.parquet", "--columns", "a,b", "--dtype", "mixed_bfloat16", "--moving-variance-initializer", "constant:1e39"], 2, ["moving_variance_initializer: 1e+39 does not fit the float32 variables"], id="initializer-overflows-float32"),
    P(["set", "st.h5", "--gamma", "1e39,1"], 2, ["gamma: 1e+39 does not fit the float32 variables"], id="set-overflows-float32"),
    P(["set", "st.h5", "--gamma", "header.npy"], 2, ["--gamma", "cannot read header.npy"], id="set-damaged-npy"),
    P(["set", "st.h5", "--gamma", "obj.npy"], 2, ["--gamma", "cannot read obj.npy"], id="set-object-npy"),
    P(["set", "st.h5", "--gamma", "npz_as.npy"], 2, ["--gamma", "cannot read npz_as.npy", "zip archive"], id="set-npz-named-npy"),
    P(["set", "st.h5", "--gamma", "strings.npy"], 2, ["--gamma", "strings.npy", "not numbers"], id="set-string-npy"),
    # ------------------------------------------------------------ state: 4
    P(["transform", "none.h5", "good.parquet", "-o", "o.parquet"], 4, ["none.h5", "not found"], id="missing-state"),
    P(["inspect", "none.h5"], 4, ["none.h5"], id="missing-state-inspect"),
    P(["fit", "none.h5", "--resume"], 4, ["none.h5", "nothing to resume"], id="resume-missing-state"),
    P(["fit", "st.h5", "--resume"], 4, ["st.h5", "nothing to resume"], id="resume-nothing"),
    P(["fit", "corrupt.h5", "good.parquet"], 4, ["corrupt.h5", "corrupt state"], id="truncated-state"),
    P(["inspect", "corrupt.h5"], 4, ["corrupt.h5"], id="truncated-state-inspect"),
    P(["fit", "randstate.h5", "good.parquet"], 4, ["randstate.h5", "not an HDF5 file"], id="random-state"),
    P(["fit", "foreign.h5", "good.parquet"], 4, ["foreign.h5", "not a bncli state"], id="foreign-state"),
    P(["inspect", "foreign.h5"], 4, ["foreign.h5", "neither a bncli state nor a Keras model"], id="foreign-inspect"),
    P(["transform", "future.h5", "good.parquet", "-o", "o.parquet"], 4, ["future.h5", f"version {FORMAT_VERSION + 1} is newer", "upgrade bncli"], id="future-state"),
    P(["fit", "flipped.h5", "good.parquet"], 4, ["flipped.h5", "corrupt state (checksum mismatch"], id="state-checksum"),
    P(["fit", "nanstate.h5", "good.parquet"], 4, ["nanstate.h5", "moving_variance has invalid values"], id="nan-in-state"),
    P(["fit", "badresume.h5", "--resume"], 4, ["badresume.h5", "resume record"], id="bad-resume-record"),
    P(["fit", "good.parquet", "good.parquet"], 4, ["good.parquet", "not a bncli state"], id="state-is-the-input"),
    P(["fit", "arr.h5", "arr4.npy"], 4, ["arr4.npy", "channels differ from the state's"], id="channels-differ-from-state"),
    P(["fit", "st.h5", "other.parquet"], 4, ["other.parquet", "column 'b'"], id="columns-missing-for-state"),
    P(["fit", "st.h5", "arr.npy"], 4, ["arr.npy"], id="arrays-for-table-state"),
    P(["fit", "st.h5", "good.parquet", "--columns", "b,a"], 4, ["st.h5", "contradicts the state's channels"], id="columns-contradict-state"),
    P(["fit", "st.h5", "good.parquet", "--momentum", "0.5"], 4, ["st.h5", "--momentum 0.5 contradicts", "0.99"], id="momentum-contradicts-state"),
    P(["fit", "st.h5", "good.parquet", "--no-center"], 4, ["st.h5", "--center"], id="center-contradicts-state"),
    P(["fit", "st.h5", "good.parquet", "--gamma-initializer", "zeros"], 4, ["st.h5", "--gamma-initializer"], id="initializer-contradicts-state"),
    P(["fit", "frozen.h5", "good.parquet"], 4, ["frozen.h5", "frozen", "bncli unfreeze"], id="frozen-state"),
    P(["fit", "st.h5", "good.parquet"], 4, ["st.h5", "in use by another process", "--wait"], id="state-in-use"),
    P(["freeze", "st.h5"], 4, ["st.h5", "in use"], id="state-in-use-freeze"),
    P(["inspect", "rand.keras"], 4, ["rand.keras", "neither a bncli state nor a Keras model"], id="random-model"),
    P(["import", "rand.keras", "-o", "i.h5"], 4, ["rand.keras", "not a Keras model"], id="import-random-model"),
    P(["import", "trunc.keras", "-o", "i.h5"], 4, ["trunc.keras", "corrupt Keras archive"], id="import-truncated-model"),
    P(["import", "model.keras", "-o", "st.h5"], 2, ["st.h5", "output exists"], id="import-output-exists"),
    P(["export", "st.h5", "model.keras"], 2, ["model.keras", "output exists"], id="export-output-exists"),
    P(["export", "st.h5", "nodir/m.keras"], 2, ["nodir/m.keras", "does not exist"], id="export-folder-missing"),
]
# fmt: on
SETUP = {
    "unreadable": unreadable,
    "state-in-use": locked,
    "state-in-use-freeze": locked,
}


@pytest.mark.parametrize(("args", "code", "pieces"), CASES)
def test_bad_input(request, run_cli, workdir, args, code, pieces):
    setup = SETUP.get(request.node.callspec.id, lambda d: contextlib.nullcontext())
    with setup(workdir):
        before = snapshot(workdir)
        result = run_cli(*args, input=b"")
        after = snapshot(workdir)
    assert result.exit_code == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for piece in pieces:
        assert piece in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert after == before  # nothing written, nothing changed (states: bytes, mtime)


@pytest.mark.parametrize(
    ("module", "args", "code", "message"),
    [
        ("bncli.io.detect", ["fit", "n.h5", "good.parquet"], 3,
         "good.parquet: cannot read the file (permission denied)"),
        ("bncli.state", ["fit", "st.h5", "good.parquet"], 4,
         "st.h5: cannot read the state (permission denied)"),
        ("bncli.cli.inspect", ["inspect", "st.h5"], 4,
         "st.h5: cannot read the file (permission denied)"),
    ],
)  # fmt: skip
def test_unreadable_files_even_as_root(
    run_cli, workdir, monkeypatch, module, args, code, message
):
    """The table's chmod-000 case skips as root (root reads anything): the
    same PermissionError, raised where the file is opened, must give the same
    answer."""
    import builtins
    import importlib

    denied_name = args[2] if module == "bncli.io.detect" else args[1]

    def denied(path, *a, **kw):
        if str(path).endswith(denied_name):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *a, **kw)

    monkeypatch.setattr(importlib.import_module(module), "open", denied, raising=False)
    before = snapshot(workdir)
    result = run_cli(*args)
    assert result.exit_code == code, result.stderr
    assert result.stderr == f"error: {message}\n"
    assert snapshot(workdir) == before


def test_debug_shows_the_traceback(run_cli, workdir):
    result = run_cli("fit", "n.h5", "nan.parquet", "--debug")
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr
    assert (
        result.stderr.rstrip()
        .splitlines()[-1]
        .startswith("error: nan.parquet: column 'a'")
    )
    assert not (workdir / "n.h5").exists()


def test_unexpected_errors_exit_1_and_point_to_debug(run_cli, workdir, monkeypatch):
    import bncli.layer

    def broken(path):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(bncli.layer, "load", broken)
    result = run_cli("transform", "st.h5", "good.parquet", "-o", "o.parquet")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: unexpected RuntimeError: something nobody foresaw "
        "(run with --debug for the traceback)"
    ]
    result = run_cli("transform", "st.h5", "good.parquet", "-o", "o.parquet", "--debug")
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_nan_policy_mask_treats_nan_as_masked(run_cli, workdir):
    """--nan-policy mask equals the same table with null cells (masked per channel)."""
    result = run_cli(
        "fit", "m.h5", "nan.parquet", "--nan-policy", "mask", "--batch-size", "16"
    )
    assert result.exit_code == 0, result.stderr
    table = pq.read_table(workdir / "nan.parquet")
    a = table["a"].to_numpy(zero_copy_only=False)
    nulls = pa.table({"a": pa.array(a, mask=np.isnan(a)), "b": table["b"]})
    pq.write_table(nulls, workdir / "nulls.parquet")
    want = bncli.BatchNormalization()
    want.fit(workdir / "nulls.parquet", batch_size=16)
    got = bncli.load(workdir / "m.h5")
    np.testing.assert_allclose(got.moving_mean64, want.moving_mean64, **FAST)
    np.testing.assert_allclose(got.moving_variance64, want.moving_variance64, **FAST)
    np.testing.assert_array_equal(got.channel_batches, want.channel_batches)


def test_channels_of_different_types_join_across_files(run_cli, workdir):
    """A batch spanning a float32 file and a float64 one, whose columns differ in order."""
    rng = np.random.default_rng(4)
    x = rng.normal(3, 2, size=(30, 2))
    pq.write_table(
        pa.table({"a": x[:13, 0].astype(np.float32), "b": x[:13, 1]}), "f32.parquet"
    )
    pq.write_table(pa.table({"b": x[13:, 1], "a": x[13:, 0]}), "f64.parquet")
    result = run_cli("fit", "j.h5", "f32.parquet", "f64.parquet", "--batch-size", "4")
    assert result.exit_code == 0, result.stderr
    x[:13, 0] = x[:13, 0].astype(np.float32)
    want = bncli.BatchNormalization()
    for start in range(0, 30, 4):
        want(x[start : start + 4], training=True)
    got = bncli.load(workdir / "j.h5")
    np.testing.assert_allclose(got.moving_mean64, want.moving_mean64, **PRECISE)
    np.testing.assert_allclose(got.moving_variance64, want.moving_variance64, **PRECISE)
    result = run_cli(
        "transform",
        "j.h5",
        "f32.parquet",
        "f64.parquet",
        "-o",
        "t.parquet",
        "--training",
        "--batch-size",
        "4",
    )
    assert result.exit_code == 0, result.stderr
    assert pq.read_table(workdir / "t.parquet").num_rows == 30
