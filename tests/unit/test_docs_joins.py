"""docs/joins.md: every Python block runs and builds a pipeline that validates (each is also
run as a job, output checked: tests/integration/test_joins.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "joins.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def _build(block: str, output: str):
    namespace: dict = {"__name__": "docs_joins"}
    exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace["build"]({"output": output})


def test_the_page_has_its_four_examples():
    assert len(BLOCKS) == 4


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_python_block_builds_a_pipeline_that_validates(index, tmp_path):
    _build(BLOCKS[index], str(tmp_path / "out")).validate()


def test_the_example_yaml_names_the_join_example():
    import yaml

    manifest = yaml.safe_load((DOC.parents[1] / "examples" / "join.yaml").read_text())
    assert manifest["spec"]["pipeline"] == "streamjob.examples.join:build"
