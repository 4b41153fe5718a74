"""Fault injection rules: parsing, counting across processes by marker files, storage faults."""

from __future__ import annotations

import time

import pytest

from streamjob import faults
from streamjob.storage import LocalStorage, StorageError


@pytest.fixture(autouse=True)
def _reset():
    yield
    faults.configure(None, None)


def test_parse_rules():
    rules = faults.parse("coordinator.after-metadata=kill;storage.put:*/_metadata=fail,times=3,"
                         "skip=1; storage.list=outage:2.5")
    assert [(r.point, r.key, r.action, r.seconds, r.times, r.skip) for r in rules] == [
        ("coordinator.after-metadata", None, "kill", 0.0, 1, 0),
        ("storage.put", "*/_metadata", "fail", 0.0, 3, 1),
        ("storage.list", None, "outage", 2.5, 1, 0)]


@pytest.mark.parametrize("spec", ["nothing", "x=explode", "x=fail,times=two", "x=stall",
                                  "x=stall:soon", "=kill"])
def test_bad_rules_are_refused(spec):
    with pytest.raises(faults.FaultSpecError):
        faults.parse(spec)


def test_rules_need_a_folder():
    with pytest.raises(faults.FaultSpecError, match="STREAMJOB_FAULTS_DIR"):
        faults.configure("x=fail", None)


def test_off_means_nothing_happens(tmp_path):
    faults.configure(None, None)
    faults.point("coordinator.after-metadata")
    assert not faults.enabled()
    storage = LocalStorage(tmp_path)
    assert faults.wrap(storage) is storage


def test_fail_fires_times_then_stops_and_skips(tmp_path):
    faults.configure("storage.put:*/_metadata=fail,times=2,skip=1", str(tmp_path / "f"))
    storage = faults.wrap(LocalStorage(tmp_path / "s"))
    storage.put("j/chk-1/_metadata", b"1")          # skipped
    storage.put("j/chk-2/state", b"2")              # key does not match
    for n in (3, 4):
        with pytest.raises(StorageError, match="injected failure"):
            storage.put(f"j/chk-{n}/_metadata", b"x")
    storage.put("j/chk-5/_metadata", b"5")          # both firings used
    assert faults.fired(tmp_path / "f") == 2
    assert storage.list("j/") == ["j/chk-1/_metadata", "j/chk-2/state", "j/chk-5/_metadata"]


def test_firings_are_shared_by_processes(tmp_path):
    """A restarted process (a fresh configure) does not fire a used-up rule again."""
    faults.configure("p=fail", str(tmp_path))
    with pytest.raises(StorageError):
        faults.point("p")
    faults.configure("p=fail", str(tmp_path))
    faults.point("p")
    assert faults.fired(tmp_path) == 1


def test_outage_fails_every_call_for_its_window(tmp_path):
    faults.configure("storage.get=outage:60", str(tmp_path / "f"))
    storage = faults.wrap(LocalStorage(tmp_path / "s"))
    storage.put("a", b"1")
    for _ in range(3):
        with pytest.raises(StorageError, match="injected outage"):
            storage.get("a")
    (tmp_path / "f" / "rule0-0").write_text("0\n")   # the window is long over
    assert storage.get("a") == b"1"


@pytest.mark.parametrize("spec", ["x=fail,after=0", "x=fail,after=3;y=mark",
                                  "x=outage:1,after=1;y=mark"])
def test_after_must_name_another_rule(spec):
    with pytest.raises(faults.FaultSpecError):
        faults.parse(spec)


def test_after_waits_for_the_next_firing_of_the_other_rule(tmp_path):
    """A failure ordered after an event (another thread here, another process in a job):
    the put fails only once the mark fires again, not on the firing it saw before."""
    import threading

    faults.configure("storage.put=fail,after=1;snap=mark,times=10", str(tmp_path / "f"))
    storage = faults.wrap(LocalStorage(tmp_path / "s"))
    faults.point("snap")                       # fired before the put: does not count
    result: list[BaseException | None] = []

    def put() -> None:
        try:
            storage.put("k", b"x")
            result.append(None)
        except StorageError as err:
            result.append(err)

    thread = threading.Thread(target=put)
    thread.start()
    deadline = time.monotonic() + 30
    while not faults.fired(tmp_path / "f", 0) and time.monotonic() < deadline:
        thread.join(0.01)                      # until the put has fired (claimed)
    assert faults.fired(tmp_path / "f", 0) == 1
    assert thread.is_alive() and result == []  # and waits: no new mark yet
    faults.point("snap")
    thread.join(30)
    assert not thread.is_alive() and isinstance(result[0], StorageError)
    assert faults.fired(tmp_path / "f", 1) == 2
