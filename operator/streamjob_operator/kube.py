"""Thin I/O against the Kubernetes API (``kubernetes`` client): tolerant creates and deletes.

A create that meets 409 Conflict is success (a retried handler is harmless); a delete that
meets 404 is success. Nothing here decides anything.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from streamjob_operator import names

log = logging.getLogger(__name__)

# (connect, read) seconds for every call: without it the client waits for an answer forever,
# and a handler stuck on an API server that stopped answering never retries.
REQUEST_TIMEOUT = (5.0, 30.0)


@cache
def api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    return k8s.ApiClient()


def core() -> k8s.CoreV1Api:
    return k8s.CoreV1Api(api_client())


def custom() -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(api_client())


def networking() -> k8s.NetworkingV1Api:
    return k8s.NetworkingV1Api(api_client())


def create(obj: Any) -> bool:
    """Create ``obj`` (Pod, Service, Secret, NetworkPolicy); False if it already existed."""
    namespace = obj.metadata.namespace
    try:
        match obj.kind:
            case "Pod":
                core().create_namespaced_pod(namespace, obj, _request_timeout=REQUEST_TIMEOUT)
            case "Service":
                core().create_namespaced_service(namespace, obj,
                                                _request_timeout=REQUEST_TIMEOUT)
            case "Secret":
                core().create_namespaced_secret(namespace, obj,
                                               _request_timeout=REQUEST_TIMEOUT)
            case "NetworkPolicy":
                networking().create_namespaced_network_policy(
                    namespace, obj, _request_timeout=REQUEST_TIMEOUT)
            case other:
                raise TypeError(f"cannot create a {other}")
    except ApiException as err:
        if err.status == 409:
            return False
        raise
    log.info("created %s %s/%s", obj.kind, namespace, obj.metadata.name)
    return True


def delete_pod(namespace: str, name: str, grace_seconds: int | None = None) -> bool:
    try:
        core().delete_namespaced_pod(name, namespace, grace_period_seconds=grace_seconds,
                                     _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    log.info("deleted Pod %s/%s", namespace, name)
    return True


def list_pods(namespace: str, job: str) -> list[k8s.V1Pod]:
    selector = f"{names.LABEL_JOB}={job},{names.LABEL_MANAGED_BY}={names.MANAGED_BY}"
    return list(core().list_namespaced_pod(namespace, label_selector=selector,
                                           _request_timeout=REQUEST_TIMEOUT).items)


def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return custom().get_namespaced_custom_object(names.GROUP, names.VERSION, namespace,
                                                     names.PLURAL, name,
                                                     _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


class Conflict(Exception):
    """The object changed since it was read (HTTP 409 on a resourceVersion precondition)."""


def patch_status(namespace: str, name: str, status: dict[str, Any],
                 resource_version: str | None = None) -> str | None:
    """Merge-patch the StreamJob's status (``None`` values remove fields).

    With ``resource_version`` the patch carries it as a precondition (optimistic concurrency):
    the API server refuses it with 409 if anyone wrote the object since it was read, and
    :class:`Conflict` is raised so the caller re-reads and decides again. Returns the object's
    new resourceVersion (None if the job is gone).
    """
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        result = custom().patch_namespaced_custom_object_status(
            names.GROUP, names.VERSION, namespace, names.PLURAL, name, body,
            _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status == 404:               # the job is gone: nothing to report on
            return None
        if err.status == 409:
            raise Conflict(f"{namespace}/{name} changed since it was read") from None
        raise
    return (result.get("metadata") or {}).get("resourceVersion") if isinstance(result, dict) \
        else None


def read_secret_key(namespace: str, name: str, key: str) -> str | None:
    import base64

    try:
        secret = core().read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    value = (secret.data or {}).get(key)
    return base64.b64decode(value).decode() if value else None
