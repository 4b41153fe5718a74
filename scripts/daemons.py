"""What the servers that scripts start in the background (scripts/minio, scripts/kafka) share:
the cache root, free ports, the state file ``up`` leaves for ``down``, export lines."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def cmdline(pid: int) -> list[bytes]:
    """The arguments of process ``pid`` ([] if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


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


def down(path: Path, name: str, is_ours, grace: float) -> None:
    """What ``scripts/<server> down`` does: stop the process the state file names (if it is
    still ours: ``is_ours(pid)``), remove its data folder and log, then the state file."""
    if not path.exists():
        print(f"{name} is not up (no state file)", file=sys.stderr)
        return
    state = json.loads(path.read_text())
    pid = state["pid"]
    if pid_alive(pid) and is_ours(pid):
        stop_pid(pid, grace)
    shutil.rmtree(state["data_dir"], ignore_errors=True)
    with contextlib.suppress(OSError):
        Path(state["log"]).unlink()
    path.unlink()
    print(f"{name} (pid {pid}) stopped", file=sys.stderr)


def cli(prog: str, description: str, build_help: str, up_help: str, up_timeout: float,
        handlers: dict, error: type[Exception], argv: list[str] | None = None,
        *, extra=None) -> int:
    """The ``build | up | down`` command line of a server script; ``extra(sub, up)`` adds
    more subcommands and ``up`` options. ``handlers`` maps each subcommand to its function;
    an ``error`` it raises is printed as one line and exits 1."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help=build_help)
    up = sub.add_parser("up", help=up_help)
    up.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    up.add_argument("--timeout", type=float, default=up_timeout,
                    help="seconds to wait for ready")
    sub.add_parser("down", help="stop what `up` started and remove its data")
    if extra is not None:
        extra(sub, up)
    args = parser.parse_args(argv)
    try:
        return handlers[args.command](args)
    except error as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1


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


class ServerProcess:
    """The lifecycle a server child process shares (MinIO, Kafka): signals, the port it frees,
    its log. Subclasses set ``address``, ``port``, ``log_path``, ``proc`` and define
    ``start(timeout)`` and ``close()``."""

    address: str
    port: int | None
    log_path: Path
    proc: subprocess.Popen | None
    stop_grace = 10.0  # seconds a graceful stop may take before SIGKILL

    def __init__(self, data_dir: str | Path | None, *, port: int | None, address: str,
                 prefix: str):
        self.address = address
        self._own_data = data_dir is None  # close() removes only a folder it made
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix=prefix))
        self.port = port
        self.proc = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _start_on_a_port(self, spawn, error: type[Exception]) -> None:
        """``spawn()`` on ``self.port``; without a port set, on a free one, up to three tries
        (a free port can be taken by another process before the server binds it)."""
        fixed = self.port is not None
        for attempt in range(1 if fixed else 3):
            if not fixed:
                self.port = free_port(self.address)
            try:
                spawn()
                return
            except error:
                self._terminate(signal.SIGKILL, 10)
                if fixed or attempt == 2:
                    raise

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _terminate(self, sig: int, grace: float) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if sig != signal.SIGKILL:
            proc.send_signal(signal.SIGCONT)  # in case it was paused
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop (SIGTERM); ``start()`` again reuses port and data."""
        self._terminate(signal.SIGTERM, self.stop_grace if grace is None else grace)
        self._wait_port_free()

    def kill(self) -> None:
        """SIGKILL, as in a crash; ``start()`` again reuses port and data."""
        self._terminate(signal.SIGKILL, 10)
        self._wait_port_free()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections but answers nothing (a hung server)."""
        if self.running():
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause()``."""
        if self.running():
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 60.0) -> ServerProcess:
        self.stop()
        return self.start(timeout)

    def _wait_port_free(self, timeout: float = 5.0) -> None:
        if self.port is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((self.address, self.port)) != 0:
                    return
            time.sleep(0.05)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def session(cls) -> Iterator:
        """Generator for a pytest fixture: one started server, closed at the end."""
        server = cls()
        try:
            server.start()
            yield server
        finally:
            server.close()
