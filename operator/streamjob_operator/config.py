"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

PREFIX = "STREAMJOB_OPERATOR_"


def _labels(text: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in text.split(",") if "=" in item)
    return {k.strip(): v.strip() for k, v in pairs}


@dataclass(frozen=True)
class Settings:
    #: image of job pods when the StreamJob names none
    default_image: str = "streamjob:latest"
    default_pull_policy: str | None = None
    run_as_user: int = 10001
    #: how workers find the coordinator: its Service's DNS name, or its pod IP (no DNS needed)
    coordinator_address: Literal["service", "pod-ip"] = "service"
    #: how the operator reaches the coordinator API: pod IP, Service DNS, or a fixed template
    #: such as ``http://127.0.0.1:18081`` (tests); ``{name}``/``{namespace}`` are filled in
    api_url: str = "pod-ip"
    http_timeout: float = 3.0
    savepoint_timeout: float = 300.0
    #: a rescale or upgrade whose new pods are not RUNNING by then is rolled back
    rollout_timeout: float = 300.0
    poll_interval: float = 3.0
    network_policy: bool = True
    operator_namespace: str | None = None
    operator_pod_labels: dict[str, str] = field(default_factory=dict)
    namespaces: tuple[str, ...] = ()
    clusterwide: bool = False
    log_level: str = "INFO"
    #: serve the operator's Prometheus metrics on this port (off when None)
    metrics_port: int | None = None
    #: job pods serve Prometheus metrics on this port (coordinator and workers; off when None)
    job_metrics_port: int | None = None
    #: namespace whose pods (Prometheus) may scrape the job pods' metrics port
    monitoring_namespace: str | None = None
    #: act only while holding the Lease (several replicas: exactly one acts)
    leader_election: bool = False
    lease_duration: float = 15.0
    lease_renew: float = 5.0
    #: liveness endpoint port (/healthz); 0: none
    health_port: int = 8080
    #: secret key the per-job API tokens are derived from (HMAC of the job's uid); when unset,
    #: the operator reads each job's token from its Secret instead
    token_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str, default: str | None = None) -> str | None:
            return env.get(PREFIX + name, default)

        mode = get("COORDINATOR_ADDRESS", "service")
        if mode not in ("service", "pod-ip"):
            raise ValueError(f"{PREFIX}COORDINATOR_ADDRESS={mode!r}: use service or pod-ip")
        return cls(
            default_image=get("DEFAULT_IMAGE", cls.default_image) or cls.default_image,
            default_pull_policy=get("DEFAULT_PULL_POLICY") or None,
            run_as_user=int(get("RUN_AS_USER", "10001") or 10001),
            coordinator_address=mode,  # type: ignore[arg-type]
            api_url=get("API_URL", "pod-ip") or "pod-ip",
            http_timeout=float(get("HTTP_TIMEOUT", "3") or 3),
            savepoint_timeout=float(get("SAVEPOINT_TIMEOUT", "300") or 300),
            rollout_timeout=float(get("ROLLOUT_TIMEOUT", "300") or 300),
            poll_interval=float(get("POLL_INTERVAL", "3") or 3),
            network_policy=(get("NETWORK_POLICY", "true") or "true").lower() == "true",
            operator_namespace=get("NAMESPACE") or None,
            operator_pod_labels=_labels(get("POD_LABELS", "") or ""),
            namespaces=tuple(n.strip() for n in (get("NAMESPACES", "") or "").split(",")
                             if n.strip()),
            clusterwide=(get("CLUSTERWIDE", "false") or "false").lower() == "true",
            log_level=(get("LOG_LEVEL", "INFO") or "INFO").upper(),
            metrics_port=int(get("METRICS_PORT", "") or 0) or None,
            job_metrics_port=int(get("JOB_METRICS_PORT", "") or 0) or None,
            monitoring_namespace=get("MONITORING_NAMESPACE") or None,
            leader_election=(get("LEADER_ELECTION", "false") or "false").lower() == "true",
            lease_duration=float(get("LEASE_DURATION", "15") or 15),
            lease_renew=float(get("LEASE_RENEW", "5") or 5),
            health_port=int(get("HEALTH_PORT", "8080") or 0),
            token_key=_read_key(get("TOKEN_KEY_FILE")) or get("TOKEN_KEY") or None,
        )


def _read_key(path: str | None) -> str | None:
    """The token key from its file. A file that is named but unreadable or empty is an error
    at start-up, not a silent fallback to reading Secrets (which the chart's RBAC forbids)."""
    if not path:
        return None
    try:
        with open(path) as f:
            key = f.read().strip()
    except OSError as err:
        raise ValueError(f"{PREFIX}TOKEN_KEY_FILE={path}: cannot read it: {err.strerror}"
                         ) from None
    if not key:
        raise ValueError(f"{PREFIX}TOKEN_KEY_FILE={path} is empty")
    return key
