"""What the servers that scripts start in the background (scripts/minio, scripts/kafka) share:
the cache root, free ports, the state file ``up`` leaves for ``down``, export lines."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import time
from pathlib import Path

CACHE_ROOT = Path(
    os.environ.get("STREAMJOB_CACHE") or Path.home() / ".cache" / "streamjob"
).expanduser()


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def stop_pid(pid: int, grace: float) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``grace`` seconds."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)


def write_state(path: Path, state: dict) -> None:
    """The state file ``up`` leaves for ``down`` (0600: it may hold credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)


def exports(env: dict[str, str]) -> str:
    """``export K=V`` lines for ``eval "$(scripts/... up)"``."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def parse_exports(text: str) -> dict[str, str]:
    """The inverse of :func:`exports`."""
    env = {}
    for line in text.splitlines():
        if not line.startswith("export "):
            raise ValueError(f"not an export line: {line!r}")
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = shlex.split(value)[0]
    return env
