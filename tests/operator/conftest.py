"""Shared fixtures of the operator tests: a parsed job, StreamJob bodies, the import path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
for path in (REPO / "operator", REPO / "worker"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

pytest.importorskip("kopf", reason="the operator needs kopf: pip install -e '.[operator]'")
pytest.importorskip("kubernetes", reason="the operator needs the kubernetes client")


from sj_bodies import streamjob_body  # noqa: E402


@pytest.fixture
def body() -> dict[str, Any]:
    return streamjob_body()
