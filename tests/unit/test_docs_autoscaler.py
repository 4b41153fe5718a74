"""docs/autoscaler.md: its spec.autoscaler block parses and shows the model's defaults; the
bench command it shows exists with the options it uses."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from streamjob.manifest import AutoscalerSpec, StreamJobSpec

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "autoscaler.md").read_text()


def test_the_spec_block_is_valid_and_shows_the_defaults():
    block = re.search(r"```yaml\n(.*?)```", DOC, re.S).group(1)
    spec = yaml.safe_load(block)["spec"]
    parsed = StreamJobSpec.model_validate({"pipeline": "m:f", **spec})
    assert parsed.autoscaler == AutoscalerSpec(enabled=True)


def test_the_bench_command_takes_the_options_shown():
    command = re.search(r"```bash\n(python bench/autoscale.py[^\n]*)\n```", DOC).group(1)
    options = re.findall(r"(--[a-z-]+)", command)
    usage = subprocess.run([sys.executable, str(ROOT / "bench" / "autoscale.py"), "--help"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert options and all(o in usage for o in options)
