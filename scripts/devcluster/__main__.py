from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="devcluster")
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cluster")
    c.add_argument("action", choices=["up", "down", "status", "build"])
    c.add_argument("--purge", action="store_true", help="down: also delete cluster state")
    c.add_argument("--no-image", action="store_true", help="up: don't (re)build the image")
    i = sub.add_parser("image")
    i.add_argument("action", choices=["build"])
    i.add_argument("--no-import", action="store_true")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("devcluster needs root (mounts, network, containerd)", file=sys.stderr)
        return 2
    if a.what == "image":
        from . import image
        image.build(import_into_cluster=not a.no_import)
        return 0
    from . import cluster
    return cluster.main(a)


if __name__ == "__main__":
    sys.exit(main())
