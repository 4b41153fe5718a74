"""Issue 11, item 3: the file sink's staging area holds only what is not committed yet."""

from __future__ import annotations

import os

from streamjob.connectors.filesink import FileSink, job_token


def _staged_entries(sink: FileSink, token: str) -> list[str]:
    base = sink.staging / token
    return sorted(e for e in os.listdir(base) if e != "inprogress") if base.is_dir() else []


def test_staging_area_stays_empty_after_many_checkpoints(tmp_path):
    sink = FileSink(str(tmp_path / "out"))
    writers = [sink.create_writer(s, "job") for s in range(2)]
    token = job_token("job")
    n_checkpoints = 300
    for n in range(1, n_checkpoints + 1):
        for w in writers:
            w.write([f"{w.subtask} {n}"])
            w.pre_commit(n)()
        if n % 7 == 0:
            continue  # a checkpoint that never completes: the next commit takes it along
        for w in writers:
            w.commit(n)
    for w in writers:
        w.commit(n_checkpoints)
    assert _staged_entries(sink, token) == []
    assert len(os.listdir(sink.output)) == 2 * n_checkpoints


def test_a_folder_with_another_subtasks_files_is_kept_until_that_one_commits(tmp_path):
    sink = FileSink(str(tmp_path / "out"))
    a, b = sink.create_writer(0, "job"), sink.create_writer(1, "job")
    token = job_token("job")
    for w in (a, b):
        w.write(["x"])
        w.pre_commit(1)()
    a.commit(1)
    assert _staged_entries(sink, token) == ["chk-1"]
    b.commit(1)
    assert _staged_entries(sink, token) == []
    assert sorted(os.listdir(sink.output)) == [f"part-{token}-0-1", f"part-{token}-1-1"]


def test_staging_after_a_commit_removed_the_folder_still_lands(tmp_path):
    sink = FileSink(str(tmp_path / "out"))
    w = sink.create_writer(0, "job")
    w.write(["x"])
    finish = w.pre_commit(3)
    (sink.staging / job_token("job") / "chk-3").mkdir(parents=True)
    w.commit(3)            # removes the empty chk-3 folder
    finish()               # must recreate it
    w.commit(3)
    assert os.listdir(sink.output) == [f"part-{job_token('job')}-0-3"]


def test_committed_file_holds_one_line_per_record_whatever_the_record_type(tmp_path):
    sink = FileSink(str(tmp_path / "out"))
    w = sink.create_writer(0, "job")
    w.write(["w1 1", "w2 1"])      # strings: joined as they are
    w.write([])
    w.write(["w1 2", 7, None, ("a", 1)])  # mixed: each formatted like str()
    w.pre_commit(1)()
    w.commit(1)
    (part,) = (tmp_path / "out").iterdir()
    assert part.read_text() == "w1 1\nw2 1\nw1 2\n7\nNone\n('a', 1)\n"
    formatted = FileSink(str(tmp_path / "out2"), fmt=lambda r: f"<{r}>").create_writer(0, "job")
    formatted.write(["a", 1])
    formatted.pre_commit(1)()
    formatted.commit(1)
    assert next((tmp_path / "out2").iterdir()).read_text() == "<a>\n<1>\n"
