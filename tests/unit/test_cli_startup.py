"""Start-up of the ``streamjob`` command: the commands that read no manifest do not import the
manifest's models (pydantic, most of a bare start), YAML, asyncio or aiohttp. On a busy
machine each of those imports is a wait a user feels at every call of ``savepoint``,
``checkpoints`` or ``--help``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = {"pydantic", "yaml", "asyncio", "aiohttp", "numpy", "kubernetes"}

# Runs the command in a fresh interpreter, then names the top-level packages it imported.
PROBE = """
import json, sys
from streamjob.cli import main
try:
    rc = main(json.loads(sys.argv[1]))
except SystemExit as exit:
    rc = exit.code
with open(sys.argv[2], "w") as out:
    json.dump(sorted({name.split(".")[0] for name in sys.modules}), out)
sys.exit(rc)
"""


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str, str, set[str]]:
    modules = cwd / "modules.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), str(modules)],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr, set(json.loads(modules.read_text()))


@pytest.mark.parametrize(("argv", "rc", "says"), [
    (["--help"], 0, "usage: streamjob"),
    (["savepoint", "--help"], 0, "usage: streamjob savepoint"),
    (["savepoint", "wc"], 2, "no local job named 'wc' was run here"),
    (["checkpoints", "wc"], 2, "no local job named 'wc' was run here"),
    (["checkpoints", "--metadata", "nowhere"], 2, "cannot read nowhere/_metadata"),
    (["ui", "wc"], 2, "no local job named 'wc' was run here"),
    (["savepoints", "."], 0, "COMPLETED (UTC)"),
])
def test_commands_that_read_no_manifest_start_without_pydantic_yaml_or_asyncio(
        tmp_path: Path, argv: list[str], rc: int, says: str):
    code, out, err, modules = run_cli(argv, tmp_path)
    assert (code, says in out + err) == (rc, True), out + err
    assert modules & HEAVY == set()


def test_run_still_reads_its_manifest_with_the_models(tmp_path: Path):
    # The counterpart (and a check on the probe): `run` imports the models and says what is
    # wrong with the manifest in one line, as before.
    (tmp_path / "job.yaml").write_text("apiVersion: streamjob.dev/v1alpha1\nkind: StreamJob\n")
    code, _, err, modules = run_cli(["run", "job.yaml"], tmp_path)
    assert code == 2 and "streamjob: error: metadata: required field is missing" in err, err
    assert {"pydantic", "yaml"} <= modules
