"""Errors shared across the runtime: :class:`ManifestError` (what a user must fix), and
failures that repeat (user code failing at every restart attempt) logged without noise: the
full traceback the first time, then one line each time the same failure comes back.

This module stays light (no pydantic, no YAML): the ``streamjob`` commands that never read a
manifest (``savepoint``, ``checkpoints``, ``ui``, ``--help``) catch ManifestError without
importing :mod:`streamjob.manifest` and its models."""

from __future__ import annotations

import logging
import threading
import traceback

#: the longest exception text a worker sends with FAILED (the end of a traceback matters most)
TRACEBACK_LIMIT = 8000



class ManifestError(ValueError):
    """A manifest (or a command line) the user must fix; the message is one sentence naming
    the field or saying what to do. :mod:`streamjob.manifest` raises it for a bad manifest."""


_seen: dict[tuple[str, str, str], int] = {}
_lock = threading.Lock()


def log_failure(log: logging.Logger, err: BaseException, msg: str, *args: object) -> None:
    """``log.exception(msg, *args)`` the first time this process sees this failure (same
    message, exception type and text); one ERROR line naming it and its count after that."""
    text = msg % args if args else msg
    key = (text, type(err).__name__, str(err))
    with _lock:
        if len(_seen) > 1000:  # failures whose text differs each time: keep memory bounded
            _seen.clear()
        count = _seen[key] = _seen.get(key, 0) + 1
    if count == 1:
        log.error(text, exc_info=err)
    else:
        log.error("%s: %s: %s (again, %d times; traceback logged the first time)", text,
                  type(err).__name__, err, count)


def traceback_text(err: BaseException, limit: int = TRACEBACK_LIMIT) -> str:
    """The traceback of ``err`` as text, its last ``limit`` characters (for the failure
    history the coordinator keeps and the dashboard shows)."""
    text = "".join(traceback.format_exception(err))
    return text if len(text) <= limit else "…" + text[-limit:]
