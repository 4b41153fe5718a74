"""The project's container image, built locally: debootstrap'd Debian + Python venv + wheel.

Three layers, each cached by what it is made of, so that a change rebuilds only its layer:
Layer 1, the OS (keyed by suite and packages; minutes, once): a Debian root made with
debootstrap, python3, and the user streamjob (uid 10001).
Layer 2, the dependencies (keyed by layer 1 and the dependency list of pyproject.toml; about a
minute when a dependency is added or changed): a venv at /opt/streamjob with the project's
dependencies (wheels fetched by the host's pip) installed inside an overlay on layer 1.
Layer 3, the project (rebuilt every time, seconds): the project's wheel (`pip wheel --no-deps`
of the working tree) installed into that venv inside an overlay on layers 1 and 2.
An overlay's upper dir is its layer.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
from pathlib import Path

from . import config as C
from . import oci
from .util import log, run

IMG = C.CACHE / "images"
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates", "tini"]
OS_RECIPE_VERSION = 1    # bump when ensure_os's recipe changes
DEPS_RECIPE_VERSION = 1  # bump when ensure_deps's recipe changes
KEEP_DEPS_LAYERS = 3     # older dependency layers are deleted (350 MB each)


def _mirror() -> str:
    for f in [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]:
        if f.exists():
            for line in f.read_text().splitlines():
                line = line.strip()
                if line.startswith("URIs:"):
                    return line.split()[1]
                if line.startswith("deb ") and "/debian" in line and "security" not in line:
                    return [w for w in line.split() if "://" in w][0]
    return "http://deb.debian.org/debian"


def _requirements() -> list[str]:
    py = tomllib.loads((C.REPO / "pyproject.toml").read_text())["project"]
    reqs = list(py.get("dependencies", []))
    # The image serves the worker and the operator: include the operator extra.
    reqs += py.get("optional-dependencies", {}).get("operator", [])
    return reqs


def _os_key() -> str:
    blob = json.dumps([OS_RECIPE_VERSION, C.DEBIAN_SUITE, BASE_PACKAGES, C.IMAGE_UID])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _deps_key(os_key: str, reqs: list[str]) -> str:
    blob = json.dumps([DEPS_RECIPE_VERSION, os_key, sorted(reqs)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _chroot(root: Path, *cmd: str, env: dict | None = None) -> None:
    e = {"PATH": "/opt/streamjob/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
         "HOME": "/root", "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    e.update(env or {})
    run(["chroot", root, *cmd], env=e, clean_env=True)


def _bind_dev(root: Path):
    """Bind /dev/null etc. for tools run in the chroot; returns an unmount callback."""
    (root / "dev").mkdir(exist_ok=True)
    made = []
    for n in ["null", "zero", "urandom", "random"]:
        target = root / "dev" / n
        if not target.exists():
            target.touch()
        run(["mount", "--bind", f"/dev/{n}", target], quiet=True)
        made.append(target)

    def undo():
        for t in made:
            subprocess.run(["umount", str(t)], check=False)
            try:
                if t.is_file() and t.stat().st_size == 0:
                    t.unlink()
            except OSError:
                pass
    return undo


def ensure_os() -> tuple[Path, Path]:
    """Returns (rootfs dir, layer tar) of the cached OS layer."""
    d = IMG / f"os-{C.DEBIAN_SUITE}-{_os_key()}"
    layer = d / "layer.tar"
    if layer.exists() and (d / "rootfs").is_dir():
        return d / "rootfs", layer
    t0 = time.monotonic()
    log(f"building OS rootfs {d.name} (debootstrap {C.DEBIAN_SUITE}; once)")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    root = d / "rootfs"
    run(["nice", "-n", "10", "debootstrap", "--variant=minbase",
         "--include=" + ",".join(BASE_PACKAGES), C.DEBIAN_SUITE, root, _mirror()])
    # user streamjob, uid/gid 10001
    uid = C.IMAGE_UID
    with open(root / "etc/passwd", "a") as f:
        f.write(f"streamjob:x:{uid}:{uid}:streamjob:/home/streamjob:/bin/sh\n")
    with open(root / "etc/group", "a") as f:
        f.write(f"streamjob:x:{uid}:\n")
    with open(root / "etc/shadow", "a") as f:
        f.write("streamjob:!:19000:0:99999:7:::\n")
    home = root / "home/streamjob"
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, uid, uid)
    for junk in ["var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                 "usr/share/locale", "usr/share/info"]:
        p = root / junk
        if p.is_dir():
            for c in p.iterdir():
                if c.is_dir() and not c.is_symlink():
                    shutil.rmtree(c)
                elif c.name != "lock":
                    c.unlink()
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/hostname").unlink(missing_ok=True)
    oci.tar_dir(root, layer)
    log(f"OS layer built in {time.monotonic() - t0:.0f}s ({layer.stat().st_size >> 20} MiB)")
    return root, layer


class _Overlay:
    """``merged`` = ``upper`` over ``lowers`` (leftmost on top) while inside ``with``; files
    written to ``merged`` land in ``upper``, which then is a layer."""

    def __init__(self, lowers: list[Path], upper: Path, scratch: Path) -> None:
        self.lowers, self.upper = lowers, upper
        self.work, self.merged = scratch / "work", scratch / "merged"

    def __enter__(self) -> Path:
        for p in (self.upper, self.work, self.merged):
            p.mkdir(parents=True, exist_ok=True)
        lower = ":".join(str(p) for p in self.lowers)
        run(["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={lower},upperdir={self.upper},workdir={self.work}", self.merged],
            quiet=True)
        self.undo_dev = _bind_dev(self.merged)
        return self.merged

    def __exit__(self, *exc: object) -> None:
        self.undo_dev()
        run(["umount", self.merged], quiet=True)
        for n in ["null", "zero", "urandom", "random"]:   # mount points of _bind_dev
            p = self.upper / "dev" / n
            if p.exists() and p.is_file():
                p.unlink()
        _check_no_whiteouts(self.upper)


def ensure_deps(os_root: Path) -> tuple[Path, Path]:
    """Returns (upper dir, layer tar) of the cached dependency layer for pyproject's list."""
    reqs = _requirements()
    d = IMG / f"deps-{C.DEBIAN_SUITE}-{_deps_key(os_root.parent.name, reqs)}"
    layer = d / "layer.tar"
    if layer.exists() and (d / "upper").is_dir():
        os.utime(d)                                     # most recently used: kept by _prune
        return d / "upper", layer
    t0 = time.monotonic()
    log(f"building dependency layer {d.name} ({len(reqs)} requirements)")
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=IMG) as td:
        scratch = Path(td)
        # wheels for the dependencies, built/fetched by the host's pip (same CPython 3.11 ABI)
        wh = scratch / "wheels"
        wh.mkdir()
        (wh / "requirements.txt").write_text("\n".join(reqs) + "\n")
        run(["nice", "-n", "10", "python3", "-m", "pip", "wheel", "-q", "--wheel-dir", wh,
             "-r", wh / "requirements.txt"])
        with _Overlay([os_root], d / "upper", scratch) as merged:
            shutil.copytree(wh, merged / "tmp" / "wheels")
            _chroot(merged, "python3", "-m", "venv", "/opt/streamjob")
            _chroot(merged, "/opt/streamjob/bin/pip", "install", "-q", "--no-index",
                    "--no-cache-dir", "--find-links", "/tmp/wheels",
                    "-r", "/tmp/wheels/requirements.txt")
            shutil.rmtree(merged / "tmp" / "wheels")
    oci.tar_dir(d / "upper", layer)
    log(f"dependency layer built in {time.monotonic() - t0:.0f}s "
        f"({layer.stat().st_size >> 20} MiB)")
    _prune("deps-", keep=d)
    return d / "upper", layer


def _prune(prefix: str, keep: Path) -> None:
    """Delete all but the KEEP_DEPS_LAYERS most recently used layers named ``prefix*``."""
    old = sorted((p for p in IMG.glob(prefix + "*") if p.is_dir() and p != keep),
                 key=lambda p: p.stat().st_mtime, reverse=True)
    for p in old[KEEP_DEPS_LAYERS - 1:]:
        log(f"deleting the unused layer {p.name}")
        shutil.rmtree(p, ignore_errors=True)


def _check_no_whiteouts(upper: Path) -> None:
    for dp, dns, fns in os.walk(upper):
        for n in fns + dns:
            st = os.lstat(os.path.join(dp, n))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                raise SystemExit(f"app layer deletes a base file ({dp}/{n}); "
                                 "whiteouts are not supported, rebuild the base")


def build_app_layer(lowers: list[Path]) -> Path:
    out_dir = IMG / "app"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=IMG) as td:
        td = Path(td)
        wheels = td / "wheel"
        run(["nice", "-n", "10", "python3", "-m", "pip", "wheel", "-q", "--no-deps",
             "--wheel-dir", wheels, str(C.REPO)])
        whl = next(wheels.glob("streamjob-*.whl"))
        with _Overlay(lowers, td / "upper", td) as merged:
            shutil.copy(whl, merged / "tmp" / whl.name)
            _chroot(merged, "/opt/streamjob/bin/pip", "install", "-q", "--no-deps",
                    "--no-index", "--no-cache-dir", f"/tmp/{whl.name}")
            (merged / "tmp" / whl.name).unlink()
        layer = out_dir / "layer.tar"
        oci.tar_dir(td / "upper", layer)
        return layer


def build(import_into_cluster: bool = True) -> Path:
    t0 = time.monotonic()
    os_root, os_layer = ensure_os()
    deps_upper, deps_layer = ensure_deps(os_root)
    app_layer = build_app_layer([deps_upper, os_root])
    archive = IMG / "streamjob-dev.oci.tar"
    oci.write_archive(archive, C.IMAGE_REF, [os_layer, deps_layer, app_layer], {
        "User": f"{C.IMAGE_UID}:{C.IMAGE_UID}",
        "Env": ["PATH=/opt/streamjob/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                "/sbin:/bin", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8", "HOME=/home/streamjob"],
        "Entrypoint": ["/usr/bin/tini", "--"],
        "Cmd": ["streamjob"],
        "WorkingDir": "/home/streamjob",
        "Labels": {"org.opencontainers.image.title": "streamjob"},
    })
    log(f"image {C.IMAGE_REF} built in {time.monotonic() - t0:.0f}s -> {archive}")
    if import_into_cluster:
        from .cluster import running  # noqa: PLC0415 (cluster imports this module)
        if running("containerd"):
            oci.import_archive(archive)
        else:
            log("cluster containerd not running; `scripts/cluster up` imports it")
    return archive


def single_binary_image(name: str, ref: str, binary: Path, dest: str, cfg: dict) -> Path:
    """An image holding one static binary (pause, coredns)."""
    d = IMG / name
    archive = d / "image.oci.tar"
    if archive.exists():
        return archive
    root = d / "rootfs"
    shutil.rmtree(root, ignore_errors=True)
    (root / Path(dest).parent.relative_to("/")).mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, root / dest.lstrip("/"))
    layer = d / "layer.tar"
    oci.tar_dir(root, layer)
    oci.write_archive(archive, ref, [layer], cfg)
    return archive
