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
