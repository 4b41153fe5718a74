"""Copy-on-write snapshot children (forked_snapshot.py): the file a child writes is the state
as of the fork, byte for byte what the thread strategy writes; a child that fails, hangs or
is discarded is killed and reaped, and leaves no file behind."""

from __future__ import annotations

import os
import signal
import time

import pytest

from streamjob import forked_snapshot, state
from streamjob.forked_snapshot import ForkedSnapshot, SnapshotChildError, choose
from streamjob.keygroups import key_group
from streamjob.operators import KeyedStateBackend
from streamjob.storage import LocalStorage

KEYS = 20_000


def kg_of(key):
    return key_group(key, 128)


def gone(pid: int) -> bool:
    """The child was reaped: it is no child of ours any more (not even a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.fixture
def backend():
    b = KeyedStateBackend(track_changes=True)
    values = b.table("value", "value")
    lists = b.table("lists", "value")
    for k in range(KEYS):
        values[k] = f"v{k}"
        lists[f"k{k}"] = [k, [k]]
        b.note_value("lists", lists[f"k{k}"])
    b.mark_dirty(range(10))
    return b


@pytest.mark.parametrize("strategy,keys,running,expected", [
    ("thread", 10**6, False, "thread"),
    ("fork", 10**6, False, "fork"),
    ("fork", forked_snapshot.MIN_KEYS - 1, False, "thread"),
    ("fork", 10**6, True, "thread"),
])
def test_choose_forks_only_when_asked_worth_it_and_no_child_runs(strategy, keys, running,
                                                                 expected):
    assert choose(strategy, keys, running) == expected


def test_child_writes_the_state_as_of_the_fork_byte_for_byte(backend, tmp_path):
    expected_frozen = backend.freeze(reset_changes=False)
    op_state = {"splits": {"0": 17}, "watermark": 12.5}
    expected_bytes, _ = state.encode_snapshot(expected_frozen, op_state, kg_of)
    child = ForkedSnapshot.start(backend.tables_as_they_are, kg_of, time.monotonic() + 60)
    assert forked_snapshot.running()
    # The parent goes on: none of this may reach the child's file.
    backend.tables["value"][0] = "changed"
    del backend.tables["value"][1]
    backend.tables["lists"]["k2"][1].append("post-barrier")
    backend.tables["value"]["new"] = 1
    handle = child.finish(op_state)
    assert gone(child.pid) and not forked_snapshot.running()
    assert os.fstat(child.fd).st_mode & 0o777 == 0o600
    assert os.fstat(child.fd).st_nlink == 0  # no name: gone with the processes
    with child.open_file() as f:
        written = f.read()
    child.remove_file()
    assert written == expected_bytes
    assert handle["size"] == len(written) and handle["keys"] == 2 * KEYS
    assert child.copied_bytes > 0

    storage = LocalStorage(tmp_path)
    storage.put("snap", written)
    handle["key"] = "snap"
    loaded = KeyedStateBackend()
    for name, kind, entries, deleted in state.read_keyed_state(storage, handle, range(128)):
        loaded.load(name, kind, entries, deleted)
    assert loaded.tables["value"] == expected_frozen["value"][1]
    assert loaded.tables["lists"]["k2"] == [2, [2]]
    assert state.read_operator_state(storage, handle) == op_state


def test_a_delta_child_writes_the_changes_and_deletions(backend, tmp_path):
    backend.tables["value"][3] = "three"
    del backend.tables["value"][4]
    backend.mark_dirty([3, 4])
    child = ForkedSnapshot.start(backend.freeze_delta, kg_of, time.monotonic() + 60)
    backend.dirty = set()  # the parent's part of the protocol (see SubtaskRunner._fork)
    handle = child.finish({})
    storage = LocalStorage(tmp_path)
    with child.open_file() as f:
        storage.put_file("delta", f)
    child.remove_file()
    handle["key"] = "delta"
    parts = list(state.read_keyed_state(storage, handle, range(128)))
    changed = {k: v for name, _, entries, _ in parts if name == "value"
               for k, v in entries.items()}
    deleted = {k for name, _, _, dels in parts if name == "value" for k in dels}
    assert changed == {k: f"v{k}" for k in (0, 1, 2, 5, 6, 7, 8, 9)} | {3: "three"}
    assert deleted == {4}


def _hang():
    signal.pause()  # in the child only: a child that never finishes (until it is killed)


def _fail():
    raise RuntimeError("no memory for this")


def test_a_child_past_its_deadline_is_killed_reaped_and_leaves_no_file():
    child = ForkedSnapshot.start(_hang, kg_of, time.monotonic() + 1.0)
    with pytest.raises(SnapshotChildError, match="did not"):
        child.finish({})
    assert gone(child.pid)
    assert child.fd == -1
    assert not forked_snapshot.running()


def test_a_failing_child_reports_why():
    child = ForkedSnapshot.start(_fail, kg_of, time.monotonic() + 60)
    with pytest.raises(SnapshotChildError, match="no memory for this"):
        child.finish({})
    assert gone(child.pid) and child.fd == -1


def test_a_discarded_child_is_killed_and_reaped_and_cannot_be_finished():
    child = ForkedSnapshot.start(_hang, kg_of, time.monotonic() + 60)
    child.discard()
    assert gone(child.pid) and child.fd == -1
    assert not forked_snapshot.running()
    with pytest.raises(SnapshotChildError, match="discarded"):
        child.finish({})


def test_a_cancelled_child_makes_finish_fail_fast():
    child = ForkedSnapshot.start(_hang, kg_of, time.monotonic() + 600)
    child.cancel()
    with pytest.raises(SnapshotChildError, match="gone|status -9"):  # killed, not timed out
        child.finish({})
    assert gone(child.pid)
