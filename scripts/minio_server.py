"""A real MinIO server for development, tests and CI.

The server is built from its Go module with the Go toolchain (``go install``) into a cache
outside the repository, keyed by version, so only the first run on a machine pays for the
build. Then it runs on 127.0.0.1 with a fresh data folder and generated credentials.

Command line (``scripts/minio`` calls this)::

    scripts/minio build          # build into ~/.cache/streamjob/minio-<version>/ if missing
    eval "$(scripts/minio up)"   # start; prints AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...
    scripts/minio down           # stop what ``up`` started and remove its data folder

Python API (used by pytest fixtures)::

    server = MinioServer()
    server.start()          # builds if needed, waits until ready
    server.env              # {"AWS_ENDPOINT_URL": ..., "AWS_ACCESS_KEY_ID": ..., ...}
    server.stop()           # graceful stop; start() again reuses the same port and data
    server.kill()           # SIGKILL, for crash tests
    server.pause()          # SIGSTOP: a hung server; server.resume() continues it
    server.close()          # stop and remove the data folder

For a pytest fixture in any test folder (with ``scripts/`` on ``sys.path``)::

    from minio_server import minio_session
    minio_server = pytest.fixture(scope="session")(minio_session)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from daemons import (
    CACHE_ROOT,
    ServerProcess,
    cli,
    cmdline,
    down,
    exports,
    pid_alive,
    write_state,
)

MODULE = "github.com/minio/minio"
# The community MinIO repository stopped cutting releases after RELEASE.2025-10-15T17-29-55Z
# (commit 9e49d5e7a648). The Go module proxy reachable here refuses that tag and its
# pseudo-version; it serves the final commit of the repository, which is that release plus
# eleven commits (README changes and a few bug fixes). Pin that exact version.
VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"


class MinioError(RuntimeError):
    """MinIO could not be built or started."""


def cache_dir(version: str = VERSION) -> Path:
    return CACHE_ROOT / f"minio-{version}"


def binary_path(version: str = VERSION) -> Path:
    """Where the built server lives (``$STREAMJOB_MINIO_BIN`` overrides)."""
    override = os.environ.get("STREAMJOB_MINIO_BIN")
    if override:
        return Path(override)
    return cache_dir(version) / "bin" / "minio"


def build(version: str = VERSION, *, quiet: bool = False) -> Path:
    """Build MinIO into the cache unless it is already there; return the binary's path."""
    binary = binary_path(version)
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    if os.environ.get("STREAMJOB_MINIO_BIN"):
        raise MinioError(f"STREAMJOB_MINIO_BIN={binary} is not an executable file")
    go = shutil.which("go")
    if go is None:
        raise MinioError("the Go toolchain (`go`) is needed to build MinIO and is not on PATH")
    target = cache_dir(version)
    target.mkdir(parents=True, exist_ok=True)
    # One build at a time per version, also across processes (pytest workers, CI steps).
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target))
        try:
            env = dict(os.environ, GOBIN=str(staging), CGO_ENABLED="0")
            cmd = [go, "install", "-trimpath", f"{MODULE}@{version}"]
            if shutil.which("nice"):
                cmd = ["nice", "-n", "10", *cmd]
            if not quiet:
                print(f"building MinIO {version} into {target} (first run only, takes minutes)",
                      file=sys.stderr, flush=True)
            started = time.monotonic()
            proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                tail = "\n".join(proc.stdout.splitlines()[-30:])
                raise MinioError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{tail}")
            built = staging / "minio"
            if not built.is_file():
                raise MinioError(f"`go install` produced no binary in {staging}")
            binary.parent.mkdir(parents=True, exist_ok=True)
            os.replace(built, binary)
            if not quiet:
                print(f"built {binary} in {time.monotonic() - started:.0f} s",
                      file=sys.stderr, flush=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return binary


# Talk to 127.0.0.1 directly even where http_proxy is set.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class MinioServer(ServerProcess):
    """One MinIO server process on 127.0.0.1 (or ``address``, e.g. a bridge IP pods reach).

    ``stop()`` followed by ``start()`` brings the server back on the same port with the same
    data folder and credentials (for outage tests); ``close()`` also removes the data folder
    when this object created it.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        log_path: str | Path | None = None,
        address: str = "127.0.0.1",
    ):
        super().__init__(data_dir, port=port, address=address, prefix="streamjob-minio-")
        self.access_key = access_key or "sj" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.log_path = Path(log_path) if log_path else self.data_dir.with_name(
            self.data_dir.name + ".log")

    # -- settings ---------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise MinioError("the server has not been started yet")
        return f"http://{self.address}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The standard S3 settings for a client of this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    # -- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = 60.0, *, detach: bool = False) -> MinioServer:
        """Start (building first if needed) and wait until the server answers ready."""
        if self.running():
            return self
        binary = build()
        self._start_on_a_port(lambda: self._spawn(binary, timeout, detach), MinioError)
        return self

    def _spawn(self, binary: Path, timeout: float, detach: bool) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("MINIO_", "AWS_"))
        }
        env.update(
            MINIO_ROOT_USER=self.access_key,
            MINIO_ROOT_PASSWORD=self.secret_key,
            MINIO_BROWSER="off",           # no console listener
            MINIO_UPDATE="off",
            MINIO_CALLHOME_ENABLE="off",
        )
        cmd = [str(binary), "server", str(self.data_dir),
               "--address", f"{self.address}:{self.port}", "--quiet", "--anonymous"]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=detach,
            )
        finally:
            log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        url = f"{self.endpoint}/minio/health/ready"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise MinioError(
                    f"MinIO exited during start-up (code {self.proc and self.proc.returncode});"
                    f" log {self.log_path}:\n{self.log_tail()}")
            try:
                with _NO_PROXY.open(url, timeout=1) as resp:
                    ready = resp.status == 200
                if ready:
                    # The answer could come from another server that holds the port (ours then
                    # fails to bind and exits): make sure ours is still running.
                    time.sleep(0.2)
                    if self.proc.poll() is None:
                        return
                    continue
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise MinioError(f"MinIO on {self.endpoint} not ready after {timeout:.0f} s;"
                                 f" log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)

    def close(self) -> None:
        """Stop and remove the data folder and log if this object created them."""
        self.stop()
        if self._own_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.log_path.unlink()

    def __repr__(self) -> str:  # never the secret
        return f"MinioServer(endpoint=http://{self.address}:{self.port}, data_dir={self.data_dir})"


def minio_session() -> Iterator[MinioServer]:
    """Generator for a pytest fixture: one started server, closed at the end."""
    yield from MinioServer.session()


# -- command line (scripts/minio) ---------------------------------------------------------

def state_file() -> Path:
    return Path(os.environ.get("STREAMJOB_MINIO_STATE") or CACHE_ROOT / "run" / "minio.json")


def _pid_is_minio(pid: int) -> bool:
    args = cmdline(pid)
    return bool(args) and args[0].endswith(b"minio") and b"server" in args


def cmd_build(_args) -> int:
    print(build())
    return 0


def cmd_up(args) -> int:
    path = state_file()
    if path.exists():
        state = json.loads(path.read_text())
        if pid_alive(state["pid"]) and _pid_is_minio(state["pid"]):
            print(f"MinIO already up (pid {state['pid']})", file=sys.stderr)
            sys.stdout.write(exports(state["env"]))
            return 0
        # Left over from a server that is gone: clear it away.
        shutil.rmtree(state["data_dir"], ignore_errors=True)
        path.unlink()
    server = MinioServer(port=args.port)
    server.start(timeout=args.timeout, detach=True)
    write_state(path, {"pid": server.pid, "data_dir": str(server.data_dir),
                       "log": str(server.log_path), "env": server.env})
    print(f"MinIO up on {server.endpoint} (pid {server.pid}, data {server.data_dir},"
          f" log {server.log_path})", file=sys.stderr)
    sys.stdout.write(exports(server.env))
    return 0


def cmd_down(_args) -> int:
    down(state_file(), "MinIO", _pid_is_minio, grace=10)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli("scripts/minio", __doc__.split("\n")[0],
               f"go install {MODULE}@{VERSION} into {cache_dir()}",
               "start on 127.0.0.1; print export lines to eval", 60.0,
               {"build": cmd_build, "up": cmd_up, "down": cmd_down}, MinioError, argv)


if __name__ == "__main__":
    sys.exit(main())
