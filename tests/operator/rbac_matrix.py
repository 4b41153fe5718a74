"""What the operator's service account may and may not do: one matrix, checked statically
against the chart's rendered Roles (test_helm.py) and by SubjectAccessReview against a real
kube-apiserver with that RBAC applied (test_apiserver_operations.py).

Rows: (verb, api group, resource, name or None, namespace key, allowed). The namespace key is
"jobs" (a watched namespace) or "system" (the release namespace).
"""

from __future__ import annotations

from typing import Any

LEASE = "streamjob-operator"

MATRIX: list[tuple[str, str, str, str | None, str, bool]] = [
    # what it uses
    ("list", "streamjob.dev", "streamjobs", None, "jobs", True),
    ("watch", "streamjob.dev", "streamjobs", None, "jobs", True),
    ("get", "streamjob.dev", "streamjobs", "wc", "jobs", True),
    ("patch", "streamjob.dev", "streamjobs", "wc", "jobs", True),      # kopf: finalizer
    ("patch", "streamjob.dev", "streamjobs/status", "wc", "jobs", True),
    ("update", "streamjob.dev", "streamjobs/finalizers", "wc", "jobs", True),
    ("list", "", "pods", None, "jobs", True),
    ("watch", "", "pods", None, "jobs", True),
    ("create", "", "pods", None, "jobs", True),
    ("delete", "", "pods", "wc-worker-0-0", "jobs", True),
    ("create", "", "services", None, "jobs", True),
    ("create", "", "secrets", None, "jobs", True),
    ("create", "networking.k8s.io", "networkpolicies", None, "jobs", True),
    ("create", "", "events", None, "jobs", True),
    ("get", "coordination.k8s.io", "leases", LEASE, "system", True),
    ("update", "coordination.k8s.io", "leases", LEASE, "system", True),
    ("create", "coordination.k8s.io", "leases", None, "system", True),
    # what it does not use
    ("update", "streamjob.dev", "streamjobs", "wc", "jobs", False),
    ("delete", "streamjob.dev", "streamjobs", "wc", "jobs", False),
    ("get", "", "secrets", "wc-api-token", "jobs", False),
    ("get", "", "secrets", "minio-creds", "jobs", False),
    ("list", "", "secrets", None, "jobs", False),
    ("watch", "", "secrets", None, "jobs", False),
    ("delete", "", "secrets", "wc-api-token", "jobs", False),
    ("delete", "", "services", "wc-coordinator", "jobs", False),
    ("get", "", "services", "wc-coordinator", "jobs", False),
    ("delete", "networking.k8s.io", "networkpolicies", "wc-coordinator", "jobs", False),
    ("patch", "", "pods", "wc-worker-0-0", "jobs", False),
    ("update", "", "pods", "wc-worker-0-0", "jobs", False),
    ("create", "", "pods/exec", "wc-worker-0-0", "jobs", False),
    ("patch", "", "events", None, "jobs", False),
    ("get", "coordination.k8s.io", "leases", "someone-else", "system", False),
    ("update", "coordination.k8s.io", "leases", "someone-else", "system", False),
    ("delete", "coordination.k8s.io", "leases", LEASE, "system", False),
    ("create", "", "pods", None, "elsewhere", False),
    ("list", "", "namespaces", None, "", False),
    ("create", "rbac.authorization.k8s.io", "roles", None, "jobs", False),
]


def allowed_by(roles: list[dict[str, Any]], verb: str, group: str, resource: str,
               name: str | None, namespace: str) -> bool:
    """RBAC's rule matching (no wildcards are used by the chart, so none are handled)."""
    for role in roles:
        if role["kind"] == "Role" and role["metadata"]["namespace"] != namespace:
            continue
        for rule in role.get("rules") or []:
            if verb not in rule["verbs"] or group not in rule["apiGroups"] \
                    or resource not in rule["resources"]:
                continue
            names = rule.get("resourceNames")
            if names and name not in names:
                continue
            return True
    return False
