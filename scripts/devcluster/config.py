"""Versions, paths and addresses of the dev cluster. Everything here can be overridden by env."""
from __future__ import annotations

import os
from pathlib import Path

# Kubernetes 1.33: the last minor whose kubelet runs on cgroup v1 without opting out of
# failCgroupV1 (1.35 refuses cgroup v1 by default). These machines mount cgroup v1 (hybrid).
K8S_VERSION = os.environ.get("STREAMJOB_K8S_VERSION", "v1.33.13")
COREDNS_VERSION = os.environ.get("STREAMJOB_COREDNS_VERSION", "v1.12.4")
CRICTL_VERSION = os.environ.get("STREAMJOB_CRICTL_VERSION", "v1.34.0")
PAUSE_VERSION = "3.10"
DEBIAN_SUITE = "bookworm"

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("STREAMJOB_CACHE", str(Path.home() / ".cache" / "streamjob")))
STATE = Path(os.environ.get("STREAMJOB_CLUSTER_STATE", "/var/lib/streamjob-cluster"))
RUN = Path(os.environ.get("STREAMJOB_CLUSTER_RUN", "/run/streamjob-cluster"))

NODE_NAME = "streamjob-node"
CLUSTER_DOMAIN = "cluster.local"
POD_CIDR = "10.244.0.0/16"
NODE_POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SVC_IP = "10.96.0.1"
DNS_SVC_IP = "10.96.0.10"
BRIDGE = "sjcni0"
GUARD_CHAIN = "STREAMJOB-GUARD"

ETCD_CLIENT_PORT = 23790
ETCD_PEER_PORT = 23800
APISERVER_PORT = int(os.environ.get("STREAMJOB_APISERVER_PORT", "6443"))

IMAGE_REF = os.environ.get("STREAMJOB_IMAGE", "localhost/streamjob:dev")
PAUSE_REF = f"localhost/pause:{PAUSE_VERSION}"
COREDNS_REF = f"localhost/coredns:{COREDNS_VERSION}"
IMAGE_UID = 10001

K8S_BIN = CACHE / f"k8s-{K8S_VERSION}" / "bin"
TOOLS = CACHE / "tools"
CONTAINERD_SOCK = RUN / "containerd" / "containerd.sock"
KUBECONFIG = STATE / "admin.kubeconfig"
LOGS = STATE / "logs"
PIDS = STATE / "pids"
PKI = STATE / "pki"

APT_PACKAGES = [
    "etcd-server", "containerd", "runc", "containernetworking-plugins", "iptables",
    "conntrack", "nftables", "ebtables", "ethtool", "socat", "debootstrap", "openssl", "gcc",
    "libc6-dev",
]
