"""Ctrl-C at the worst moments of a write, made deterministic.

The subprocess tests interrupt a real fit at a random moment; a Ctrl-C that
lands in the few bytecodes between creating a temporary and entering the
``try`` that removes it is then rare, but CI met it once. Here SIGINT is sent
from inside each step of :func:`atomic_path`, of the state writer and of the
lock, and the result must be what a Ctrl-C anywhere promises: a
KeyboardInterrupt, the old target or the new one whole, and no temporary.
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import bncli
from bncli import interrupts
from bncli.io import atomic
from bncli.state import lock, lock_path
from tests.reliability.helpers import temporaries


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own handler (KeyboardInterrupt), in the main thread."""
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def ctrl_c() -> None:
    """Press Ctrl-C: the handler runs before the next bytecode of this thread."""
    os.kill(os.getpid(), signal.SIGINT)


def pressing_ctrl_c_after(function):
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        ctrl_c()
        return result

    return wrapper


def test_deferred_holds_ctrl_c_until_the_end_of_the_block():
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        ctrl_c()
        steps.append("after the signal")
    assert steps == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_sections_nest_and_deliver_once_at_the_outer_end():
    steps = []
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        with interrupts.deferred():
            ctrl_c()
        steps.append("between")
    assert steps == ["between"]


def test_deferred_without_ctrl_c_changes_nothing():
    with interrupts.deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_deferred_outside_the_main_thread_is_a_no_op():
    seen = []

    def body():
        with interrupts.deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [signal.default_int_handler]


@pytest.mark.parametrize("directory", [False, True], ids=["file", "folder"])
@pytest.mark.parametrize(
    "step", ["create_temp", "chmod", "fsync_path", "replace", "move_into_place"]
)
def test_ctrl_c_at_any_step_of_an_atomic_write_leaves_old_or_new_whole(
    tmp_path, monkeypatch, step, directory
):
    target = tmp_path / "out"
    if directory:
        target.mkdir()
        (target / "part").write_bytes(b"old")
    else:
        target.write_bytes(b"old")
    patched = atomic.os if step in ("chmod", "replace") else atomic
    monkeypatch.setattr(patched, step, pressing_ctrl_c_after(getattr(patched, step)))
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(target, directory=directory) as tmp:
            (tmp / "part" if directory else tmp).write_bytes(b"new")
    assert temporaries(tmp_path) == []
    content = (target / "part" if directory else target).read_bytes()
    renamed = step in ("replace", "move_into_place")
    assert content == (b"new" if renamed else b"old")


def test_ctrl_c_while_a_write_is_cleaned_up_still_removes_the_temporary(
    tmp_path, monkeypatch
):
    target = tmp_path / "out"
    monkeypatch.setattr(
        atomic, "remove_path", pressing_ctrl_c_after(atomic.remove_path)
    )
    with pytest.raises(KeyboardInterrupt):  # once the cleanup is done
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert temporaries(tmp_path) == [] and not target.exists()


def test_ctrl_c_in_a_scratch_folder_removes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(
        atomic, "create_temp", pressing_ctrl_c_after(atomic.create_temp)
    )
    with pytest.raises(KeyboardInterrupt):
        with atomic.scratch_folder(tmp_path / "out"):
            pass  # pragma: no cover - Ctrl-C comes before the body
    assert temporaries(tmp_path) == []


def test_a_scratch_folder_of_a_dead_writer_is_recognized_as_stale(tmp_path):
    with atomic.scratch_folder(tmp_path / "out") as folder:
        name = folder.name
    pid = name.split("-")[-2]
    assert pid == str(os.getpid()) and atomic.HOST in name


def test_ctrl_c_inside_h5py_waits_for_the_state_to_be_written(tmp_path, monkeypatch):
    import bncli.state as state_module

    bn = bncli.BatchNormalization()
    bn(np.arange(12.0).reshape(6, 2), training=True)
    path = tmp_path / "s.h5"
    bn.save(path)
    bn(np.arange(12.0).reshape(6, 2) ** 2, training=True)
    monkeypatch.setattr(
        state_module, "write_vector", pressing_ctrl_c_after(state_module.write_vector)
    )
    with pytest.raises(KeyboardInterrupt):
        bn.save(path)
    assert temporaries(tmp_path) == []
    np.testing.assert_array_equal(bncli.load(path).moving_mean, bn.moving_mean)


def test_ctrl_c_right_after_taking_the_lock_releases_it(tmp_path, monkeypatch):
    import bncli.state as state_module

    path = tmp_path / "s.h5"
    monkeypatch.setattr(
        state_module,
        "remove_stale_temporaries",
        pressing_ctrl_c_after(state_module.remove_stale_temporaries),
    )
    with pytest.raises(KeyboardInterrupt):
        with lock(path):
            pass  # pragma: no cover - Ctrl-C comes before the body
    assert not lock_path(path).exists()
    monkeypatch.undo()
    with lock(path):  # free again
        pass
