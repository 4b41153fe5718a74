"""The ``streamjob`` command."""

# Start-up time: the manifest's models (pydantic), YAML, asyncio and the HTTP client are
# imported inside the commands that use them, so that `streamjob --help`, `savepoint`,
# `checkpoints` and `ui` do not pay for them (pydantic alone is most of a bare start).

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from streamjob.errors import ManifestError
from streamjob.pipeline import PipelineError
from streamjob.storage import StorageError, open_storage


def _fail(msg: str, code: int = 2) -> int:
    print(f"streamjob: error: {msg}", file=sys.stderr)
    return code


def _manifest_from(args: argparse.Namespace):
    import yaml

    from streamjob.manifest import parse_manifest

    if args.manifest:
        text = Path(args.manifest).read_text()
    elif os.environ.get("STREAMJOB_MANIFEST"):
        text = os.environ["STREAMJOB_MANIFEST"]
    else:
        raise ManifestError("no manifest: pass --manifest FILE or set STREAMJOB_MANIFEST")
    return parse_manifest(yaml.safe_load(text))


def cmd_run(args: argparse.Namespace) -> int:
    from streamjob.local import run_local
    from streamjob.manifest import parse_arg

    overrides = dict(parse_arg(a) for a in args.arg)
    return run_local(args.manifest, overrides, args.parallelism, args.checkpoint_dir,
                     args.from_savepoint, progress=not args.quiet,
                     allow_fresh_start=args.allow_fresh_start)


def cmd_coordinator(args: argparse.Namespace) -> int:
    import asyncio

    from streamjob.coordinator import Coordinator

    logging.basicConfig(level=os.environ.get("STREAMJOB_LOG", "INFO"),
                        format="%(asctime)s coordinator %(levelname)s %(message)s")
    job = _manifest_from(args)
    token = os.environ.get("STREAMJOB_API_TOKEN")
    if args.api_token_file:
        token = Path(args.api_token_file).read_text().strip()
    storage = open_storage(job.spec.storage)
    coordinator = Coordinator(job, args.job_id, storage, args.bind, args.port, args.status_file,
                              args.from_savepoint, args.api_port if token else None, token,
                              allow_fresh_start=args.allow_fresh_start)
    if args.metrics_port is not None:
        coordinator.metrics.serve(args.metrics_port, args.bind)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        return asyncio.run(coordinator.run())
    except StorageError as err:
        # Unreachable storage or an unusable restore point: the job cannot start.
        logging.getLogger("streamjob.coordinator").error("job failed: %s", err)
        return 2


def cmd_worker(args: argparse.Namespace) -> int:
    from streamjob.worker import run_worker

    job = _manifest_from(args)
    return run_worker(job, args.index, args.coordinator, args.bind, args.advertise,
                      metrics_port=args.metrics_port)


def local_api(name: str, root: Path = Path()) -> tuple[str, str]:
    """Address and token of the coordinator API of the local job ``name`` run from the folder
    ``root``, or ManifestError saying (in one line) why there is none to talk to right now."""
    from streamjob.local import OVER, RUNS, read_json, supervisor_running

    run_dir = root / RUNS / name
    if not run_dir.is_dir():
        raise ManifestError(f"no local job named {name!r} was run here ({run_dir} not found)")
    info = read_json(run_dir / "run.json") or {}
    status = read_json(run_dir / "status.json") or {}
    ours = not info.get("job_id") or status.get("job_id") == info["job_id"]
    state = status.get("state") if ours else None  # None: no status of this run yet
    if not supervisor_running(run_dir):
        if info.get("state", "running") != "running" or state in OVER:
            ended = state if state in OVER else str(info.get("state")).upper()
            raise ManifestError(f"job {name!r} is {ended}, not running")
        raise ManifestError(f"job {name!r} is not running: its streamjob run (pid "
                            f"{info.get('supervisor_pid', '?')}) is gone; run the same "
                            f"command again to resume {info.get('job_id', 'it')} from its "
                            "latest checkpoint")
    if state in OVER:
        raise ManifestError(f"job {name!r} is {state}, not running")
    port = status.get("coordinator", {}).get("api_port")
    try:
        token = (run_dir / "api-token").read_text().strip()
    except OSError:
        token = ""
    if not port or not token or state is None:
        raise ManifestError(f"the coordinator of job {name!r} is starting or restarting; "
                            "try again in a few seconds")
    return f"http://127.0.0.1:{port}", token


def api_call(base: str, token: str, method: str, path: str, body: Any = None,
             timeout: float = 120) -> Any:
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read() or b"{}").get("error", err.reason)
        except (ValueError, AttributeError, OSError):
            detail = err.reason
        raise ManifestError(f"the coordinator refused: {detail}") from None


def cmd_savepoint(args: argparse.Namespace) -> int:
    if args.kube:
        # A job in Kubernetes: its coordinator API through an API-server port-forward.
        from streamjob import kube_access

        if args.name:
            raise ManifestError("name a local job or pass --kube NAMESPACE/NAME, not both")
        try:
            with kube_access.coordinator_api(args.kube) as (base, token, forwarder):
                return _savepoint_via(base, token, args.kube, args.stop, forwarder)
        except kube_access.KubeAccessError as err:
            raise ManifestError(str(err)) from None
    if not args.name:
        raise ManifestError("name a running job, or pass --kube NAMESPACE/NAME")
    base, token = local_api(args.name)
    return _savepoint_via(base, token, args.name, args.stop)


# Beyond the job's checkpoint timeout, the stop marker's write (storage timeouts) and a reply.
SAVEPOINT_MARGIN_S = 60.0


def take_savepoint(base: str, token: str, stop: bool) -> dict[str, Any]:
    """Ask the coordinator API at ``base`` for a savepoint (and to stop): its id, size, URI.
    Waits as long as the coordinator may take: the job's checkpoint timeout plus a margin
    (a savepoint of GBs of state takes minutes; a fixed 120 s gave up on one that succeeded)."""
    wait = savepoint_wait_s(api_call(base, token, "GET", "/api/v1/job", timeout=30))
    return api_call(base, token, "POST", "/api/v1/savepoints", {"stop": stop}, timeout=wait)


def savepoint_wait_s(status: dict[str, Any]) -> float:
    """How long to wait for a savepoint of the job whose status is ``status`` (a coordinator
    of an older version names no timeout: the default one, 60 s)."""
    return float(status.get("checkpoint_timeout_s") or 60.0) + SAVEPOINT_MARGIN_S


def _savepoint_via(base: str, token: str, job: str, stop: bool, forwarder: Any = None) -> int:
    import http.client

    try:
        result = take_savepoint(base, token, stop)
    except (OSError, http.client.HTTPException, ValueError) as err:
        why = (forwarder.error if forwarder is not None and forwarder.error else None) or \
            getattr(err, "reason", None) or err
        raise ManifestError(f"lost the coordinator of job {job!r} before it answered "
                            f"({why}); it may be restarting: try again") from None
    print(f"savepoint {result['id']} ({result['size_bytes']} bytes)", file=sys.stderr)
    print(result["uri"])
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from streamjob import timeline

    if args.metadata:
        # A stored checkpoint or savepoint: no running job needed.
        from streamjob.checkpoints import decode_metadata

        where = args.metadata
        if not where.rstrip("/").endswith("_metadata"):
            where = where.rstrip("/") + "/_metadata"
        try:
            if "://" in where and not where.startswith("file://"):
                folder, _, leaf = where.rpartition("/")
                body = decode_metadata(open_storage(folder).get(leaf))
            else:
                body = decode_metadata(Path(where.removeprefix("file://")).read_bytes())
        except OSError as err:
            raise ManifestError(f"cannot read {where}: {err}") from None
        return _show_checkpoint(args, timeline.entry_from_metadata(body, where.rpartition("/")[0]))
    if args.kube:
        # A job in Kubernetes: its coordinator API through an API-server port-forward.
        from streamjob import kube_access

        if args.name:
            raise ManifestError("name a local job or pass --kube NAMESPACE/NAME, not both")
        try:
            with kube_access.coordinator_api(args.kube) as (base, token, forwarder):
                return _checkpoints_from_api(args, base, token, forwarder)
        except kube_access.KubeAccessError as err:
            raise ManifestError(str(err)) from None
    if not args.name:
        raise ManifestError("name a running job, or pass --kube NAMESPACE/NAME or "
                            "--metadata PATH")
    base, token = local_api(args.name)
    return _checkpoints_from_api(args, base, token)


def _checkpoints_from_api(args: argparse.Namespace, base: str, token: str,
                          forwarder: Any = None) -> int:
    import http.client

    from streamjob import timeline

    def get(path: str) -> Any:
        try:
            return api_call(base, token, "GET", path)
        except (OSError, http.client.HTTPException) as err:
            why = (forwarder.error if forwarder is not None and forwarder.error else None) or err
            via = " through the port-forward" if forwarder is not None else ""
            raise ManifestError(f"cannot reach the coordinator API{via}: {why}") from None

    if args.id is None:
        history = get("/api/v1/checkpoints")["checkpoints"]
        if args.json:
            print(json.dumps(history, indent=1))
        else:
            print(timeline.history_table(history), end="")
        return 0
    return _show_checkpoint(args, get(f"/api/v1/checkpoints/{args.id}"))


def _show_checkpoint(args: argparse.Namespace, entry: dict[str, Any]) -> int:
    from streamjob import timeline

    if args.json:
        print(json.dumps(entry, indent=1))
    elif entry.get("timings") is None:
        print(timeline.history_table([entry]), end="")
        print(f"checkpoint {entry['id']} has no per-subtask timings "
              f"({entry.get('status')}: {entry.get('reason', '')})")
    else:
        print(timeline.render_text(entry, width=args.width), end="")
    if args.out:
        try:
            timeline.write_picture(entry, args.out)
        except (RuntimeError, ValueError) as err:
            raise ManifestError(str(err)) from None
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    def announce(url: str) -> None:
        print(f"dashboard of {args.kube or args.name}: {url}  (Ctrl-C to stop)", flush=True)

    if args.kube:
        from streamjob import kube_access

        if args.name:
            raise ManifestError("name a local job or pass --kube NAMESPACE/NAME, not both")
        from streamjob import uiproxy  # aiohttp: after the checks that fail fast

        try:
            with kube_access.coordinator_api(args.kube) as (base, token, _):
                return uiproxy.serve(lambda: (base, token), args.port, announce, args.open)
        except kube_access.KubeAccessError as err:
            raise ManifestError(str(err)) from None
    if not args.name:
        raise ManifestError("name a running job, or pass --kube NAMESPACE/NAME")
    local_api(args.name)  # fail now, in one line, if there is no job to show
    from streamjob import uiproxy  # aiohttp: after the checks that fail fast

    return uiproxy.serve(lambda: local_api(args.name), args.port, announce, args.open)


def cmd_savepoints(args: argparse.Namespace) -> int:
    import datetime as dt

    from streamjob.checkpoints import list_savepoints

    storage = open_storage(args.storage)
    rows = list_savepoints(storage)
    if args.job:
        rows = [r for r in rows if r["job_id"] == args.job]
    print(f"{'COMPLETED (UTC)':<20} {'SIZE':>12} {'P':>3}  URI")
    for r in rows:
        when = dt.datetime.fromtimestamp(r["completed_at"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when:<20} {r['size_bytes']:>12,} {r['parallelism']:>3}  {r['uri']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamjob", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a StreamJob manifest on this machine")
    run.add_argument("manifest")
    run.add_argument("-p", "--parallelism", type=int)
    run.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--checkpoint-dir", help="storage for checkpoints (folder or URI)")
    run.add_argument("--from-savepoint", metavar="URI")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="on an error in the pipeline's code, print its full traceback")
    run.add_argument("--allow-fresh-start", action="store_true",
                     help="if the job's storage holds checkpoints but none is readable, start "
                          "from the beginning instead of failing")
    run.set_defaults(fn=cmd_run)

    co = sub.add_parser("coordinator", help="(internal) the coordinator process")
    co.add_argument("--manifest")
    co.add_argument("--job-id", required=True)
    co.add_argument("--bind", default="127.0.0.1")
    co.add_argument("--port", type=int, default=0)
    co.add_argument("--api-port", type=int, default=8081)
    co.add_argument("--api-token-file")
    co.add_argument("--status-file")
    co.add_argument("--from-savepoint")
    co.add_argument("--allow-fresh-start", action="store_true",
                    help="start from the beginning when storage holds checkpoints of this job "
                         "but none can be restored (replaces the job's committed output)")
    co.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    co.set_defaults(fn=cmd_coordinator)

    wk = sub.add_parser("worker", help="(internal) a worker process")
    wk.add_argument("--manifest")
    wk.add_argument("--coordinator", required=True, metavar="HOST:PORT")
    wk.add_argument("--index", type=int, required=True)
    wk.add_argument("--bind", default="127.0.0.1")
    wk.add_argument("--advertise")
    wk.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    wk.set_defaults(fn=cmd_worker)

    sp = sub.add_parser("savepoint", help="take a savepoint of a running job (local, or in "
                        "Kubernetes with --kube)")
    sp.add_argument("name", nargs="?", help="the job's metadata.name (a local run here)")
    sp.add_argument("--kube", metavar="NAMESPACE/NAME",
                    help="a StreamJob in Kubernetes (KUBECONFIG): its coordinator API through "
                         "an API-server port-forward, the token from the job's Secret")
    sp.add_argument("--stop", action="store_true", help="stop the job after the savepoint")
    sp.set_defaults(fn=cmd_savepoint)

    ui = sub.add_parser("ui", help="open the web dashboard of a running job (local, or in "
                        "Kubernetes with --kube) through a local proxy that holds the token")
    ui.add_argument("name", nargs="?", help="the job's metadata.name (a local run here)")
    ui.add_argument("--kube", metavar="NAMESPACE/NAME",
                    help="a StreamJob in Kubernetes (KUBECONFIG): through an API-server "
                         "port-forward, the token from the job's Secret")
    ui.add_argument("--port", type=int, default=0,
                    help="local port of the proxy on 127.0.0.1 (default: any free port)")
    ui.add_argument("--open", action="store_true", help="also open it in a browser")
    ui.set_defaults(fn=cmd_ui)

    sps = sub.add_parser("savepoints", help="list the savepoints kept in a storage location")
    sps.add_argument("storage", help="the jobs' storage: a folder, file:// or s3:// URI")
    sps.add_argument("--job", help="only the savepoints of this job id")
    sps.set_defaults(fn=cmd_savepoints)

    ck = sub.add_parser("checkpoints", help="checkpoint history of a running job (local, or "
                        "in Kubernetes with --kube); --id N: the per-subtask timeline of "
                        "checkpoint N")
    ck.add_argument("name", nargs="?", help="the job's metadata.name (a local run here)")
    ck.add_argument("--kube", metavar="NAMESPACE/NAME",
                    help="a StreamJob in Kubernetes (KUBECONFIG): its coordinator API through "
                         "an API-server port-forward, the token from the job's Secret")
    ck.add_argument("--id", type=int, help="draw the timeline of this checkpoint")
    ck.add_argument("--metadata", metavar="PATH",
                    help="draw from a stored checkpoint's _metadata (folder or file, "
                         "path or URI); no running job needed")
    ck.add_argument("--out", metavar="FILE", help="also write the timeline to FILE.svg or "
                    "FILE.png (PNG needs matplotlib)")
    ck.add_argument("--width", type=int, default=60, help="columns of the time axis")
    ck.add_argument("--json", action="store_true", help="print the raw API answer")
    ck.set_defaults(fn=cmd_checkpoints)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ManifestError, PipelineError) as err:
        if getattr(args, "verbose", False) and err.__cause__ is not None:
            traceback.print_exception(err.__cause__)
        return _fail(str(err))
    except StorageError as err:
        return _fail(str(err))
