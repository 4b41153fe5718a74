"""Fixtures for tests against a real MinIO server (built and run by scripts/minio_server.py).

Other test folders get the same server with::

    sys.path.insert(0, str(REPO / "scripts"))
    from minio_server import minio_session
    minio_server = pytest.fixture(scope="session")(minio_session)
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))
try:
    import streamjob  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, str(REPO / "worker"))

from minio_server import MinioServer, minio_session  # noqa: E402

minio_server = pytest.fixture(scope="session")(minio_session)


@pytest.fixture
def fresh_minio(tmp_path):
    """A server of the test's own, for tests that stop or kill it."""
    server = MinioServer(tmp_path / "data", log_path=tmp_path / "minio.log")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def bucket_uri() -> str:
    """A storage URI in a bucket that does not exist yet."""
    return f"s3://sj-test-{uuid.uuid4().hex[:12]}/jobs/{uuid.uuid4().hex[:8]}"


# Jobs run as real process trees (streamjob run), shared with tests/integration.
from tests.integration.conftest import run_job  # noqa: E402,F401
