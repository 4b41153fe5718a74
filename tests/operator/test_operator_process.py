"""The operator process: one log line per message, leader election's decisions, the
coordinator client's refusal reasons, and savepoints that never hold a reconcile (pure or
local; the real-apiserver versions are in test_apiserver_operations.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from streamjob_operator.background import Requests
from streamjob_operator.coordinator import (
    CoordinatorClient,
    CoordinatorRefused,
    JobView,
    error_reason,
)
from streamjob_operator.leader import Holder, decide


def test_each_log_line_is_printed_once(capfd):
    from streamjob_operator.__main__ import setup_logging

    logging.basicConfig(level="INFO")          # what the old setup did first
    setup_logging("INFO")
    setup_logging("INFO")                       # and again: still one handler
    logging.getLogger("streamjob_operator.test").warning("only once please")
    err = capfd.readouterr().err
    assert err.count("only once please") == 1
    stream_handlers = [h for h in logging.getLogger().handlers
                       if isinstance(h, logging.StreamHandler)]
    assert len(stream_handlers) == 1


def test_leader_election_decisions():
    assert decide("a", None, 100.0) == "create"
    assert decide("a", Holder("a", 99.0, 15), 100.0) == "renew"
    assert decide("a", Holder("b", 90.0, 15), 100.0) == "wait"      # b renewed 10 s ago
    assert decide("a", Holder("b", 80.0, 15), 100.0) == "take"      # b is 20 s late
    assert decide("a", Holder(None, 99.0, 15), 100.0) == "take"     # released
    assert decide("a", Holder("b", None, 15), 100.0) == "take"


def test_the_apis_error_field_is_the_refusal_reason():
    assert error_reason({"error": "job is RESTARTING, not RUNNING"}) == \
        "job is RESTARTING, not RUNNING"
    assert error_reason({"message": "older servers"}) == "older servers"
    assert error_reason({"error": "e", "message": "m"}) == "e"
    assert error_reason(["not", "a", "dict"]) == ""


class Refusing(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        data = json.dumps({"error": "job is RESTARTING, not RUNNING"}).encode()
        self.send_response(409)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_a_refusal_from_the_real_runtime_api_shape_reaches_the_operator():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = CoordinatorClient(f"http://127.0.0.1:{httpd.server_address[1]}", "t" * 40)
        with pytest.raises(CoordinatorRefused) as err:
            client.savepoint(stop=True, timeout=5)
        assert err.value.status == 409
        assert err.value.reason == "job is RESTARTING, not RUNNING"
        assert "job is RESTARTING, not RUNNING" in str(err.value)
    finally:
        httpd.shutdown()


def test_job_view_finds_the_savepoint_taken_since_the_operation_started():
    view = JobView.from_json({"state": "STOPPED", "savepoints": [
        {"id": 3, "path": "s3://b/sp-3", "completed_at": 100.0},
        {"id": 7, "path": "s3://b/sp-7", "completed_at": 200.0}]})
    assert view.savepoint_since(150.0) == "s3://b/sp-7"
    assert view.savepoint_since(250.0) is None


def test_a_savepoint_request_never_holds_the_caller_and_reports_when_done():
    requests = Requests()
    answer = threading.Event()
    done = threading.Event()

    def slow() -> str:
        answer.wait(10)
        return "s3://b/sp-1"

    start = time.monotonic()
    req = requests.start("ns/slow", ("rescale", 1.0, 1), slow, done.set)
    assert time.monotonic() - start < 0.5 and not req.done.is_set()
    assert requests.start("ns/slow", ("rescale", 1.0, 1), slow) is req   # one at a time
    assert requests.get("ns/slow", ("rescale", 1.0, 2)) is None         # another attempt's
    answer.set()
    assert done.wait(5) and req.uri == "s3://b/sp-1"
    refused = requests.start("ns/other", ("x",), lambda: (_ for _ in ()).throw(
        CoordinatorRefused("HTTP 409", 409, "no")))
    assert refused.done.wait(5) and refused.refused and refused.uri is None


def test_a_token_key_file_that_cannot_be_read_stops_the_operator_at_start(tmp_path):
    """Named but unreadable or empty: a clear error, never a silent fallback to reading the
    jobs' Secrets (which the chart's RBAC forbids: every reconcile would then fail)."""
    import pytest

    from streamjob_operator.config import Settings

    key = tmp_path / "key"
    with pytest.raises(ValueError, match="TOKEN_KEY_FILE=.*cannot read it"):
        Settings.from_env({"STREAMJOB_OPERATOR_TOKEN_KEY_FILE": str(key)})
    key.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        Settings.from_env({"STREAMJOB_OPERATOR_TOKEN_KEY_FILE": str(key)})
    key.write_text("k" * 48 + "\n")
    assert Settings.from_env({"STREAMJOB_OPERATOR_TOKEN_KEY_FILE": str(key)}).token_key == "k" * 48
