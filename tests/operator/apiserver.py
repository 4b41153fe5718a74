"""A real kube-apiserver + etcd on 127.0.0.1 for integration tests (no kubelet, no scheduler).

Binaries: $KUBE_APISERVER, else the cluster build cache (~/.cache/streamjob/k8s-*/bin*/), and
etcd from $ETCD or PATH (Debian etcd-server). Nothing here builds Kubernetes.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

TOKEN = "streamjob-integration-admin-token"


def _works(path: str | None) -> bool:
    if not path or not os.access(path, os.X_OK):
        return False
    try:
        return subprocess.run([path, "--version"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def find_binaries() -> tuple[str | None, str | None]:
    cache = Path(os.environ.get("STREAMJOB_CACHE", Path.home() / ".cache" / "streamjob"))
    candidates = [os.environ.get("KUBE_APISERVER")] + [
        str(p) for p in sorted(cache.glob("k8s-*/bin/kube-apiserver"), reverse=True)] + [
        str(p) for p in sorted(cache.glob("k8s-*/bin*/kube-apiserver"), reverse=True)]
    apiserver = next((c for c in candidates if _works(c)), None)
    etcd = os.environ.get("ETCD") or shutil.which("etcd")
    return apiserver, etcd if _works(etcd) else None


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ApiServer:
    url: str
    kubeconfig: Path
    processes: list[subprocess.Popen]

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def start(workdir: Path, apiserver: str, etcd: str) -> ApiServer:
    workdir.mkdir(parents=True, exist_ok=True)
    etcd_port, peer_port, api_port = _port(), _port(), _port()
    logs = []
    etcd_log = open(workdir / "etcd.log", "w")  # noqa: SIM115
    logs.append(etcd_log)
    procs = [subprocess.Popen(
        [etcd, "--data-dir", str(workdir / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
         "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
         "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
         "--unsafe-no-fsync"],
        stdout=etcd_log, stderr=subprocess.STDOUT, env={**os.environ, "ETCD_UNSUPPORTED_ARCH":
                                                        os.environ.get("ETCD_UNSUPPORTED_ARCH",
                                                                       "")})]
    key = workdir / "sa.key"
    pub = workdir / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True,
                   capture_output=True)
    tokens = workdir / "tokens.csv"
    tokens.write_text(f'{TOKEN},admin,admin,"system:masters"\n')
    api_log = open(workdir / "kube-apiserver.log", "w")  # noqa: SIM115
    procs.append(subprocess.Popen(
        [apiserver, f"--etcd-servers=http://127.0.0.1:{etcd_port}",
         "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
         f"--secure-port={api_port}", f"--cert-dir={workdir / 'certs'}",
         "--service-account-issuer=https://kubernetes.default.svc",
         f"--service-account-key-file={pub}", f"--service-account-signing-key-file={key}",
         "--service-cluster-ip-range=10.96.0.0/16", "--authorization-mode=Node,RBAC",
         f"--token-auth-file={tokens}", "--allow-privileged=false"],
        stdout=api_log, stderr=subprocess.STDOUT))
    url = f"https://127.0.0.1:{api_port}"
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: test, cluster: {{server: "{url}", insecure-skip-tls-verify: true}}}}]
users: [{{name: admin, user: {{token: {TOKEN}}}}}]
contexts: [{{name: test, context: {{cluster: test, user: admin, namespace: default}}}}]
current-context: test
""")
    server = ApiServer(url, kubeconfig, procs)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        try:
            req = urllib.request.Request(url + "/readyz",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(0.5)
    server.stop()
    tail = (workdir / "kube-apiserver.log").read_text()[-2000:]
    raise RuntimeError(f"kube-apiserver did not become ready:\n{tail}")
