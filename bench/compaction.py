"""RocksDB compaction settings side by side: checkpoint upload when 1 % of the keys change.

The RocksDB backend's incremental checkpoint uploads the SST files that are new since the
previous checkpoint, so its cost is what the flush *and every compaction since* wrote. This
benchmark measures that directly with ``rocksdict`` (no job): one database per setting,
opened with the runtime's options (``streamjob.rocksdb_backend._options``) plus the
setting's changes, ``--keys`` keys of 7 bytes with a 100-byte incompressible value each,
loaded in random order; then ``--rounds`` rounds of "change 1 % of the keys, chosen at
random (spread over the whole key space, as keyed state changes usually are) -> flush ->
wait until no compaction runs -> list the live SST files"; a round's **upload** is the bytes
of the files not seen before, in % of the database after the load (mean and max over the
rounds). Also printed: the live files and sorted runs at the end (what a read may have to
look at) and the disk used relative to the state (space amplification), at the end and the
most after any round.

Checked: after the last round, 10,000 random keys must each read back the version they were
last written with (the first 4 bytes of every value).

    python bench/compaction.py              # 300,000 keys, 400 rounds (several full merges)
    python bench/compaction.py --keys 500000 --rounds 8 --settings runtime,leveled
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
from rocksdict import (
    DBCompactionStyle,
    Options,
    Rdict,
    UniversalCompactOptions,
    WriteBatch,
    WriteOptions,
)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "worker"))
from streamjob.rocksdb_backend import _options  # noqa: E402

MB = 1 << 20
VALUE = 100
BATCH = 100_000


def _leveled(o: Options, l0: int = 4) -> None:
    o.set_compaction_style(DBCompactionStyle.level())
    o.set_level_zero_file_num_compaction_trigger(l0)
    o.set_level_zero_slowdown_writes_trigger(max(20, 2 * l0))
    o.set_level_zero_stop_writes_trigger(max(36, 3 * l0))


def _universal(o: Options, runs: int, size_amplification: int = 200) -> None:
    o.set_compaction_style(DBCompactionStyle.universal())
    u = UniversalCompactOptions()
    u.max_size_amplification_percent = size_amplification
    o.set_universal_compaction_options(u)
    o.set_level_zero_file_num_compaction_trigger(runs)
    o.set_level_zero_slowdown_writes_trigger(max(20, 2 * runs))
    o.set_level_zero_stop_writes_trigger(max(36, 3 * runs))


def _small_levels(o: Options) -> None:
    _leveled(o)
    o.set_level_compaction_dynamic_level_bytes(False)
    o.set_target_file_size_base(8 * MB)
    o.set_max_bytes_for_level_base(64 * MB)


def _big_files(o: Options) -> None:
    _leveled(o)
    o.set_target_file_size_base(256 * MB)
    o.set_max_bytes_for_level_base(1024 * MB)


SETTINGS: dict[str, tuple[str, Callable[[Options], None]]] = {
    "runtime": ("the runtime's _options as they are", lambda o: None),
    "leveled": ("leveled, L0 trigger 4 (RocksDB's default)", _leveled),
    "leveled-l0-20": ("leveled, L0 trigger 20", lambda o: _leveled(o, 20)),
    "leveled-big-files": ("leveled, 256 MB files, 1 GB level base", _big_files),
    "leveled-small-levels": ("leveled, static levels, 8 MB files, 64 MB L1", _small_levels),
    "universal-4": ("universal, 4 sorted runs trigger", lambda o: _universal(o, 4)),
    "universal-8": ("universal, 8 sorted runs trigger", lambda o: _universal(o, 8)),
    "universal-8-amp-100": ("universal, 8 sorted runs trigger, 100 % size amplification",
                            lambda o: _universal(o, 8, 100)),
    "universal-16-amp-100": ("universal, 16 sorted runs trigger, 100 % size amplification",
                             lambda o: _universal(o, 16, 100)),
    "universal-8-amp-150": ("universal, 8 sorted runs trigger, 150 % size amplification",
                            lambda o: _universal(o, 8, 150)),
    "universal-12": ("universal, 12 sorted runs trigger", lambda o: _universal(o, 12)),
    "universal-32": ("universal, 32 sorted runs trigger", lambda o: _universal(o, 32)),
}


def key(i: int) -> bytes:
    """Like the backend's keys: a key-group prefix, then the key."""
    return (i % 128).to_bytes(2, "big") + i.to_bytes(5, "big")


def wait_idle(db: Rdict, timeout: float = 600.0) -> None:
    """Until no flush or compaction has run for a second (universal compaction leaves
    ``rocksdb.compaction-pending`` at 1, so that property cannot be the condition)."""
    end, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < end:
        busy = (db.property_int_value("rocksdb.num-running-compactions")
                + db.property_int_value("rocksdb.num-running-flushes"))
        quiet = 0 if busy else quiet + 1
        if quiet >= 5:
            return
        time.sleep(0.2)
    raise SystemExit(f"compactions still running after {timeout:.0f} s")


def write(db: Rdict, ids: np.ndarray, version: np.ndarray, rng: np.random.Generator) -> None:
    for s in range(0, len(ids), BATCH):
        chunk = ids[s:s + BATCH]
        noise = rng.bytes((VALUE - 4) * len(chunk))
        wb = WriteBatch(raw_mode=True)
        for n, i in enumerate(chunk.tolist()):
            wb.put(key(i), int(version[i]).to_bytes(4, "big")
                   + noise[n * (VALUE - 4):(n + 1) * (VALUE - 4)])
        db.write(wb)


def run(name: str, keys: int, rounds: int, tmp: str) -> dict[str, float | list[float]]:
    path = os.path.join(tmp, name)
    opt = _options(256, 64)
    SETTINGS[name][1](opt)
    db = Rdict(path, opt)
    wo = WriteOptions()
    wo.disable_wal = True
    db.set_write_options(wo)
    rng = np.random.default_rng(1)
    version = np.ones(keys, dtype=np.int64)
    try:
        t0 = time.monotonic()
        write(db, rng.permutation(keys), version, rng)
        db.flush()
        wait_idle(db)
        load_s = time.monotonic() - t0
        known = {f["name"]: f["size"] for f in db.live_files()}
        state = sum(known.values())
        uploads, disk_max = [], 1.0
        for _ in range(rounds):
            changed = rng.choice(keys, keys // 100, replace=False)
            version[changed] += 1
            write(db, changed, version, rng)
            db.flush()
            wait_idle(db)
            live = {f["name"]: f["size"] for f in db.live_files()}
            uploads.append(sum(n for f, n in live.items() if f not in known) / state)
            disk_max = max(disk_max, sum(live.values()) / state)
            known.update(live)
        for i in rng.choice(keys, 10_000, replace=False).tolist():
            got = db.get(key(i))
            if got is None or int.from_bytes(got[:4], "big") != version[i]:
                raise SystemExit(f"{name}: key {i} read back {got!r:.20}, "
                                 f"expected version {version[i]}")
        live = {f["name"]: f["size"] for f in db.live_files()}
        runs = len({f["level"] for f in db.live_files() if f["level"] > 0}) + sum(
            1 for f in db.live_files() if f["level"] == 0)
        return {"load_s": load_s, "state_mb": state / 1e6, "uploads": uploads,
                "files": len(live), "runs": runs, "disk": sum(live.values()) / state,
                "disk_max": disk_max}
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=400, help="1 %% changes, each flushed")
    ap.add_argument("--settings", default="runtime,universal-8-amp-100,leveled-l0-20",
                    help=f"comma-separated, of: {', '.join(SETTINGS)}")
    args = ap.parse_args()
    names = args.settings.split(",")
    for n in names:
        if n not in SETTINGS:
            ap.error(f"unknown setting {n!r}")
    tmp = tempfile.mkdtemp(prefix="sj-compaction-")
    print(f"{args.keys:,} keys x {VALUE} B, {args.rounds} rounds of 1 % of the keys changed; "
          f"upload per round in % of the state after the load", flush=True)
    try:
        for n in names:
            r = run(n, args.keys, args.rounds, tmp)
            ups = np.array(r["uploads"]) * 100
            print(f"{n:21} {SETTINGS[n][0]}\n{'':21} load {r['load_s']:.0f} s, state "
                  f"{r['state_mb']:.0f} MB; upload mean {ups.mean():.1f} %, max {ups.max():.1f}"
                  f" %; at the end {r['files']} files, {r['runs']} sorted runs, disk "
                  f"{r['disk']:.2f}x the state (at most {r['disk_max']:.2f}x after a round)"
                  f"\n{'':21} per round: "
                  + " ".join(f"{u:.1f}" for u in ups), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
