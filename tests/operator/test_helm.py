"""The Helm chart: lint, and what `helm template` renders (helm built from its Go module)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import rbac_matrix
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "streamjob"


def _helm() -> str | None:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    cache = Path(os.environ.get("STREAMJOB_CACHE", Path.home() / ".cache" / "streamjob"))
    built = sorted(cache.glob("helm-*/helm"))
    return str(built[-1]) if built else shutil.which("helm")


HELM = _helm()
pytestmark = pytest.mark.skipif(
    HELM is None, reason="no helm binary: run helm/build-helm.sh (go install of "
    "helm.sh/helm/v3/cmd/helm into ~/.cache/streamjob/) or set HELM")


def template(*args: str) -> list[dict]:
    out = subprocess.run([HELM, "template", "rel", str(CHART), "-n", "sj-system", *args],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_lints_cleanly():
    for extra in ([], ["--set", "clusterWide=true,minio.enabled=true"],
                  ["--set", "metrics.serviceMonitor.enabled=true,metrics.jobPods.enabled=true,"
                   "metrics.jobPods.podMonitor.enabled=true"]):
        result = subprocess.run([HELM, "lint", "--strict", str(CHART), *extra],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def test_default_rbac_is_namespaced_and_least_privilege():
    docs = template()
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    role = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "rel-streamjob")
    assert role["metadata"]["namespace"] == "sj-system"
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"]
             for g in rule["apiGroups"] for r in rule["resources"]}
    assert verbs[("", "pods")] == {"list", "watch", "create", "delete"}
    assert verbs[("", "secrets")] == {"create"}                 # never read, listed or deleted
    assert ("", "*") not in verbs and all("*" not in v for v in verbs.values())
    assert verbs[("streamjob.dev", "streamjobs/status")] == {"patch"}


@pytest.mark.parametrize("row", rbac_matrix.MATRIX, ids=lambda r: " ".join(
    str(x) for x in r[:5]))
def test_rbac_matrix_static_check_of_the_rendered_roles(row):
    """The `kubectl auth can-i` matrix, evaluated on the rendered Roles (the same matrix runs
    as SubjectAccessReviews against a real API server in test_apiserver_operations.py)."""
    verb, group, resource, name, ns_key, allowed = row
    docs = template("--set", "watchNamespaces={jobs}")
    roles = by_kind(docs, "Role")
    namespace = {"jobs": "jobs", "system": "sj-system"}.get(ns_key, ns_key)
    assert rbac_matrix.allowed_by(roles, verb, group, resource, name, namespace) is allowed


def test_one_role_per_watched_namespace():
    docs = template("--set", "watchNamespaces={team-a,team-b}")
    assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")
                  if not r["metadata"]["name"].endswith("-leader")) == ["team-a", "team-b"]
    binding = by_kind(docs, "RoleBinding")[0]
    assert binding["subjects"][0]["namespace"] == "sj-system"
    (dep,) = by_kind(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0][
        "env"]}
    assert env["STREAMJOB_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_cluster_wide_mode_uses_a_cluster_role():
    docs = template("--set", "clusterWide=true")
    assert len(by_kind(docs, "ClusterRole")) == 1
    assert [r["metadata"]["name"] for r in by_kind(docs, "Role")] == ["rel-streamjob-leader"]


def test_operator_deployment_settings_come_from_values():
    docs = template("--set", "image.repository=reg/sj,image.tag=1.2,logLevel=DEBUG",
                    "--set", "resources.requests.cpu=200m")
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "reg/sj:1.2"
    assert c["command"] == ["python", "-m", "streamjob_operator"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["STREAMJOB_OPERATOR_LOG_LEVEL"] == "DEBUG"
    assert env["STREAMJOB_OPERATOR_DEFAULT_IMAGE"] == "reg/sj:1.2"
    assert c["resources"]["requests"]["cpu"] == "200m"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert dep["spec"]["replicas"] == 1
    assert env["STREAMJOB_OPERATOR_LEADER_ELECTION"] == "true"
    assert env["STREAMJOB_OPERATOR_TOKEN_KEY_FILE"] == "/etc/streamjob/token-key/key"
    # The key file is root-owned: the non-root operator reads it through its group only.
    (key_volume,) = [v for v in pod["volumes"] if v["name"] == "token-key"]
    assert key_volume["secret"]["defaultMode"] == 0o440
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]


def test_several_replicas_need_leader_election():
    docs = template("--set", "replicas=3")
    (dep,) = by_kind(docs, "Deployment")
    assert dep["spec"]["replicas"] == 3 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    leader = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-leader"))
    assert leader["metadata"]["namespace"] == "sj-system"
    assert leader["rules"][0]["resourceNames"] == ["streamjob-operator"]
    result = subprocess.run([HELM, "template", "rel", str(CHART), "--set",
                             "replicas=2,leaderElection.enabled=false"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "leaderElection" in result.stderr
    (dep,) = by_kind(template("--set", "leaderElection.enabled=false"), "Deployment")
    assert dep["spec"]["strategy"]["type"] == "Recreate"


def test_the_token_key_is_a_secret_mounted_read_only_into_the_operator():
    docs = template()
    (secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith(
        "-token-key")]
    assert len(secret["data"]["key"]) >= 48
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "token-key")
    assert vol["secret"]["secretName"] == secret["metadata"]["name"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "token-key")
    assert mount["readOnly"] is True


def test_minio_is_optional_and_its_secret_fits_storage_secret():
    def secrets(docs):
        return [s for s in by_kind(docs, "Secret")
                if not s["metadata"]["name"].endswith("-token-key")]
    assert secrets(template()) == []
    docs = template("--set", "minio.enabled=true")
    (secret,) = secrets(docs)
    assert set(secret["stringData"]) == {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                         "AWS_SECRET_ACCESS_KEY"}
    assert len(secret["stringData"]["AWS_SECRET_ACCESS_KEY"]) == 32
    assert {d["kind"] for d in docs} >= {"Service", "Deployment", "Secret"}


def test_chart_ships_the_crd():
    out = subprocess.run([HELM, "show", "crds", str(CHART)], check=True, capture_output=True,
                         text=True, timeout=120).stdout
    crd = yaml.safe_load(out)
    assert crd["metadata"]["name"] == "streamjobs.streamjob.dev"


def env_of(dep: dict) -> dict[str, str | None]:
    return {e["name"]: e.get("value")
            for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_operator_serves_metrics_behind_a_service_without_a_service_monitor_by_default():
    docs = template()
    (dep,) = by_kind(docs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9090} in c["ports"]
    env = env_of(dep)
    assert env["STREAMJOB_OPERATOR_METRICS_PORT"] == "9090"
    assert "STREAMJOB_OPERATOR_JOB_METRICS_PORT" not in env        # job pods: off by default
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics"}]
    assert by_kind(docs, "ServiceMonitor") == [] and by_kind(docs, "PodMonitor") == []


def test_metrics_can_be_turned_off():
    docs = template("--set", "metrics.enabled=false,metrics.serviceMonitor.enabled=true")
    (dep,) = by_kind(docs, "Deployment")
    assert "STREAMJOB_OPERATOR_METRICS_PORT" not in env_of(dep)
    assert [p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]] == [
        "health"]
    assert by_kind(docs, "Service") == [] and by_kind(docs, "ServiceMonitor") == []


def test_service_monitor_selects_the_metrics_service_only():
    docs = template("--set", "metrics.serviceMonitor.enabled=true,minio.enabled=true,"
                    "metrics.serviceMonitor.labels.release=prom,metrics.port=9100")
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["namespace"] == "sj-system"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["sj-system"]}
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    wanted = sm["spec"]["selector"]["matchLabels"]
    selected = [s for s in by_kind(docs, "Service")
                if wanted.items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["rel-streamjob-metrics"]   # not minio
    assert selected[0]["spec"]["ports"][0]["port"] == 9100


def test_job_pod_metrics_and_their_pod_monitor():
    docs = template("--set", "metrics.jobPods.enabled=true,metrics.jobPods.port=9300,"
                    "metrics.jobPods.podMonitor.enabled=true,watchNamespaces={team-a,team-b}")
    (dep,) = by_kind(docs, "Deployment")
    assert env_of(dep)["STREAMJOB_OPERATOR_JOB_METRICS_PORT"] == "9300"
    assert env_of(dep)["STREAMJOB_OPERATOR_MONITORING_NAMESPACE"] == "monitoring"
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    # the labels the operator puts on every job pod (names.job_labels)
    assert pm["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "streamjob",
        "app.kubernetes.io/managed-by": "streamjob-operator"}
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    from streamjob_operator import names

    assert pm["spec"]["selector"]["matchLabels"].items() <= names.job_labels("j").items()
    docs = template("--set", "metrics.jobPods.enabled=true,metrics.jobPods.podMonitor.enabled=true,"
                    "clusterWide=true")
    (pm,) = by_kind(docs, "PodMonitor")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert by_kind(template("--set", "metrics.jobPods.podMonitor.enabled=true"),
                   "PodMonitor") == []                       # job pods serve no metrics
