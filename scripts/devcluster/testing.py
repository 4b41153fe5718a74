"""For test suites: a kubeconfig for the e2e cluster.

    sys.path.insert(0, str(REPO / "scripts"))
    from devcluster.testing import kubeconfig_path, image_ref

Uses $KUBECONFIG when it is set and the file exists (any cluster, kind included); otherwise
runs `scripts/cluster up` (builds on first use, ~20-30 min; then ~30 s) and uses the
kubeconfig it prints. The cluster is left running.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def image_ref() -> str:
    return os.environ.get("STREAMJOB_IMAGE", "localhost/streamjob:dev")


def kubeconfig_path() -> str:
    kc = os.environ.get("KUBECONFIG")
    if kc and all(Path(p).exists() for p in kc.split(os.pathsep)):
        return kc
    r = subprocess.run([str(REPO / "scripts" / "cluster"), "up"], stdout=subprocess.PIPE,
                       stderr=sys.stderr, text=True, timeout=3 * 3600)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/cluster up failed ({r.returncode})")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("export KUBECONFIG=")]
    if not lines:
        raise RuntimeError(f"scripts/cluster up printed no KUBECONFIG line: {r.stdout!r}")
    kc = lines[-1].split("=", 1)[1].strip()
    os.environ["KUBECONFIG"] = kc
    return kc
