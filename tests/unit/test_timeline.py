"""Timeline rendering from a recorded history entry (checkpoint 2 of a real p = 2 run)."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from streamjob import timeline as tl
from streamjob.cli import main

ENTRY = json.loads((Path(__file__).parent / "data/checkpoint_entry.json").read_text())
SVG = "{http://www.w3.org/2000/svg}"


def entry() -> dict:
    return copy.deepcopy(ENTRY)


def test_rows_follow_the_timings():
    rows = tl.rows(entry())
    assert [r.label for r in rows] == ["t0[0]", "t0[1]", "t1[0]", "t1[1]"]
    assert rows[2].name == "Keyed count -> Format -> Sink: files"
    t0 = ENTRY["triggered_at"]
    for r in rows:
        t = ENTRY["timings"][r.task][r.subtask]
        assert r.ack_ms == pytest.approx((t["ack"] - t0) * 1000)
        # segments are ordered, contiguous where they touch, and end at the ack
        assert [s.start_ms for s in r.segments] == sorted(s.start_ms for s in r.segments)
        for a, b in zip(r.segments, r.segments[1:], strict=False):
            assert a.end_ms <= b.start_ms + 1e-9
        assert r.segments[-1].end_ms == pytest.approx(r.ack_ms)
        kinds = {s.kind: s for s in r.segments}
        assert kinds["delay"].end_ms == pytest.approx((t["first_barrier"] - t0) * 1000)
        if t["alignment_ms"] > 0:
            assert kinds["align"].end_ms - kinds["align"].start_ms == pytest.approx(
                t["alignment_ms"])
        assert kinds["async"].end_ms - kinds["async"].start_ms == pytest.approx(
            t["async_ms"], abs=1e-6)
    # the recorded run: t1[1] waited ~125 ms for the barrier of source 0
    assert {s.kind for s in rows[3].segments} >= {"delay", "align", "async"}
    assert rows[3].timings["alignment_ms"] > 100


def test_text_timeline_structure():
    text = tl.render_text(entry(), width=50)
    lines = text.splitlines()
    assert lines[0].startswith("checkpoint 2  checkpoint  COMPLETED")
    assert "t0  Source: words" in lines
    assert "t1  Keyed count -> Format -> Sink: files" in lines
    parsed = tl.parse_text(text)
    assert list(parsed) == ["t0[0]", "t0[1]", "t1[0]", "t1[1]"]
    span = tl.span_ms(ENTRY)
    for label, row in parsed.items():
        bar = row["bar"]
        assert len(bar) == 50
        assert bar.count("A") == 1
        assert set(bar) <= set(".=#-~_A ")
        # nothing after the ack; the ack column matches the ack time
        assert bar[bar.index("A") + 1:].strip() == ""
        r = next(r for r in tl.rows(ENTRY) if r.label == label)
        assert bar.index("A") == min(49, int(r.ack_ms / (span / 50)))
        assert len(row["values"]) == len(tl.NUM_HEAD)
    # long alignment of t1[1] is drawn as '='; the late source t0[0] as start delay '.'
    assert parsed["t1[1]"]["bar"].count("=") > 20
    assert parsed["t0[0]"]["bar"].count(".") > 20
    assert "_metadata written" in text and "legend:" in text


def test_unaligned_and_missing_acks():
    e = entry()
    e["timings"]["t1"][0].update(unaligned=True, inflight_records=1234)
    e["timings"]["t1"][1] = None
    e["status"], e["reason"] = "FAILED", "not complete within 1s"
    text = tl.render_text(e)
    assert "unaligned, 1234 in-flight records" in text
    assert "(no ack)" in text
    assert "failed: not complete within 1s" in text
    parsed = tl.parse_text(text)
    assert parsed["t1[1]"]["bar"].strip() == ""


def test_svg_is_well_formed_and_complete(tmp_path):
    out = tmp_path / "c.svg"
    tl.write_picture(entry(), out)
    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg"
    rects = [r for r in root.iter(f"{SVG}rect") if r.get("data-kind")]
    by_row: dict[str, list[str]] = {}
    for r in rects:
        by_row.setdefault(r.get("data-row"), []).append(r.get("data-kind"))
        assert float(r.get("width")) > 0
        assert float(r.get("data-end-ms")) >= float(r.get("data-start-ms"))
    rows = tl.rows(ENTRY)
    assert by_row == {r.label: [s.kind for s in r.segments] for r in rows}
    acks = {a.get("data-row"): float(a.get("data-ms")) for a in root.iter(f"{SVG}line")
            if a.get("class") == "ack"}
    assert acks == {r.label: pytest.approx(r.ack_ms, abs=1e-3) for r in rows}
    texts = " ".join(t.text or "" for t in root.iter(f"{SVG}text"))
    assert "Source: words" in texts and "t1[1]" in texts


def test_png_needs_matplotlib_or_says_so(tmp_path):
    out = tmp_path / "c.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="matplotlib"):
            tl.write_picture(entry(), out)
        return
    tl.write_picture(entry(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_table():
    ok = {k: v for k, v in entry().items() if k != "timings"}
    failed = {"id": 3, "kind": "checkpoint", "status": "FAILED",
              "triggered_at": ok["triggered_at"] + 1, "failed_at": ok["triggered_at"] + 31,
              "reason": "not complete within 30s", "acked": 3, "expected": 4}
    sp = {**ok, "id": 4, "kind": "savepoint", "restored_from": 2}
    lines = tl.history_table([ok, failed, sp]).splitlines()
    assert lines[0].split() == list(tl.TABLE_COLUMNS)
    cols = [line.split() for line in lines[1:]]
    assert [c[0] for c in cols] == ["2", "3", "4"]
    assert cols[0][1:3] == ["checkpoint", "COMPLETED"]
    assert cols[0][5] == "172ms" and cols[0][6] == "8.6KiB" and cols[0][7] == "-"
    assert cols[1][2] == "FAILED" and cols[1][5] == "30.0s" and cols[1][6] == "-"
    assert "(3/4 acked: not complete within 30s)" in lines[2]
    assert cols[2][1] == "savepoint" and cols[2][7] == "2"


def test_cli_renders_a_stored_metadata(tmp_path, capsys):
    from streamjob.checkpoints import FORMAT, VERSION, encode_metadata

    e = entry()
    body = {"format": FORMAT, "version": VERSION, "job_id": "wc-1", "checkpoint_id": 2,
            "kind": "checkpoint", "triggered_at": e["triggered_at"],
            "completed_at": e["completed_at"], "mode": "exactly-once",
            "tasks": {tid: {"name": n, "subtasks": []} for tid, n in e["task_names"].items()},
            "timings": e["timings"], "size_bytes": e["size_bytes"]}
    folder = tmp_path / "chk-2"
    folder.mkdir()
    (folder / "_metadata").write_bytes(encode_metadata(body))
    assert main(["checkpoints", "--metadata", str(folder), "--out",
                 str(tmp_path / "t.svg")]) == 0
    text = capsys.readouterr().out
    assert tl.parse_text(text).keys() == tl.parse_text(tl.render_text(ENTRY)).keys()
    assert "t1  Keyed count -> Format -> Sink: files" in text
    ET.parse(tmp_path / "t.svg")
    assert main(["checkpoints", "--metadata", str(folder / "_metadata"), "--out",
                 str(tmp_path / "t.gif")]) == 2


def test_where_the_upload_sits():
    e = entry()
    t = e["timings"]["t1"][1]
    t0 = e["triggered_at"]

    def kinds(e):
        r = next(r for r in tl.rows(e) if r.label == "t1[1]")
        return [(s.kind, round(s.start_ms, 3), round(s.end_ms, 3)) for s in r.segments]

    sync_end, ack = (t["sync_done"] - t0) * 1000, (t["ack"] - t0) * 1000
    # aligned, no async_start: upload right after sync, then the ACK waits
    k = dict((kind, (a, b)) for kind, a, b in kinds(e))
    assert k["async"][0] == pytest.approx(sync_end, abs=1e-3) and "wait" not in k
    assert k["ackq"][1] == pytest.approx(ack, abs=1e-3)
    # unaligned: the gap is the in-flight capture, the upload ends at the ack
    t["unaligned"] = True
    k = dict((kind, (a, b)) for kind, a, b in kinds(e))
    assert k["wait"][0] == pytest.approx(sync_end, abs=1e-3) and "ackq" not in k
    assert k["async"][1] == pytest.approx(ack, abs=1e-3)
    # exact when the worker reports async_start
    t["async_start"] = t["sync_done"] + 0.010
    k = dict((kind, (a, b)) for kind, a, b in kinds(e))
    assert k["wait"] == pytest.approx((sync_end, sync_end + 10), abs=1e-3)
    assert k["async"][0] == pytest.approx(sync_end + 10, abs=1e-3)
