"""Long coordinator calls (savepoints, up to ``savepointTimeout``) off kopf's executor threads.

A reconcile that needs a savepoint records the step in ``status.operation`` and starts the
request here, in a thread of its own per request; it returns at once, so kopf's executor
threads (shared by every job) never wait for a savepoint. When the answer arrives, ``on_done``
runs (it reconciles the job again) and the next reconcile reads the answer with :meth:`get`.

Answers live only in this process: an operator that restarts finds no request here and reads
the coordinator (its savepoint list, or the coordinator pod's exit) instead.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from streamjob_operator.coordinator import CoordinatorRefused, CoordinatorUnavailable

log = logging.getLogger(__name__)


@dataclass
class Request:
    ident: tuple[object, ...]
    done: threading.Event = field(default_factory=threading.Event)
    uri: str | None = None
    error: str = ""
    #: the coordinator answered with an error: it did not do (and will not do) the savepoint
    refused: bool = False


class Requests:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[str, Request] = {}
        #: run calls in the caller's thread (tests)
        self.inline = False

    def get(self, key: str, ident: tuple[object, ...]) -> Request | None:
        with self._lock:
            req = self._requests.get(key)
        return req if req is not None and req.ident == ident else None

    def start(self, key: str, ident: tuple[object, ...], call: Callable[[], str],
              on_done: Callable[[], None] | None = None) -> Request:
        """Run ``call`` (returns a savepoint URI) for ``key``; at most one request per key."""
        with self._lock:
            current = self._requests.get(key)
            if current is not None and current.ident == ident:
                return current
            req = self._requests[key] = Request(ident)
        if self.inline:
            self._run(req, call, None)
        else:
            ctx = contextvars.copy_context()      # kopf's event posting lives in contextvars
            threading.Thread(target=ctx.run, args=(self._run, req, call, on_done),
                             name=f"savepoint {key}", daemon=True).start()
        return req

    def forget(self, key: str) -> None:
        with self._lock:
            self._requests.pop(key, None)

    @staticmethod
    def _run(req: Request, call: Callable[[], str],
             on_done: Callable[[], None] | None) -> None:
        try:
            req.uri = call()
        except CoordinatorRefused as err:
            req.error, req.refused = str(err), True
        except CoordinatorUnavailable as err:
            req.error = str(err)
        except Exception as err:  # noqa: BLE001 - reported through the request, never lost
            log.exception("savepoint request %s failed", req.ident)
            req.error = str(err)
        finally:
            req.done.set()
        if on_done is not None:
            try:
                on_done()
            except Exception:  # noqa: BLE001 - the periodic timer reconciles again anyway
                log.exception("reconcile after a savepoint answer failed")


REQUESTS = Requests()
