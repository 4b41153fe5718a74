"""Certificates and service-account keys, generated locally with openssl."""
from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from . import config as C
from .util import run


def _openssl(*args) -> None:
    run(["openssl", *args], quiet=True, capture=True)


def ca(pki: Path) -> None:
    if (pki / "ca.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", pki / "ca.key")
    _openssl("req", "-x509", "-new", "-key", pki / "ca.key", "-sha256", "-days", "3650",
             "-subj", "/CN=streamjob-dev-ca", "-out", pki / "ca.crt",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")
    (pki / "ca.key").chmod(0o600)
    # service-account token signing key pair
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", pki / "sa.key")
    _openssl("pkey", "-in", pki / "sa.key", "-pubout", "-out", pki / "sa.pub")


def leaf(pki: Path, name: str, cn: str, org: str | None = None, client: bool = True,
         server: bool = False, dns: list[str] = (), ips: list[str] = ()) -> None:
    key, crt = pki / f"{name}.key", pki / f"{name}.crt"
    subj = f"/CN={cn}" + (f"/O={org}" if org else "")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    key.chmod(0o600)
    eku = ",".join((["clientAuth"] if client else []) + (["serverAuth"] if server else []))
    ext = ["basicConstraints=critical,CA:FALSE",
           "keyUsage=critical,digitalSignature,keyEncipherment", f"extendedKeyUsage={eku}"]
    san = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
    if san:
        ext.append("subjectAltName=" + ",".join(san))
    with tempfile.NamedTemporaryFile("w", suffix=".ext") as ef, \
            tempfile.NamedTemporaryFile(suffix=".csr") as csr:
        ef.write("\n".join(ext) + "\n")
        ef.flush()
        _openssl("req", "-new", "-key", key, "-subj", subj, "-out", csr.name)
        _openssl("x509", "-req", "-in", csr.name, "-CA", pki / "ca.crt", "-CAkey", pki / "ca.key",
                 "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", ef.name, "-out", crt)


def ensure(pki: Path, node_ip: str) -> None:
    ca(pki)
    stamp = pki / "leaf.stamp"
    want = f"{node_ip} {C.NODE_NAME} {C.KUBERNETES_SVC_IP} v1"
    if stamp.exists() and stamp.read_text() == want:
        return
    leaf(pki, "etcd-server", "etcd", client=True, server=True, dns=["localhost"],
         ips=["127.0.0.1"])
    leaf(pki, "apiserver-etcd-client", "kube-apiserver-etcd-client")
    leaf(pki, "apiserver", "kube-apiserver", client=False, server=True,
         dns=["kubernetes", "kubernetes.default", "kubernetes.default.svc",
              f"kubernetes.default.svc.{C.CLUSTER_DOMAIN}", "localhost", C.NODE_NAME],
         ips=["127.0.0.1", node_ip, C.KUBERNETES_SVC_IP])
    leaf(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters")
    leaf(pki, "admin", "streamjob-admin", org="system:masters")
    leaf(pki, "controller-manager", "system:kube-controller-manager")
    leaf(pki, "scheduler", "system:kube-scheduler")
    leaf(pki, "kube-proxy", "system:kube-proxy")
    leaf(pki, "kubelet", f"system:node:{C.NODE_NAME}", org="system:nodes")
    leaf(pki, "kubelet-server", C.NODE_NAME, client=False, server=True,
         dns=[C.NODE_NAME, "localhost"], ips=[node_ip, "127.0.0.1"])
    stamp.write_text(want)


def kubeconfig(pki: Path, name: str, user: str, server: str, out: Path) -> None:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    text = f"""apiVersion: v1
kind: Config
clusters:
- name: streamjob-dev
  cluster:
    server: {server}
    certificate-authority-data: {b64(pki / "ca.crt")}
users:
- name: {user}
  user:
    client-certificate-data: {b64(pki / f"{name}.crt")}
    client-key-data: {b64(pki / f"{name}.key")}
contexts:
- name: streamjob-dev
  context:
    cluster: streamjob-dev
    user: {user}
current-context: streamjob-dev
"""
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
        out.chmod(0o600)
