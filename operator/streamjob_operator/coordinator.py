"""Client of the coordinator's HTTP API (bearer token), as the operator uses it.

The operator never sits on the data path: it reads the job's state for ``status`` and asks for
savepoints. The token is never logged; errors name the URL and the HTTP status only.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


def stop_savepoint(termination_message: str | None) -> str | None:
    """The savepoint a coordinator stopped with, from its pod's termination message (JSON
    ``{"state": "STOPPED", "savepoint": URI}``); None for anything else."""
    try:
        doc = json.loads(termination_message or "")
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("state") != "STOPPED":
        return None
    savepoint = doc.get("savepoint")
    return savepoint if isinstance(savepoint, str) and savepoint else None


class CoordinatorUnavailable(RuntimeError):
    """The coordinator did not answer (not started yet, restarting, or unreachable)."""


class CoordinatorRefused(CoordinatorUnavailable):
    """The coordinator answered with an HTTP error (4xx/5xx): it did not do what was asked.

    ``reason`` is the API's ``error`` field (``message`` in older answers)."""

    def __init__(self, text: str, status: int, reason: str) -> None:
        super().__init__(text)
        self.status = status
        self.reason = reason


def error_reason(payload: Any) -> str:
    """The refusal reason of an error answer: ``{"error": ...}`` (or ``{"message": ...}``)."""
    if not isinstance(payload, dict):
        return ""
    return str(payload.get("error") or payload.get("message") or "")[:200]


@dataclass(frozen=True)
class JobView:
    state: str
    parallelism: int | None = None
    attempt: int = 0
    restarts: int = 0
    restored_from: int | None = None
    last_checkpoint: dict[str, Any] | None = None
    message: str = ""
    #: completed savepoints of the running coordinator: {id, path, completed_at, size_bytes}
    savepoints: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobView:
        return cls(state=str(data.get("state", "CREATED")), parallelism=data.get("parallelism"),
                   attempt=int(data.get("attempt") or 0), restarts=int(data.get("restarts") or 0),
                   restored_from=data.get("restored_from"),
                   last_checkpoint=data.get("last_checkpoint"),
                   message=str(data.get("message") or ""),
                   savepoints=tuple(s for s in data.get("savepoints") or ()
                                    if isinstance(s, dict) and s.get("path")))

    def savepoint_since(self, since: float) -> str | None:
        """The newest savepoint completed at or after ``since`` (epoch seconds), if any."""
        done = [s for s in self.savepoints if float(s.get("completed_at") or 0) >= since]
        return str(done[-1]["path"]) if done else None


class CoordinatorClient:
    def __init__(self, base_url: str, token: str, timeout: float = 3.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never the token
        return f"CoordinatorClient({self.base_url!r})"

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: float | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                     **({"Content-Type": "application/json"} if data is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = ""
            try:
                detail = error_reason(json.loads(err.read() or b"{}"))
            except (ValueError, OSError):
                pass
            raise CoordinatorRefused(
                f"{method} {self.base_url}{path}: HTTP {err.code}"
                + (f" ({detail})" if detail else ""), err.code, detail) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise CoordinatorUnavailable(f"{method} {self.base_url}{path}: {reason}") from None

    def job(self) -> JobView:
        return JobView.from_json(self._call("GET", "/api/v1/job"))

    def tasks(self, window: float) -> dict[str, Any]:
        """The task metrics (``GET /api/v1/tasks``): rates, busy and backpressure per task."""
        answer = self._call("GET", f"/api/v1/tasks?window={window:g}")
        if not isinstance(answer, dict):
            raise CoordinatorUnavailable(f"GET {self.base_url}/api/v1/tasks: not an object")
        return answer

    def savepoint(self, stop: bool, timeout: float) -> str:
        """Take a savepoint (and stop the job if ``stop``); its URI once complete."""
        answer = self._call("POST", "/api/v1/savepoints", {"stop": stop}, timeout=timeout)
        uri = answer.get("uri")
        if not uri:
            raise CoordinatorUnavailable(f"POST {self.base_url}/api/v1/savepoints answered "
                                         "without a savepoint uri")
        return str(uri)
