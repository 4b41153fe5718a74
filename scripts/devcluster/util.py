from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time


def log(*a: object) -> None:
    print("[devcluster]", *a, file=sys.stderr, flush=True)


def run(cmd, check=True, capture=False, env=None, input=None, cwd=None, quiet=False,
        clean_env=False):
    if not quiet:
        log("+", " ".join(shlex.quote(str(c)) for c in cmd))
    e = {} if clean_env else os.environ.copy()
    if env:
        e.update(env)
    r = subprocess.run([str(c) for c in cmd], check=False, env=e, cwd=cwd, input=input,
                       stdout=subprocess.PIPE if capture else sys.stderr,
                       stderr=subprocess.PIPE if capture else None, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n"
                         f"{(r.stderr or '')[-4000:] if capture else ''}")
    return r


def out(cmd, **kw) -> str:
    return run(cmd, capture=True, quiet=True, **kw).stdout


def wait_for(what: str, fn, timeout: float, interval: float = 0.5):
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout}s waiting for {what} (last error: {last})")
