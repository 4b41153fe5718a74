"""Start/stop a single-node Kubernetes cluster from real binaries (see docs/cluster.md).

Processes: etcd, containerd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
kube-proxy; CoreDNS runs as a Deployment in the cluster. Every process we start gets a pid
file under STATE/pids ("pid exe"); `down` stops exactly those, plus the containerd shims of
our containerd (by its socket path) and the pods' processes in the kubelet's kubepods cgroups.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from . import build, image, oci, pki
from . import config as C
from .util import log, out, run, wait_for

HERE = Path(__file__).resolve().parent
COMPONENTS = ["etcd", "containerd", "kube-apiserver", "kube-controller-manager",
              "kube-scheduler", "kubelet", "kube-proxy"]
SYSCTLS = {
    # ours
    "net.ipv4.ip_forward": "1",
    "net.bridge.bridge-nf-call-iptables": "1",
    "net.bridge.bridge-nf-call-ip6tables": "1",
    # set by kubelet/kube-proxy themselves; recorded so `down` can restore them
    "vm.overcommit_memory": None, "vm.panic_on_oom": None, "kernel.panic": None,
    "kernel.panic_on_oops": None, "kernel.keys.root_maxkeys": None,
    "kernel.keys.root_maxbytes": None, "net.ipv4.conf.all.route_localnet": None,
}


# ---------------------------------------------------------------- processes

def _pidfile(name: str) -> Path:
    return C.PIDS / f"{name}.pid"


def _proc_alive(pid: int, exe: str) -> bool:
    try:
        real = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    real = real.removesuffix(" (deleted)")
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return os.path.realpath(exe) == real or os.path.basename(exe) == os.path.basename(real)


def _read_pidfile(name: str) -> tuple[int, str, str] | None:
    p = _pidfile(name)
    if not p.exists():
        return None
    try:
        w = p.read_text().split()
        return int(w[0]), w[1], (w[2] if len(w) > 2 else "")
    except (ValueError, IndexError):
        return None


def running(name: str) -> int | None:
    r = _read_pidfile(name)
    if not r:
        return None
    pid, exe, _ = r
    return pid if _proc_alive(pid, exe) else None


def _fingerprint(argv: list[str], files: list) -> str:
    h = hashlib.sha256("\0".join(argv).encode())
    for f in files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def start(name: str, argv: list, files: list = (), env: dict | None = None) -> int:
    """Start `name` unless it already runs with the same command line and config files."""
    argv = [str(a) for a in argv]
    fp = _fingerprint(argv, files)
    pid = running(name)
    if pid:
        if _read_pidfile(name)[2] == fp:
            return pid
        log(f"{name}: command line or config changed, restarting")
        stop(name)
    C.LOGS.mkdir(parents=True, exist_ok=True)
    C.PIDS.mkdir(parents=True, exist_ok=True)
    e = os.environ.copy()
    e.update(env or {})
    logf = open(C.LOGS / f"{name}.log", "ab")
    logf.write(f"\n==== {time.ctime()} starting: {' '.join(argv)}\n".encode())
    logf.flush()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                         env=e, start_new_session=True, close_fds=True)
    logf.close()
    _pidfile(name).write_text(f"{p.pid} {os.path.realpath(argv[0])} {fp}\n")
    log(f"started {name} pid {p.pid} (log {C.LOGS / (name + '.log')})")
    time.sleep(0.3)
    if p.poll() is not None:
        logp = C.LOGS / f"{name}.log"
        raise SystemExit(f"{name} exited at once ({p.returncode}); see {logp}:\n"
                         + (C.LOGS / f"{name}.log").read_text()[-3000:])
    return p.pid


def stop(name: str, timeout: float = 15) -> None:
    pid = running(name)
    if pid:
        log(f"stopping {name} pid {pid}")
        _kill_wait(pid, timeout)
    _pidfile(name).unlink(missing_ok=True)


def _kill_wait(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


# ---------------------------------------------------------------- network

def node_ip() -> str:
    f = C.STATE / "node-ip"
    r = out(["ip", "-4", "-o", "route", "show", "default"]).split()
    dev = r[r.index("dev") + 1] if "dev" in r else None
    addrs = out(["ip", "-4", "-o", "addr", "show"] + (["dev", dev] if dev else [])).split("\n")
    for line in addrs:
        w = line.split()
        if "inet" in w and "scope" in w and w[w.index("scope") + 1] == "global":
            ip = w[w.index("inet") + 1].split("/")[0]
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(ip)
            return ip
    raise SystemExit("no global IPv4 address for the node")


def _sysctl_path(k: str) -> Path:
    return Path("/proc/sys") / k.replace(".", "/")


def setup_network() -> None:
    orig = C.STATE / "sysctl.orig.json"
    if not orig.exists():
        saved = {}
        for k in SYSCTLS:
            p = _sysctl_path(k)
            if p.exists():
                saved[k] = p.read_text().strip()
        orig.write_text(json.dumps(saved, indent=1))
    for k, v in SYSCTLS.items():
        if v is not None and _sysctl_path(k).exists():
            _sysctl_path(k).write_text(v)
    # Guard: traffic of the cluster's address ranges never leaves the node. Only the bridge
    # carries pod traffic; service IPs not translated by kube-proxy are rejected.
    ch = C.GUARD_CHAIN
    if run(["iptables", "-w", "-n", "-L", ch], check=False, capture=True,
           quiet=True).returncode != 0:
        run(["iptables", "-w", "-N", ch], quiet=True)
    run(["iptables", "-w", "-F", ch], quiet=True)
    for rule in (["-d", C.SERVICE_CIDR, "-j", "REJECT"],
                 ["-d", C.POD_CIDR, "!", "-o", C.BRIDGE, "-j", "REJECT"],
                 ["-s", C.POD_CIDR, "!", "-o", C.BRIDGE, "-j", "REJECT"]):
        run(["iptables", "-w", "-A", ch, *rule], quiet=True)
    for parent in ("FORWARD", "OUTPUT"):
        if run(["iptables", "-w", "-C", parent, "-j", ch], check=False, capture=True,
               quiet=True).returncode != 0:
            run(["iptables", "-w", "-I", parent, "1", "-j", ch], quiet=True)
    # pods' traffic to the node itself (API server via the kubernetes Service) is INPUT: allowed.


def guard_first() -> None:
    """kube-proxy and the kubelet insert their jumps at the top of FORWARD/OUTPUT; once they
    have, move ours back to position 1 (they only re-insert theirs when missing)."""
    def kube_proxy_synced() -> bool:
        return "KUBE-SERVICES" in out(["iptables", "-w", "-S", "FORWARD"])

    wait_for("kube-proxy's iptables rules", kube_proxy_synced, 60)
    for parent in ("FORWARD", "OUTPUT"):
        first = out(["iptables", "-w", "-S", parent]).splitlines()[1:2]
        if first == [f"-A {parent} -j {C.GUARD_CHAIN}"]:
            continue
        while run(["iptables", "-w", "-D", parent, "-j", C.GUARD_CHAIN], check=False,
                  capture=True, quiet=True).returncode == 0:
            pass
        run(["iptables", "-w", "-I", parent, "1", "-j", C.GUARD_CHAIN], quiet=True)


def _remove_kube_chains() -> None:
    """kubelet's own KUBE-* chains (canaries, KUBE-FIREWALL) are not removed by
    `kube-proxy --cleanup`; remove every KUBE-* chain and the rules that jump to them."""
    import shlex
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            r = run([tool, "-w", "-t", table, "-S"], check=False, capture=True, quiet=True)
            if r.returncode != 0:
                continue
            lines = r.stdout.splitlines()
            for ln in lines:
                w = shlex.split(ln)
                if w[:1] == ["-A"] and not w[1].startswith("KUBE-") and "-j" in w \
                        and w[w.index("-j") + 1].startswith("KUBE-"):
                    run([tool, "-w", "-t", table, "-D", *w[1:]], check=False, capture=True,
                        quiet=True)
            chains = [ln.split()[1] for ln in lines
                      if ln.startswith("-N KUBE-")]
            for ch in chains:
                run([tool, "-w", "-t", table, "-F", ch], check=False, capture=True, quiet=True)
            for ch in chains:
                run([tool, "-w", "-t", table, "-X", ch], check=False, capture=True, quiet=True)


def teardown_network(k8s_bin: Path | None) -> None:
    if not shutil.which("iptables"):
        return
    ch = C.GUARD_CHAIN
    for parent in ("FORWARD", "OUTPUT"):
        while run(["iptables", "-w", "-D", parent, "-j", ch], check=False, capture=True,
                  quiet=True).returncode == 0:
            pass
    run(["iptables", "-w", "-F", ch], check=False, capture=True, quiet=True)
    run(["iptables", "-w", "-X", ch], check=False, capture=True, quiet=True)
    if k8s_bin and (k8s_bin / "kube-proxy").exists() and (C.STATE / "kube-proxy.yaml").exists():
        # removes every KUBE-* chain and rule kube-proxy made
        run([k8s_bin / "kube-proxy", "--cleanup", "--config", C.STATE / "kube-proxy.yaml"],
            check=False, capture=True, quiet=True)
    _remove_kube_chains()
    if Path(f"/sys/class/net/{C.BRIDGE}").exists():
        run(["ip", "link", "del", C.BRIDGE], check=False)
    orig = C.STATE / "sysctl.orig.json"
    if orig.exists():
        for k, v in json.loads(orig.read_text()).items():
            try:
                _sysctl_path(k).write_text(v)
            except OSError as e:
                log(f"could not restore {k}={v}: {e}")
        orig.unlink()


# ---------------------------------------------------------------- config files

def _write(path: Path, text: str) -> None:
    """Write only when the content changes (kube-proxy exits when its config file is touched)."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def write_configs(ip: str, bins: dict) -> None:
    S, P = C.STATE, C.PKI
    kb = bins["k8s"]
    server_local = f"https://127.0.0.1:{C.APISERVER_PORT}"
    for name, user in [("admin", "streamjob-admin"),
                       ("controller-manager", "system:kube-controller-manager"),
                       ("scheduler", "system:kube-scheduler"),
                       ("kube-proxy", "system:kube-proxy"),
                       ("kubelet", f"system:node:{C.NODE_NAME}")]:
        pki.kubeconfig(P, name, user, server_local, S / f"{name}.kubeconfig")
    (S / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
    for old in (S / "cni" / "net.d").iterdir():
        if old.name != "10-streamjob.conflist":
            old.unlink()
    _write(S / "cni" / "net.d" / "10-streamjob.conflist", json.dumps({
        "cniVersion": "0.4.0", "name": "streamjob",
        "plugins": [
            {"type": "bridge", "bridge": C.BRIDGE, "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": C.NODE_POD_CIDR}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(S / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=1))
    _write(S / "containerd.toml", f"""version = 2
root = "{S / 'containerd'}"
state = "{C.RUN / 'containerd-state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{C.CONTAINERD_SOCK}"
[ttrpc]
  address = "{C.CONTAINERD_SOCK}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{S / 'containerd-opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{C.PAUSE_REF}"
  enable_selinux = false
  netns_mounts_under_state_dir = true
  # These machines' root lacks CAP_SYS_RESOURCE, so negative oom_score_adj (kubelet asks -998
  # for sandboxes) is refused ("failed to update /proc/self/oom_score_adj: Permission
  # denied"); clamp to containerd's own score instead, as kind does in user namespaces.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = "{C.RUN / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{S / 'cni' / 'net.d'}"
""")
    _write(S / "kubelet.yaml", f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {P / 'ca.crt'}}}
authorization: {{mode: Webhook}}
tlsCertFile: {P / 'kubelet-server.crt'}
tlsPrivateKeyFile: {P / 'kubelet-server.key'}
containerRuntimeEndpoint: unix://{C.CONTAINERD_SOCK}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDomain: {C.CLUSTER_DOMAIN}
clusterDNS: [{C.DNS_SVC_IP}]
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}}
evictionPressureTransitionPeriod: 10s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
registerNode: true
podCIDR: {C.NODE_POD_CIDR}
podLogsDir: {S / 'pod-logs'}
maxPods: 110
""")
    _write(S / "kube-proxy.yaml", f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {S / 'kube-proxy.kubeconfig'}}}
mode: iptables
clusterCIDR: {C.POD_CIDR}
hostnameOverride: {C.NODE_NAME}
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["primary"]
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
iptables: {{syncPeriod: 10s, minSyncPeriod: 0s}}
""")
    _ = kb


def addons_yaml() -> str:
    return (HERE / "addons.yaml").read_text().replace("@COREDNS_IMAGE@", C.COREDNS_REF) \
        .replace("@DNS_IP@", C.DNS_SVC_IP).replace("@DOMAIN@", C.CLUSTER_DOMAIN)


# ---------------------------------------------------------------- health

def _ssl_ctx(cert: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(C.PKI / "ca.crt"))
    ctx.load_cert_chain(str(C.PKI / f"{cert}.crt"), str(C.PKI / f"{cert}.key"))
    return ctx


def _get(url: str, cert: str, timeout: float = 3) -> str:
    with urllib.request.urlopen(url, context=_ssl_ctx(cert), timeout=timeout) as r:
        return r.read().decode()


def etcd_healthy() -> bool:
    return '"health":"true"' in _get(f"https://127.0.0.1:{C.ETCD_CLIENT_PORT}/health",
                                     "apiserver-etcd-client").replace(" ", "")


def apiserver_ready() -> bool:
    return _get(f"https://127.0.0.1:{C.APISERVER_PORT}/readyz", "admin").strip() == "ok"


def kubectl(kb: Path, *args, check=True, capture=True):
    return run([kb / "kubectl", "--kubeconfig", C.KUBECONFIG, *args], check=check,
               capture=capture, quiet=True)


# ---------------------------------------------------------------- images

def import_images(bins: dict, with_app: bool) -> None:
    have = set(out(oci.ctr("images", "ls", "-q")).split())
    pause = image.single_binary_image(
        f"pause-{C.PAUSE_VERSION}", C.PAUSE_REF, bins["pause"], "/pause",
        {"Entrypoint": ["/pause"], "User": "65535:65535"})
    if C.PAUSE_REF not in have:
        oci.import_archive(pause)
    coredns = image.single_binary_image(
        f"coredns-{C.COREDNS_VERSION}", C.COREDNS_REF, bins["coredns"], "/coredns",
        {"Entrypoint": ["/coredns"], "ExposedPorts": {"53/udp": {}, "53/tcp": {}}})
    if C.COREDNS_REF not in have:
        oci.import_archive(coredns)
    if with_app:
        oci.import_archive(image.build(import_into_cluster=False))
    elif C.IMAGE_REF not in have and (image.IMG / "streamjob-dev.oci.tar").exists():
        oci.import_archive(image.IMG / "streamjob-dev.oci.tar")


# ---------------------------------------------------------------- up / down / status

def up(with_image: bool = True) -> None:
    t0 = time.monotonic()
    bins = build.ensure_all()
    kb = bins["k8s"]
    for d in (C.STATE, C.RUN, C.LOGS, C.PIDS):
        d.mkdir(parents=True, exist_ok=True)
    ip = node_ip()
    pki.ensure(C.PKI, ip)
    write_configs(ip, bins)
    setup_network()
    P = C.PKI

    start("etcd", ["etcd", "--name", "streamjob", "--data-dir", C.STATE / "etcd",
                   "--listen-client-urls", f"https://127.0.0.1:{C.ETCD_CLIENT_PORT}",
                   "--advertise-client-urls", f"https://127.0.0.1:{C.ETCD_CLIENT_PORT}",
                   "--listen-peer-urls", f"http://127.0.0.1:{C.ETCD_PEER_PORT}",
                   "--initial-advertise-peer-urls", f"http://127.0.0.1:{C.ETCD_PEER_PORT}",
                   "--initial-cluster", f"streamjob=http://127.0.0.1:{C.ETCD_PEER_PORT}",
                   "--cert-file", P / "etcd-server.crt", "--key-file", P / "etcd-server.key",
                   "--trusted-ca-file", P / "ca.crt", "--client-cert-auth",
                   "--snapshot-count", "10000", "--quota-backend-bytes", str(2 << 30)])
    start("containerd", ["containerd", "--config", C.STATE / "containerd.toml"],
          files=[C.STATE / "containerd.toml", C.STATE / "cni/net.d/10-streamjob.conflist"])
    wait_for("etcd", etcd_healthy, 60)
    wait_for("containerd", lambda: C.CONTAINERD_SOCK.exists() and run(
        oci.ctr("version"), check=False, capture=True, quiet=True).returncode == 0, 60)
    import_images(bins, with_image)

    start("kube-apiserver", [
        kb / "kube-apiserver", "--advertise-address", ip, "--bind-address", "0.0.0.0",
        "--secure-port", C.APISERVER_PORT,
        "--etcd-servers", f"https://127.0.0.1:{C.ETCD_CLIENT_PORT}",
        "--etcd-cafile", P / "ca.crt", "--etcd-certfile", P / "apiserver-etcd-client.crt",
        "--etcd-keyfile", P / "apiserver-etcd-client.key",
        "--client-ca-file", P / "ca.crt",
        "--tls-cert-file", P / "apiserver.crt", "--tls-private-key-file", P / "apiserver.key",
        "--kubelet-client-certificate", P / "apiserver-kubelet-client.crt",
        "--kubelet-client-key", P / "apiserver-kubelet-client.key",
        "--kubelet-certificate-authority", P / "ca.crt",
        "--kubelet-preferred-address-types", "InternalIP,Hostname",
        "--service-account-issuer", f"https://kubernetes.default.svc.{C.CLUSTER_DOMAIN}",
        "--service-account-key-file", P / "sa.pub",
        "--service-account-signing-key-file", P / "sa.key",
        "--service-cluster-ip-range", C.SERVICE_CIDR,
        "--authorization-mode", "Node,RBAC",
        "--enable-admission-plugins", "NodeRestriction",
        "--allow-privileged=true", "--profiling=false", "--event-ttl", "1h",
        "--v", "1"])
    wait_for("kube-apiserver /readyz", apiserver_ready, 120)
    S = C.STATE
    common = ["--bind-address", "127.0.0.1", "--leader-elect=false", "--profiling=false"]
    start("kube-controller-manager", [
        kb / "kube-controller-manager", "--kubeconfig", S / "controller-manager.kubeconfig",
        "--authentication-kubeconfig", S / "controller-manager.kubeconfig",
        "--authorization-kubeconfig", S / "controller-manager.kubeconfig",
        "--use-service-account-credentials", "--controllers", "*,bootstrapsigner,tokencleaner",
        "--root-ca-file", P / "ca.crt", "--service-account-private-key-file", P / "sa.key",
        "--cluster-signing-cert-file", P / "ca.crt", "--cluster-signing-key-file", P / "ca.key",
        "--allocate-node-cidrs", "--cluster-cidr", C.POD_CIDR, "--node-cidr-mask-size", "24",
        "--service-cluster-ip-range", C.SERVICE_CIDR, "--cluster-name", "streamjob",
        *common])
    start("kube-scheduler", [
        kb / "kube-scheduler", "--kubeconfig", S / "scheduler.kubeconfig",
        "--authentication-kubeconfig", S / "scheduler.kubeconfig",
        "--authorization-kubeconfig", S / "scheduler.kubeconfig", *common])
    start("kubelet", [
        kb / "kubelet", "--config", S / "kubelet.yaml", "--kubeconfig", S / "kubelet.kubeconfig",
        "--hostname-override", C.NODE_NAME, "--node-ip", ip, "--root-dir", S / "kubelet",
        "--v", "1"], files=[S / "kubelet.yaml"])
    start("kube-proxy", [kb / "kube-proxy", "--config", S / "kube-proxy.yaml"],
          files=[S / "kube-proxy.yaml"])

    def node_ready() -> bool:
        r = kubectl(kb, "get", "node", C.NODE_NAME, "-o",
                    "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
        return r.stdout.strip() == "True"

    wait_for("node Ready", node_ready, 120)
    guard_first()
    (S / "addons.yaml").write_text(addons_yaml())
    kubectl(kb, "apply", "-f", S / "addons.yaml")
    wait_for("default service account", lambda: kubectl(
        kb, "get", "serviceaccount", "default", check=False).returncode == 0, 60)
    r = kubectl(kb, "-n", "kube-system", "rollout", "status", "deployment/coredns",
                "--timeout=120s", check=False)
    if r.returncode != 0:
        raise SystemExit(f"CoreDNS did not become ready: {r.stdout}{r.stderr}\n"
                         + kubectl(kb, "-n", "kube-system", "describe", "pods",
                                   check=False).stdout[-3000:])
    log(f"cluster up in {time.monotonic() - t0:.0f}s; node {C.NODE_NAME} ({ip}), "
        f"image {C.IMAGE_REF}")
    print(f"export KUBECONFIG={C.KUBECONFIG}", flush=True)


def _our_shims() -> list[int]:
    pids = []
    needle = str(C.CONTAINERD_SOCK).encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmd.split(b"\0")[0] and needle in cmd:
            pids.append(int(d.name))
    return pids


def _kubepods_cgroups() -> list[Path]:
    res = []
    for hier in Path("/sys/fs/cgroup").iterdir():
        k = hier / "kubepods"
        if k.is_dir():
            res.append(k)
    return res


def _kill_kubepods() -> None:
    for k in _kubepods_cgroups():
        for procs in k.rglob("cgroup.procs"):
            try:
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            except OSError:
                pass


def _rmdir_kubepods() -> None:
    for k in _kubepods_cgroups():
        dirs = sorted([p for p in k.rglob("*") if p.is_dir()], key=lambda p: -len(p.parts))
        for p in dirs + [k]:
            try:
                p.rmdir()
            except OSError:
                pass


def _unmount_ours() -> None:
    roots = [str(C.STATE) + "/", str(C.RUN) + "/"]
    mps = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if any(mp.startswith(r) for r in roots):
                mps.append(mp)
    for mp in sorted(set(mps), key=len, reverse=True):
        if run(["umount", mp], check=False, capture=True, quiet=True).returncode != 0:
            run(["umount", "-l", mp], check=False, capture=True, quiet=True)


def down(purge: bool = False) -> None:
    kb = C.K8S_BIN if C.K8S_BIN.exists() else None
    crictl = C.TOOLS / f"crictl-{C.CRICTL_VERSION}" / "crictl"
    for name in ["kube-controller-manager", "kube-scheduler", "kubelet"]:
        stop(name)
    if running("containerd") and crictl.exists():
        # stop + remove every pod sandbox through CRI: kills containers, CNI DEL, netns removed
        run([crictl, "--runtime-endpoint", f"unix://{C.CONTAINERD_SOCK}", "--timeout", "60s",
             "rmp", "-a", "-f"], check=False, capture=True, quiet=True)
    stop("kube-proxy")
    stop("kube-apiserver")
    stop("containerd")
    for pid in _our_shims():
        _kill_wait(pid, 5)
    _kill_kubepods()
    stop("etcd")
    time.sleep(0.5)
    _unmount_ours()
    _rmdir_kubepods()
    teardown_network(kb)
    if purge:
        _unmount_ours()
        run(["rm", "-rf", "--one-file-system", C.STATE, C.RUN], check=False)
        log(f"removed {C.STATE} and {C.RUN} (build cache {C.CACHE} kept)")
    log("cluster down")


def status() -> int:
    ok = True
    for name in COMPONENTS:
        pid = running(name)
        ok &= bool(pid)
        print(f"{name:25s} {'running pid ' + str(pid) if pid else 'stopped'}")
    if ok:
        try:
            ready = apiserver_ready()
        except Exception as e:  # noqa: BLE001
            ready = False
            print(f"apiserver: {e}")
        print(f"{'apiserver /readyz':25s} {'ok' if ready else 'NOT ready'}")
        if ready and C.K8S_BIN.exists():
            print(kubectl(C.K8S_BIN, "get", "nodes", "-o", "wide", check=False).stdout, end="")
            print(kubectl(C.K8S_BIN, "get", "pods", "-A", check=False).stdout, end="")
        print(f"export KUBECONFIG={C.KUBECONFIG}")
    return 0 if ok else 1


def main(a) -> int:
    if a.action == "up":
        up(with_image=not a.no_image)
    elif a.action == "down":
        down(purge=a.purge)
    elif a.action == "status":
        return status()
    elif a.action == "build":
        build.ensure_all()
    return 0
