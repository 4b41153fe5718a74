"""docs/operators.md: every Python block runs, its pipelines validate, and its functions do
what the page says they do."""

from __future__ import annotations

import re
from operator import itemgetter
from pathlib import Path

import pytest

from streamjob.operators import KeyedStateBackend, ProcessOperator

DOC = Path(__file__).resolve().parents[2] / "docs" / "operators.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def _run(block: str) -> dict:
    namespace: dict = {"__name__": "docs_operators"}
    exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_block_runs_and_its_pipeline_validates(index, tmp_path):
    ns = _run(BLOCKS[index])
    if "build" in ns:
        ns["build"]({"output": str(tmp_path / "out")}).validate()


def _block_defining(name: str) -> dict:
    [block] = [b for b in BLOCKS if f"class {name}(" in b]
    return _run(block)


def test_the_timeout_example_reports_an_idle_key_once_its_deadline_passes():
    ns = _block_defining("Timeout")
    clock = lambda: 1_000_000  # noqa: E731
    op = ProcessOperator(KeyedStateBackend(), itemgetter(1), ns["Timeout"](), clock=clock)
    op.process_batch([(0, "a"), (1000, "a"), (2000, "b")])
    assert op.on_watermark(5999) == []
    assert op.on_watermark(6000) == ["a idle after 2 records"]
    assert op.on_processing_time() == []
    assert op.next_processing_time() == 1_002_000
    assert op.on_watermark(10**9) == ["b idle after 1 records"]


def test_the_ttl_example_forgets_a_key_after_ten_minutes_without_reads():
    ns = _block_defining("RecentlySeen")
    now = [0]
    op = ProcessOperator(KeyedStateBackend(), str, ns["RecentlySeen"](), clock=lambda: now[0])
    assert op.process_batch(["x", "x"]) == ["x"]
    now[0] += 599_000
    assert op.process_batch(["x"]) == []      # read at 599 s: extended
    now[0] += 599_000
    assert op.process_batch(["x"]) == []
    now[0] += 600_000
    assert op.process_batch(["x"]) == ["x"]


def test_the_window_examples_build_and_compute_what_the_page_says(tmp_path):
    from streamjob.windows import LATE, MAX_WATERMARK

    [block] = [b for b in BLOCKS if "def build_sessions(" in b]
    ns = _run(block)
    hop = ns["build"]({"output": str(tmp_path / "hop")})
    hop.validate()
    p = ns["build_sessions"]({"output": str(tmp_path / "s")})
    p.validate()
    assert len(p.sink_connector.sinks) == 2        # sessions and their late clicks
    backend = KeyedStateBackend()
    backend.max_parallelism = 128
    [window] = [t for t in p.tasks if t.steps[0].kind == "keyed"]
    op = window.steps[0].fn.create(backend, itemgetter(1))
    op.process_batch([(0, "u", 1), (20_000, "u", 2), (20_500, "u", 1), (90_000, "u", 3)])
    assert op.on_watermark(52_000) == [(0, 50_500, "u", (3, 2))]
    assert op.process_batch([(10_000, "u", 9)]) == [(0, 50_500, "u", (4, 3))]  # late, allowed
    op.on_watermark(56_000)                        # 50.5 s + 5 s lateness: dropped
    assert op.process_batch([(10_000, "u", 9)]) == []
    assert op.side_outputs[LATE] == [(10_000, "u", 9)]
    assert op.on_watermark(MAX_WATERMARK) == [(90_000, 120_000, "u", (1, 1))]
    [hop_window] = [t for t in hop.tasks if t.steps[0].kind == "keyed"]
    hop_op = hop_window.steps[0].fn.create(KeyedStateBackend(), itemgetter(1))
    hop_op.process_batch([(1_000, "u", 1), (3_000, "u", 1)])
    assert hop_op.on_watermark(MAX_WATERMARK) == [
        (-8000, "u", 1), (-6000, "u", 2), (-4000, "u", 2), (-2000, "u", 2), (0, "u", 2),
        (2000, "u", 1)]
