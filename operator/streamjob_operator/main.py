"""The kopf handlers: one line each; the work is in ``reconcile`` (and the pure modules).

Run with ``python -m streamjob_operator`` (or ``kopf run -m streamjob_operator.main``).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from streamjob_operator import kube, names
from streamjob_operator.config import Settings
from streamjob_operator.reconcile import Retry, finalize, forget, reconcile

log = logging.getLogger(__name__)

SETTINGS = Settings.from_env()
ANNOTATION_SAVEPOINT_ON_DELETE = names.ANNOTATION_SAVEPOINT_ON_DELETE
SJ = (names.GROUP, names.VERSION, names.PLURAL)


def _run(namespace: str, name: str, *, wait: bool = True) -> None:
    try:
        reconcile(namespace, name, SETTINGS, wait=wait)
    except Retry as err:
        raise kopf.TemporaryError(str(err), delay=err.delay) from None


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = "streamjob.dev/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="streamjob.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="streamjob.dev", key="last-handled-configuration")
    settings.execution.max_workers = 16
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # The watched namespaces and the CRD are fixed: no cluster-wide list/watch of namespaces and
    # CRDs, which namespaced RBAC forbids (kopf would retry 9 times, ~1 min, before falling back).
    settings.scanning.disabled = True
    kube.api_client()


@kopf.on.create(*SJ)
@kopf.on.update(*SJ)
@kopf.on.resume(*SJ)
def on_change(namespace: str, name: str, **_: Any) -> None:
    _run(namespace, name)


@kopf.timer(*SJ, interval=SETTINGS.poll_interval, sharp=False)
def poll(namespace: str, name: str, **_: Any) -> None:
    _run(namespace, name, wait=False)


@kopf.on.event("", "v1", "pods", labels={names.LABEL_MANAGED_BY: names.MANAGED_BY,
                                        names.LABEL_JOB: kopf.PRESENT})
def on_pod_event(namespace: str, labels: dict[str, str], **_: Any) -> None:
    try:
        reconcile(namespace, labels[names.LABEL_JOB], SETTINGS, wait=False)
    except Exception:  # a pod event must never crash the watch; the timer retries  # noqa: BLE001
        log.exception("reconcile after a pod event of %s/%s failed", namespace,
                      labels.get(names.LABEL_JOB))


@kopf.on.delete(*SJ)
def on_delete(namespace: str, name: str, uid: str, **_: Any) -> None:
    # the final savepoint (if asked for) runs in the background; kopf calls again until done
    if not finalize(namespace, name, SETTINGS):
        raise kopf.TemporaryError("waiting for the final savepoint", delay=2)
    forget(namespace, name, uid)
