"""The barrier handler fed with interleaved barrier/record sequences, per mode."""

from streamjob.barriers import ABORTED, CAPTURE_END, COMPLETE, SNAPSHOT, BarrierHandler


def kinds(actions):
    return [(a.kind, a.checkpoint_id) for a in actions]


def test_aligned_blocks_each_channel_until_all_barriers_arrived():
    h = BarrierHandler(3, "exactly-once")
    assert h.on_barrier(0, 1, now=0.0) == []
    assert h.blocked == {0}
    # records keep flowing on 1 and 2 (the gate only skips blocked channels)
    assert h.on_barrier(2, 1, now=0.1) == []
    assert h.blocked == {0, 2}
    actions = h.on_barrier(1, 1, now=0.3)
    assert kinds(actions) == [(SNAPSHOT, 1), (COMPLETE, 1)]
    assert not actions[0].unaligned
    assert actions[0].started_at == 0.0  # alignment started at the first barrier
    assert h.blocked == set()


def test_aligned_single_channel_snapshots_at_once():
    h = BarrierHandler(1)
    assert kinds(h.on_barrier(0, 5, now=1.0)) == [(SNAPSHOT, 5), (COMPLETE, 5)]


def test_duplicate_and_stale_barriers_are_ignored():
    h = BarrierHandler(2)
    h.on_barrier(0, 1, 0.0)
    assert h.on_barrier(0, 1, 0.1) == []
    h.on_barrier(1, 1, 0.2)
    assert h.on_barrier(0, 1, 0.3) == []  # checkpoint 1 is done


def test_newer_barrier_aborts_an_older_alignment():
    h = BarrierHandler(2)
    h.on_barrier(0, 1, 0.0)
    actions = h.on_barrier(1, 2, 0.1)  # upstream declined 1 and moved on
    assert kinds(actions) == [(ABORTED, 1)]
    assert h.blocked == {1}
    assert kinds(h.on_barrier(0, 2, 0.2)) == [(SNAPSHOT, 2), (COMPLETE, 2)]


def test_coordinator_abort_unblocks():
    h = BarrierHandler(2)
    h.on_barrier(0, 3, 0.0)
    assert kinds(h.abort(3)) == [(ABORTED, 3)]
    assert h.blocked == set()
    assert h.on_barrier(1, 3, 0.1) == []  # its late barrier changes nothing


def test_aligned_timeout_switches_to_unaligned():
    h = BarrierHandler(3, "exactly-once", aligned_timeout=0.5)
    h.on_barrier(1, 1, now=10.0)
    assert h.on_tick(10.4) == []
    assert h.deadline() == 10.5
    [snap] = h.on_tick(10.6)
    assert snap.kind == SNAPSHOT and snap.unaligned and snap.channels == (0, 2)
    assert h.blocked == set() and h.priority_barriers
    assert kinds(h.on_barrier(0, 1, 10.7)) == [(CAPTURE_END, 1)]
    assert kinds(h.on_barrier(2, 1, 10.8)) == [(CAPTURE_END, 1), (COMPLETE, 1)]
    assert not h.priority_barriers


def test_unaligned_snapshots_on_the_first_barrier_and_captures_the_rest():
    h = BarrierHandler(3, "unaligned")
    assert h.priority_barriers
    [snap] = h.on_barrier(2, 4, now=0.0)
    assert snap.kind == SNAPSHOT and snap.unaligned and snap.channels == (0, 1)
    assert h.blocked == set()  # nothing ever blocks
    assert kinds(h.on_barrier(0, 4, 0.1)) == [(CAPTURE_END, 4)]
    assert [a.channels for a in h.on_barrier(1, 4, 0.2)] == [(1,), ()]


def test_savepoints_stay_aligned_even_in_unaligned_mode():
    h = BarrierHandler(2, "unaligned")
    assert h.on_barrier(0, 9, 0.0, aligned=True) == []
    assert h.blocked == {0}
    actions = h.on_barrier(1, 9, 0.1, aligned=True)
    assert kinds(actions) == [(SNAPSHOT, 9), (COMPLETE, 9)]
    assert not actions[0].unaligned


def test_at_least_once_never_blocks():
    h = BarrierHandler(3, "at-least-once")
    assert h.on_barrier(0, 1, 0.0) == []
    assert h.blocked == set()
    assert h.on_barrier(1, 1, 0.1) == []
    assert h.blocked == set()
    assert kinds(h.on_barrier(2, 1, 0.2)) == [(SNAPSHOT, 1), (COMPLETE, 1)]


def test_interleaved_sequence_of_records_and_barriers():
    """A gate-level simulation: records behind a barrier on a blocked channel wait."""
    h = BarrierHandler(2, "exactly-once")
    inputs = {0: ["a1", ("B", 1), "a2"], 1: ["b1", "b2", ("B", 1), "b3"]}
    processed, snapshot_at = [], None
    while any(inputs.values()):
        for c in (0, 1):
            if c in h.blocked or not inputs[c]:
                continue
            item = inputs[c].pop(0)
            if isinstance(item, tuple):
                for a in h.on_barrier(c, item[1], 0.0):
                    if a.kind == SNAPSHOT:
                        snapshot_at = list(processed)
            else:
                processed.append(item)
    # The snapshot holds exactly the records before barrier 1 on each channel.
    assert sorted(snapshot_at) == ["a1", "b1", "b2"]
    assert sorted(processed) == ["a1", "a2", "b1", "b2", "b3"]
