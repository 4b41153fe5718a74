"""Fault injection for tests and soaks: kill a process at a named protocol point, or make
storage fail, stall or go away at a named key.

Off unless ``STREAMJOB_FAULTS`` is set in the environment (child processes inherit it), and
then :func:`point` is one test of an empty tuple: no cost on any path when off. Points sit on
the checkpoint and recovery paths only, never per record.

``STREAMJOB_FAULTS`` holds rules separated by ``;``::

    POINT[:KEYGLOB]=ACTION[,times=N][,skip=N][,after=RULE]

- ``POINT``: a name passed to :func:`point` (``coordinator.after-metadata``) or a storage
  operation (``storage.put``, ``storage.get``, ``storage.list``, ``storage.delete``); the
  ``KEYGLOB`` (fnmatch) narrows storage rules to keys, e.g. ``storage.put:*/_metadata``.
- ``ACTION``: ``kill`` (SIGKILL this process), ``fail`` (raise :class:`StorageError`),
  ``stall:SECONDS`` (block this call), ``outage:SECONDS`` (every matching call in every
  process fails for SECONDS after the first one that fires), ``mark`` (nothing: the firing
  is only recorded, for an ``after`` of another rule).
- ``times``: how often the rule fires over all processes of the run (default 1), counted by
  marker files in ``STREAMJOB_FAULTS_DIR`` (required with rules), so a restarted process does
  not die at the same point forever. ``skip``: matching hits this process lets pass first.
  ``after``: a firing first waits until rule number RULE (its position in the spec, from 0)
  fires again (once more than it had when this one fired), at most :data:`AFTER_TIMEOUT`
  seconds: it orders two events (a state upload that fails only once the next snapshot is
  taken) instead of hoping for a timing.

Each firing writes one line ``streamjob: fault injected: ...`` to stderr and a marker file, so
a test can prove that its fault happened.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from streamjob.storage import Storage, StorageError

ENV = "STREAMJOB_FAULTS"
DIR_ENV = "STREAMJOB_FAULTS_DIR"

ACTIONS = ("kill", "fail", "stall", "outage", "mark")
AFTER_TIMEOUT = 120.0  # an ``after`` that never comes: the fault fires anyway, and says so


class FaultSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    index: int           # position in the spec: names its marker files
    point: str
    key: str | None
    action: str
    seconds: float = 0.0
    times: int = 1
    skip: int = 0
    after: int | None = None  # index of the rule whose firing this one waits for


def parse(spec: str) -> tuple[Rule, ...]:
    """The rules of a ``STREAMJOB_FAULTS`` value; a clear error for anything else."""
    rules = []
    for index, text in enumerate(r.strip() for r in spec.split(";")):
        if not text:
            continue
        where, sep, rest = text.partition("=")
        if not sep or not where:
            raise FaultSpecError(f"fault rule {text!r}: expected POINT[:KEYGLOB]=ACTION")
        point, _, key = where.partition(":")
        action, *options = rest.split(",")
        name, _, arg = action.partition(":")
        if name not in ACTIONS:
            raise FaultSpecError(f"fault rule {text!r}: action {name!r} is not one of "
                                 f"{', '.join(ACTIONS)}")
        fields: dict[str, int] = {}
        for opt in options:
            k, _, v = opt.partition("=")
            if k not in ("times", "skip", "after") or not v.isdigit():
                raise FaultSpecError(f"fault rule {text!r}: option {opt!r} is not times=N, "
                                     "skip=N or after=RULE")
            fields[k] = int(v)
        try:
            seconds = float(arg) if arg else 0.0
        except ValueError:
            raise FaultSpecError(f"fault rule {text!r}: {arg!r} is not a number of seconds"
                                 ) from None
        if name in ("stall", "outage") and not seconds > 0:
            raise FaultSpecError(f"fault rule {text!r}: {name} needs SECONDS > 0")
        if name == "outage" and "after" in fields:
            raise FaultSpecError(f"fault rule {text!r}: an outage cannot wait (after=)")
        rules.append(Rule(index, point, key or None, name, seconds, **fields))
    indexes = {r.index for r in rules}
    for rule in rules:
        if rule.after is not None and (rule.after not in indexes or rule.after == rule.index):
            raise FaultSpecError(f"fault rule {rule.index}: after={rule.after} names no other "
                                 "rule")
    return tuple(rules)


_RULES: tuple[Rule, ...] = ()
_DIR: Path | None = None
_hits: dict[int, int] = {}


def configure(spec: str | None, directory: str | None) -> None:
    """Load rules (from the environment at import; tests may call it again)."""
    global _RULES, _DIR
    _RULES = parse(spec) if spec else ()
    _DIR = Path(directory) if directory else None
    _hits.clear()
    if _RULES and _DIR is None:
        raise FaultSpecError(f"{ENV} is set but {DIR_ENV} is not: fault counts need a folder")


def enabled() -> bool:
    return bool(_RULES)


def point(name: str, key: str | None = None) -> None:
    """A named protocol point: does nothing unless a rule names it."""
    if not _RULES:
        return
    for rule in _RULES:
        if rule.point == name and (rule.key is None or
                                   (key is not None and fnmatch.fnmatchcase(key, rule.key))):
            _hit(rule, name, key)


def fired(directory: str | Path, index: int = 0) -> int:
    """How many times rule ``index`` has fired (for tests)."""
    return len(list(Path(directory).glob(f"rule{index}-*")))


def _claim(rule: Rule) -> bool:
    assert _DIR is not None
    _DIR.mkdir(parents=True, exist_ok=True)
    for n in range(rule.times):
        try:
            fd = os.open(_DIR / f"rule{rule.index}-{n}", os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o600)
        except FileExistsError:
            continue
        os.write(fd, f"{time.time()}\n".encode())
        os.close(fd)
        return True
    return False


def _outage_started(rule: Rule) -> float | None:
    assert _DIR is not None
    try:
        return float((_DIR / f"rule{rule.index}-0").read_text())
    except (OSError, ValueError):
        return None


def _hit(rule: Rule, name: str, key: str | None) -> None:
    seen = _hits.get(rule.index, 0) + 1
    _hits[rule.index] = seen
    if seen <= rule.skip:
        return
    where = f"{name} {key}" if key else name
    if rule.action == "outage":
        started = _outage_started(rule)
        if started is None and _claim(rule):
            _say(f"outage of {rule.seconds:g}s starts at {where}")
            started = _outage_started(rule)
        if started is not None and time.time() < started + rule.seconds:
            raise StorageError(f"injected outage: {where}")
        return
    before = fired(_DIR, rule.after) if rule.after is not None else 0
    if not _claim(rule):
        return
    if rule.after is not None:
        _wait_for(rule.after, before, where)
    _say(f"{rule.action} at {where}")
    if rule.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif rule.action == "fail":
        raise StorageError(f"injected failure: {where}")
    elif rule.action == "stall":
        time.sleep(rule.seconds)  # the fault itself, not synchronisation


def _wait_for(index: int, before: int, where: str) -> None:
    """Block until rule ``index`` has fired more than ``before`` times (in any process), or
    :data:`AFTER_TIMEOUT`."""
    assert _DIR is not None
    deadline = time.monotonic() + AFTER_TIMEOUT
    while fired(_DIR, index) <= before:
        if time.monotonic() > deadline:
            _say(f"rule {index} did not fire again within {AFTER_TIMEOUT:g}s: firing at "
                 f"{where} anyway")
            return
        time.sleep(0.01)  # polls a marker file another process (or thread) writes


def _say(what: str) -> None:
    print(f"streamjob: fault injected: {what} (pid {os.getpid()})", file=sys.stderr,
          flush=True)


class FaultyStorage:
    """A storage whose every operation is a fault point ``storage.<op>`` with its key."""

    def __init__(self, inner: Storage):
        self.inner = inner
        self.uri = inner.uri

    def put(self, key: str, data: bytes) -> None:
        point("storage.put", key)
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        point("storage.get", key)
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        point("storage.get", key)
        return self.inner.get_range(key, offset, length)

    def size(self, key: str) -> int | None:
        point("storage.get", key)
        return self.inner.size(key)

    def list(self, prefix: str) -> list[str]:
        point("storage.list", prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        point("storage.delete", key)
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        point("storage.delete", prefix)
        self.inner.delete_prefix(prefix)


def wrap(storage: Storage) -> Storage:
    """``storage`` itself unless a rule names a storage operation."""
    if any(r.point.startswith("storage.") for r in _RULES):
        return FaultyStorage(storage)
    return storage


configure(os.environ.get(ENV), os.environ.get(DIR_ENV))
