import random
from pathlib import Path

from streamjob.connectors import FileSink, FileSource, GeneratorSource
from streamjob.connectors.base import assign_splits
from streamjob.connectors.filesink import job_token
from streamjob.connectors.generator import record_ids


def drain(reader, batch=100):
    out = []
    while (b := reader.poll(batch)) is not None:
        out += b
    return out


def test_generator_emits_every_record_once_at_any_parallelism():
    src = GeneratorSource(records=1000, splits=16)
    for p in (1, 3, 16):
        got = []
        for i in range(p):
            mine = assign_splits(src.split_ids(), i, p)
            got += drain(src.create_reader({s: 0 for s in mine}))
        assert sorted(got) == list(range(1000))


def test_generator_record_ids_are_those_of_each_round_in_split_order():
    """The ranges taken for evenly spaced splits give exactly the records, in exactly the
    order, of listing them one by one; so do any other splits."""
    def listed(live, splits, r0, r1, n):
        return [g for r in range(r0, r1) for k in live if (g := k + splits * r) < n]

    rng = random.Random(7)
    cases = []
    for splits in (1, 2, 7, 8, 128):
        for p in (1, 2, 3, 5, 8):
            for i in range(min(p, splits)):
                cases.append(([int(s) for s in assign_splits(
                    [str(k) for k in range(splits)], i, p)], splits))
        cases.append((list(range(1, splits)) or [0], splits))        # a contiguous block
        cases.append((sorted(rng.sample(range(splits), max(1, splits // 3))), splits))
    for live, splits in cases:
        for r0, r1 in ((0, 1), (0, 5), (3, 40)):
            for n in (0, splits * r0 + 1, splits * r1 - 1, splits * r1, 10**9):
                got = record_ids(live, splits, r0, r1, n)
                assert list(got) == listed(live, splits, r0, r1, n), (live, splits, r0, r1, n)


def test_generator_replays_from_a_position_after_a_rescale():
    src = GeneratorSource(records=1000, splits=8)
    r = src.create_reader({s: 0 for s in src.split_ids()})
    first = r.poll(100)
    pos = r.positions()
    # resume the same positions split over two readers
    rest = []
    for i in range(2):
        rest += drain(src.create_reader({s: pos[s] for s in assign_splits(src.split_ids(), i, 2)}))
    assert sorted(first + rest) == list(range(1000))


def test_file_source_resumes_by_byte_offset(tmp_path: Path):
    f = tmp_path / "a.txt"
    f.write_text("".join(f"line {i}\n" for i in range(1000)) + "last without newline")
    src = FileSource(str(f))
    r = src.create_reader({str(f): 0})
    head = r.poll(10)
    pos = r.positions()
    tail = drain(src.create_reader(pos), 333)
    assert head + tail == [f"line {i}" for i in range(1000)] + ["last without newline"]


def test_file_sink_stages_until_commit_and_recovers(tmp_path: Path):
    sink = FileSink(str(tmp_path / "out"))
    w = sink.create_writer(0, "job-1")
    w.write(["a", "b"])
    w.pre_commit(1)()
    w.write(["c"])
    w.pre_commit(2)()
    w.write(["d"])  # in progress, never pre-committed
    assert list((tmp_path / "out").glob("part-*")) == []  # nothing visible before commit
    w.commit(1)
    assert [p.read_text() for p in (tmp_path / "out").glob("part-*")] == ["a\nb\n"]
    # restore from checkpoint 1: staged 2 and the in-progress file are dropped
    w.close()
    sink.recover("job-1", 1)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [f"part-{job_token('job-1')}-0-1"]
    assert not any((tmp_path / ".out.staging").rglob("part-*"))


def test_file_sink_recover_commits_what_was_staged_up_to_the_checkpoint(tmp_path: Path):
    sink = FileSink(str(tmp_path / "out"))
    w = sink.create_writer(1, "job-2")
    w.write(["x"])
    w.pre_commit(5)()
    # crash before the notification: the restore from 5 must commit it
    sink.recover("job-2", 5)
    assert [p.read_text() for p in (tmp_path / "out").glob("part-*")] == ["x\n"]


def test_file_sink_never_deletes_committed_output_and_sets_it_aside_only_when_asked(
        tmp_path: Path):
    sink = FileSink(str(tmp_path / "out"))
    w = sink.create_writer(0, "job-3")
    for cid, line in [(1, "a"), (2, "b"), (3, "c")]:
        w.write([line])
        w.pre_commit(cid)()
    w.commit(3)
    w.close()
    token = job_token("job-3")
    committed = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert committed == [f"part-{token}-0-{n}" for n in (1, 2, 3)]
    # A restore from 1 (2 and 3 unrestorable): recover leaves committed parts alone ...
    sink.recover("job-3", 1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == committed
    # ... and names them, so that the coordinator can refuse to replay over them.
    assert [Path(p).name for p in sink.committed_after("job-3", 1)] == committed[1:]
    assert sink.committed_after("other-job", 1) == []
    kept = Path(sink.set_aside("job-3", 1))
    assert kept.parent == tmp_path / ".out.superseded"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == committed[:1]
    assert {p.name: p.read_text() for p in kept.iterdir()} == {
        committed[1]: "b\n", committed[2]: "c\n"}
    assert sink.set_aside("job-3", 1) is None
