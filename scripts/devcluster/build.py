"""Cached builds of every binary the cluster runs (keyed by version under ~/.cache/streamjob/)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from . import config as C
from .util import log, out, run

HERE = Path(__file__).resolve().parent
K8S_CMDS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
            "kube-proxy", "kubectl"]
NEEDED = {
    "etcd": "etcd-server", "containerd": "containerd", "ctr": "containerd", "runc": "runc",
    "iptables": "iptables", "conntrack": "conntrack", "debootstrap": "debootstrap",
    "openssl": "openssl", "gcc": "gcc", "ebtables": "ebtables", "socat": "socat", "nft": "nftables",
}


def ensure_apt() -> None:
    missing = sorted({pkg for cmd, pkg in NEEDED.items() if not shutil.which(cmd)})
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("containernetworking-plugins")
    if not Path("/usr/include/stdio.h").exists():
        missing.append("libc6-dev")
    if not missing:
        return
    log("installing Debian packages:", *missing)
    # Debian's etcd/containerd packages would start their own services; keep them off.
    prc = Path("/usr/sbin/policy-rc.d")
    made = False
    if not prc.exists():
        prc.write_text("#!/bin/sh\nexit 101\n")
        prc.chmod(0o755)
        made = True
    try:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-q"], env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *C.APT_PACKAGES],
            env=env)
    finally:
        if made:
            prc.unlink()


def _nice(cmd: list) -> list:
    return ["nice", "-n", "10", *cmd]


def ensure_k8s() -> Path:
    b = C.K8S_BIN
    if all((b / c).exists() for c in K8S_CMDS):
        return b
    log(f"building Kubernetes {C.K8S_VERSION} from the k8s.io/kubernetes Go module (once)")
    t0 = time.monotonic()
    run(["bash", HERE / "build-k8s.sh", C.K8S_VERSION, b])
    log(f"kubernetes build took {time.monotonic() - t0:.0f}s")
    return b


def ensure_go_install(name: str, module: str, version: str, binary: str) -> Path:
    d = C.TOOLS / f"{name}-{version}"
    if (d / binary).exists():
        return d / binary
    log(f"building {module}@{version} (once)")
    t0 = time.monotonic()
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    run(_nice(["go", "install", "-trimpath", "-ldflags=-s -w", f"{module}@{version}"]),
        env={"GOBIN": str(tmp), "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"})
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    log(f"{name} build took {time.monotonic() - t0:.0f}s")
    return d / binary


def ensure_crictl() -> Path:
    return ensure_go_install("crictl", "sigs.k8s.io/cri-tools/cmd/crictl", C.CRICTL_VERSION,
                             "crictl")


def ensure_coredns() -> Path:
    return ensure_go_install("coredns", "github.com/coredns/coredns", C.COREDNS_VERSION,
                             "coredns")


def ensure_pause() -> Path:
    """The sandbox ("pause") binary from build/pause/linux/pause.c of the same k8s release."""
    d = C.TOOLS / f"pause-{C.PAUSE_VERSION}-{C.K8S_VERSION}"
    if (d / "pause").exists():
        return d / "pause"
    info = json.loads(out(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{C.K8S_VERSION}"],
                          cwd="/"))
    src = Path(info["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    d.mkdir(parents=True, exist_ok=True)
    run(_nice(["gcc", "-Os", "-static", "-Wall", f'-DVERSION=v{C.PAUSE_VERSION}-streamjob',
               "-o", d / "pause.tmp", src]))
    os.replace(d / "pause.tmp", d / "pause")
    return d / "pause"


def ensure_all() -> dict:
    ensure_apt()
    return {
        "k8s": ensure_k8s(),
        "crictl": ensure_crictl(),
        "coredns": ensure_coredns(),
        "pause": ensure_pause(),
    }
