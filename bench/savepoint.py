"""RocksDB savepoints and rescales phase by phase, the former way beside the current one.

In process, no job: two RocksDB backends (p = 2, max parallelism 128) hold ``--keys`` keys
with a 100-byte incompressible value each. Then, for each of them and each way, side by
side in one run:

* **savepoint** (a RocksDB checkpoint written to a canonical state file, ``file://``):
  *decoded*, every key and value decoded from msgpack and packed again by the state-file
  writer (the runtime before this benchmark), against *packed*, the entries' bytes passed
  through (``RocksDBKeyedStateBackend.savepoint_sections``);
* **restore at p = 3** (each new subtask reads its key groups of both files): *batch*, the
  sections decoded and every entry encoded again into a ``WriteBatch``
  (``state.read_keyed_state`` + ``load``), then flushed and compacted until RocksDB is idle,
  against *bulk*, the bytes split without decoding, sorted into SST files and ingested
  (``load_state_file``), timed the same way.

Checked: the two savepoint files are byte for byte the same; every new subtask holds exactly
the entries of its key groups, the same after either restore, and together all keys.

    python bench/savepoint.py                      # 1,000,000 keys
    python bench/savepoint.py --keys 200000
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "worker"), str(ROOT)]

from rocksdict import WriteBatch  # noqa: E402

from streamjob import state  # noqa: E402
from streamjob.keygroups import key_group_range  # noqa: E402
from streamjob.rocksdb_backend import (  # noqa: E402
    LocalCheckpoint,
    RocksDBKeyedStateBackend,
    _opened,
    _unpack_key,
    _unpack_value,
    subtask_dir,
)
from streamjob.storage import LocalStorage  # noqa: E402

M = 128
SETTLE_S = 600  # longest wait for RocksDB's flushes and compactions after a restore


def backend(root: Path, name: str, index: int, p: int) -> RocksDBKeyedStateBackend:
    return RocksDBKeyedStateBackend(subtask_dir(str(root / "local"), "job", name, index),
                                    key_group_range(index, p, M), M)


def fill(b: RocksDBKeyedStateBackend, keys: int) -> int:
    """Every key of ``b``'s key groups with a random 100-byte value, straight into RocksDB."""
    table = b.table("value", "value")
    batch, n = WriteBatch(raw_mode=True), 0
    for k in range(keys):
        encoded = b.encode_key(k)
        if int.from_bytes(encoded[:2], "big") in b.key_groups:
            batch.put(encoded, b.pack([k, os.urandom(50).hex()]), table._handle)
            n += 1
    b.db.write(batch)
    b.db.flush()
    return n


def decoded_sections(local: LocalCheckpoint) -> Any:
    """The former savepoint: every entry decoded, key group by key group."""
    try:
        with _opened(local.path) as db:
            for name, kind in local.tables.items():
                groups = itertools.groupby(db.get_column_family(name).items(),
                                           key=lambda kv: int.from_bytes(kv[0][:2], "big"))
                for kg, items in groups:
                    entries = {_unpack_key(k): _unpack_value(v) for k, v in items}
                    yield kg, [(name, kind, list(entries.items()))]
    finally:
        shutil.rmtree(local.path, ignore_errors=True)


def settle(b: RocksDBKeyedStateBackend) -> None:
    """Flush, then wait until RocksDB runs and owes no compaction."""
    b.db.flush()
    deadline = time.monotonic() + SETTLE_S
    while (b.db.property_int_value("rocksdb.num-running-compactions")
           or b.db.property_int_value("rocksdb.compaction-pending")):
        if time.monotonic() > deadline:
            raise SystemExit(f"RocksDB still compacting after {SETTLE_S} s")
        time.sleep(0.1)


def contents(b: RocksDBKeyedStateBackend) -> dict[bytes, bytes]:
    return dict(b.tables["value"]._cf.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sj-savepoint-"))
    storage = LocalStorage(root / "store")
    times: dict[str, list[float]] = {}
    try:
        handles, total = [], 0
        for i in range(2):
            old = backend(root, "old", i, 2)
            total += fill(old, args.keys)
            for way, sections in (("decoded", decoded_sections),
                                  ("packed", old.savepoint_sections)):
                t0, c0 = time.perf_counter(), time.process_time()
                h = state.write_snapshot_sections(storage, f"sp-{way}/{i}",
                                                  sections(old.savepoint()), None)
                times.setdefault(f"savepoint, {way}", []).append(
                    (time.perf_counter() - t0, time.process_time() - c0))
                if way == "packed":
                    handles.append(h)
            if storage.get(f"sp-decoded/{i}") != storage.get(f"sp-packed/{i}"):
                raise SystemExit(f"subtask {i}: the savepoint files differ")
            old.close()
        held = 0
        for j in range(3):
            got = {}
            for way in ("batch", "bulk"):
                new = backend(root, f"new-{way}", j, 3)
                t0, c0 = time.perf_counter(), time.process_time()
                for h in handles:
                    if way == "bulk":
                        new.load_state_file(storage, h, new.key_groups)
                    else:
                        for name, kind, entries, deleted in state.read_keyed_state(
                                storage, h, new.key_groups):
                            new.load(name, kind, entries, deleted)
                new.restored()
                settle(new)
                times.setdefault(f"restore at p = 3, {way}", []).append(
                    (time.perf_counter() - t0, time.process_time() - c0))
                got[way] = contents(new)
                new.close()
            if got["batch"] != got["bulk"]:
                raise SystemExit(f"new subtask {j}: the two restores differ")
            mine = key_group_range(j, 3, M)
            if any(int.from_bytes(k[:2], "big") not in mine for k in got["bulk"]):
                raise SystemExit(f"new subtask {j}: a key of another key group")
            held += len(got["bulk"])
        if held != total:
            raise SystemExit(f"{held} keys restored, {total} saved")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load = os.getloadavg()[0]
    print(f"# bench/savepoint.py --keys {args.keys:,}: {total:,} keys x 100 B, p = 2 -> 3, "
          f"load average {load:.1f} at the end; checked: files byte-identical, restores "
          "identical, exact key groups")
    print(f"{'seconds':34}{'former':>10}{'current':>10}{'ratio':>8}")
    for phase, former, current in (("savepoint", "savepoint, decoded", "savepoint, packed"),
                                   ("restore at p = 3", "restore at p = 3, batch",
                                    "restore at p = 3, bulk")):
        for i, measure in enumerate(("wall", "CPU")):
            a = sum(t[i] for t in times[former])
            b = sum(t[i] for t in times[current])
            print(f"{phase + ', ' + measure:34}{a:>10.2f}{b:>10.2f}{a / b:>7.1f}x")


if __name__ == "__main__":
    main()
