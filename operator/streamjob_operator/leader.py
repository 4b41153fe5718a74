"""Exactly one operator replica acts: a ``coordination.k8s.io/v1`` Lease (leader election).

Every replica starts here. A replica acts (runs kopf) only while it holds the Lease
``streamjob-operator`` in the operator's namespace; the others wait and take it over when the
holder stops renewing it for ``leaseDurationSeconds``. Every write of the Lease carries the
resourceVersion it read, so two replicas can never both believe they acquired it. A holder that
cannot renew before its lease runs out stops the process at once (it might no longer be the only
one acting); Kubernetes starts it again as a waiting replica.

:func:`decide` is the pure core (who may take the lease when); :class:`LeaderElector` does the
I/O with the ``kubernetes`` client (RBAC: get/update on that one Lease by resourceNames, create
on leases).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    identity: str | None
    renewed: float | None          # epoch seconds of the last renewal (None: never)
    duration: float


def decide(me: str, holder: Holder | None, now: float) -> str:
    """``create`` (no lease), ``renew`` (ours), ``take`` (expired or released), ``wait``."""
    if holder is None:
        return "create"
    if holder.identity == me:
        return "renew"
    if not holder.identity or holder.renewed is None or now - holder.renewed > holder.duration:
        return "take"
    return "wait"


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _micro(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class LeaderElector:
    def __init__(self, api: k8s.ApiClient, namespace: str, name: str, me: str | None = None,
                 duration: float = 15.0, renew_every: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.coordination = k8s.CoordinationV1Api(api)
        self.namespace, self.name = namespace, name
        self.me = me or identity()
        self.duration, self.renew_every = duration, renew_every
        self.clock = clock
        self.renewed_at = 0.0
        # A renewal (two calls) ends within a renewal period: one stuck on an API server that
        # stopped answering would otherwise never notice that the lease ran out (and another
        # replica would act beside this one).
        self.request_timeout = (min(5.0, renew_every / 2), renew_every / 2)
        self._stop = threading.Event()

    def _read(self) -> tuple[k8s.V1Lease | None, Holder | None]:
        try:
            lease = self.coordination.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.request_timeout)
        except ApiException as err:
            if err.status == 404:
                return None, None
            raise
        spec = lease.spec or k8s.V1LeaseSpec()
        when = spec.renew_time or spec.acquire_time
        return lease, Holder(spec.holder_identity, when.timestamp() if when else None,
                             float(spec.lease_duration_seconds or self.duration))

    def try_acquire(self) -> bool:
        """One attempt to acquire or renew; True if this replica holds the lease now."""
        now = self.clock()
        lease, holder = self._read()
        action = decide(self.me, holder, now)
        if action == "wait":
            return False
        spec = k8s.V1LeaseSpec(holder_identity=self.me,
                               lease_duration_seconds=max(1, round(self.duration)),
                               renew_time=_micro(now))
        try:
            if action == "create":
                spec.acquire_time = _micro(now)
                spec.lease_transitions = 0
                self.coordination.create_namespaced_lease(self.namespace, k8s.V1Lease(
                    metadata=k8s.V1ObjectMeta(name=self.name, namespace=self.namespace),
                    spec=spec), _request_timeout=self.request_timeout)
            else:
                assert lease is not None
                old = lease.spec or k8s.V1LeaseSpec()
                spec.acquire_time = old.acquire_time if action == "renew" else _micro(now)
                spec.lease_transitions = (old.lease_transitions or 0) + (action == "take")
                lease.spec = spec          # replace with the resourceVersion we read
                self.coordination.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=self.request_timeout)
        except ApiException as err:
            if err.status in (409, 422):   # someone else wrote it first
                return False
            raise
        if action != "renew":
            log.info("%s acquired the lease %s/%s (%s)", self.me, self.namespace, self.name,
                     action)
        self.renewed_at = now
        return True

    def acquire(self, on_wait: Callable[[], None] | None = None) -> None:
        """Block until this replica holds the lease."""
        logged = False
        while not self._stop.is_set():
            try:
                if self.try_acquire():
                    return
            except Exception as err:  # noqa: BLE001 - API server unreachable: keep waiting
                log.warning("lease %s/%s: %s", self.namespace, self.name, err)
            if not logged:
                log.info("%s waits for the lease %s/%s (another replica acts)", self.me,
                         self.namespace, self.name)
                logged = True
            if on_wait:
                on_wait()
            self._stop.wait(min(self.renew_every, self.duration / 3))

    def keep(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in the background; ``on_lost`` when it cannot be renewed in time."""
        def loop() -> None:
            while not self._stop.wait(self.renew_every):
                try:
                    if self.try_acquire():
                        continue
                    log.error("%s lost the lease %s/%s to another replica", self.me,
                              self.namespace, self.name)
                except Exception as err:  # noqa: BLE001 - any failure: retry until too late
                    if self.clock() - self.renewed_at < self.duration - self.renew_every:
                        log.warning("lease renewal failed, retrying: %s", err)
                        continue
                    log.error("cannot renew the lease %s/%s: %s", self.namespace, self.name,
                              err)
                on_lost()
                return
        thread = threading.Thread(target=loop, name="lease", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the lease up (clean shutdown), so another replica takes over at once."""
        self._stop.set()
        try:
            lease, holder = self._read()
            if lease is not None and holder is not None and holder.identity == self.me:
                lease.spec.holder_identity = None
                self.coordination.replace_namespaced_lease(
                    self.name, self.namespace, lease, _request_timeout=self.request_timeout)
        except Exception as err:  # noqa: BLE001 - best effort on the way out
            log.debug("could not release the lease: %s", err)
