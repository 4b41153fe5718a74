"""Hand-made OCI image archives (oci-layout + index.json + blobs), importable with `ctr import`."""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from pathlib import Path

from .util import run

LAYER_MT = "application/vnd.oci.image.layer.v1.tar"


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tar_dir(src: Path, dest: Path) -> str:
    """Tar a directory tree as an (uncompressed) layer; returns its sha256 (= diff id)."""
    tmp = dest.with_name(dest.name + ".tmp")
    run(["tar", "--numeric-owner", "--sort=name", "--mtime=@0", "--format=posix",
         "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
         "-C", src, "-cf", tmp, "."], quiet=True)
    os.replace(tmp, dest)
    digest = sha256_file(dest)
    dest.with_name(dest.name + ".sha256").write_text(digest)
    return digest


def layer_digest(layer: Path) -> str:
    s = layer.with_name(layer.name + ".sha256")
    if s.exists() and s.stat().st_mtime >= layer.stat().st_mtime:
        return s.read_text().strip()
    d = sha256_file(layer)
    s.write_text(d)
    return d


def write_archive(out: Path, ref: str, layers: list[Path], cfg: dict) -> None:
    """Write an OCI image-layout tar for `ref` with the given layer tars and image config."""
    diff_ids = [layer_digest(p) for p in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created_by": f"streamjob devcluster layer {i}"} for i in range(len(layers))],
    }
    cfg_b = json.dumps(config, sort_keys=True).encode()
    cfg_d = hashlib.sha256(cfg_b).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": f"sha256:{cfg_d}", "size": len(cfg_b)},
        "layers": [{"mediaType": LAYER_MT, "digest": f"sha256:{d}", "size": p.stat().st_size}
                   for d, p in zip(diff_ids, layers, strict=True)],
    }
    man_b = json.dumps(manifest, sort_keys=True).encode()
    man_d = hashlib.sha256(man_b).hexdigest()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": f"sha256:{man_d}", "size": len(man_b),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]},
        }],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t, \
            tempfile.TemporaryDirectory() as td:

        def add_bytes(name: str, data: bytes) -> None:
            p = Path(td) / name.replace("/", "_")
            p.write_bytes(data)
            t.add(p, arcname=name)

        add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes("index.json", json.dumps(index).encode())
        add_bytes(f"blobs/sha256/{cfg_d}", cfg_b)
        add_bytes(f"blobs/sha256/{man_d}", man_b)
        for d, p in zip(diff_ids, layers, strict=True):
            t.add(p, arcname=f"blobs/sha256/{d}")
    os.replace(tmp, out)


def ctr(*args: str) -> list:
    from . import config as C
    return ["ctr", "--address", str(C.CONTAINERD_SOCK), "-n", "k8s.io", *args]


def import_archive(archive: Path) -> None:
    run(ctr("images", "import", str(archive)))
