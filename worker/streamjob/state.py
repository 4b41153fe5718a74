"""State files: how one subtask's snapshot is laid out in storage.

Format (version 2), never pickled::

    b"SJSNAP" + u16 version          8 bytes header
    section*                         msgpack blobs, one per key group (ascending), then one
                                     for operator state (source positions, in-flight records)

An incremental checkpoint's handle describes its delta file (changed entries and deleted
keys per key group) and lists, under ``chain``, the handles of the full snapshot and earlier
deltas it builds on; those files live in ``<job>/shared/`` and are deleted only when no
retained checkpoint refers to them.

The *handle* that the subtask acks (and ``_metadata`` keeps) says where each section is:
``key_groups: [[kg, offset, length, crc32], ...]`` and ``operator: [offset, length, crc32]``,
plus the file's size and sha256 and its ``format`` (the version). A restoring subtask reads
only the byte ranges of the key groups it owns and checks each crc32. Small operator-only
state is kept inline in the handle (base64 msgpack) instead of a file.

A key-group section is the msgpack array ``[[table, kind, [key, ...], [value, ...]], ...]``:
a table's keys, then its values in the same order (a delta's tables carry a fifth item, the
deleted keys). Columns, not ``[key, value]`` pairs, because a snapshot of a million keys
then packs two lists per key group that it has built anyway, instead of a million pairs
built for the purpose (and collected afterwards): encoding a million-key table takes about
half the CPU it took with pairs, and the file is one byte per entry smaller (see
docs/benchmarks.md, "Keyed count with 1,000,000 keys"). Version 1 files, whose tables are
``[table, kind, [[key, value], ...]]`` (a delta's with a fourth item), are still read.

Keys and values are packed by one ``msgpack.Packer(use_bin_type=True)``, whose encoding of
a value is unique (smallest form, floats as float64, tuples as arrays), so a backend that
keeps its entries packed already (rocksdb) writes and reads sections with the keys' and
values' bytes passed through (:func:`pack_section`, :func:`read_packed_keyed_state`), and
the file is byte for byte the one written from decoded entries.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import tempfile
import zlib
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import Any, BinaryIO, NamedTuple

import msgpack

from streamjob.storage import Storage

MAGIC = b"SJSNAP"
VERSION = 2
READABLE = (1, 2)  # the versions a restore reads
HEADER = MAGIC + struct.pack("<H", VERSION)
INLINE_LIMIT = 16 * 1024
SPOOL_BYTES = 16 * 1024 * 1024  # a state file bigger than this is built on disk
SPAN_BYTES = 16 * 1024 * 1024   # largest ranged read on restore (one section may exceed it)


class CorruptStateError(ValueError):
    """A state file failed its checksum or format check."""


def _hashable(key: Any) -> Any:
    if type(key) is list:
        return tuple(_hashable(k) for k in key)
    return key


def encode_snapshot(frozen: dict[str, tuple[Any, ...]],
                    operator_state: dict[str, Any] | None,
                    kg_of: Callable[[Any], int]) -> tuple[bytes, dict[str, Any]]:
    """Bytes of a state file and the (location-less) handle describing it.

    ``frozen`` maps a table to ``(kind, entries)`` (a full snapshot) or to
    ``(kind, entries, deleted_keys)`` (a delta: sections then carry the deletions too)."""
    out = io.BytesIO()
    handle = encode_snapshot_to(out, frozen, operator_state, kg_of)
    return out.getvalue(), handle


def encode_snapshot_to(out: BinaryIO, frozen: dict[str, tuple[Any, ...]],
                       operator_state: dict[str, Any] | Callable[[], dict[str, Any] | None]
                       | None,
                       kg_of: Callable[[Any], int], release: bool = False) -> dict[str, Any]:
    """Write a state file to ``out`` one key-group section at a time (never the whole file
    in memory) and return its handle. ``operator_state`` may be a function: it is called
    after the key groups are written (a forked snapshot child learns the operator state,
    which is complete only later, from its parent then). ``release``: take each table out
    of ``frozen`` once it is grouped (the caller's copy, which nobody else holds, is then
    freed before the sections are packed: at a million keys its 40 MB are not held beside
    the file being built).

    Each table's keys and values are grouped by key group up front, as two lists of
    pointers per key group (reading the table in its own order, which is cache-friendly, and
    without Python bytecode per key: :func:`_group`); those lists are the section's columns,
    packed as they are and dropped right after."""
    tables = []
    kgs: set[int] = set()
    total = 0
    for name in list(frozen):
        item = frozen.pop(name) if release else frozen[name]
        kind, table = item[0], item[1]
        deleted = item[2] if len(item) > 2 else None
        groups = _key_groups(kg_of, table, None if deleted is not None else name)
        keys_of = _group(groups, table)
        values_of = _group(groups, table.values())
        total += len(table)
        del groups, item, table
        deleted_of: dict[int, list[Any]] | None = None
        if deleted is not None:
            deleted_of = _group(_key_groups(kg_of, deleted), deleted)
            kgs.update(deleted_of)
        kgs.update(keys_of)
        tables.append((name, kind, keys_of, values_of, deleted_of))
    writer = _StateFileWriter(out)
    for kg in sorted(kgs):
        sections = []
        for name, kind, keys_of, values_of, deleted_of in tables:
            keys = keys_of.pop(kg, None)
            gone = None if deleted_of is None else deleted_of.pop(kg, None)
            if keys is None and gone is None:
                continue
            values = values_of.pop(kg) if keys is not None else []
            if deleted_of is None:
                sections.append((name, kind, keys, values))
            else:
                sections.append((name, kind, keys or [], values, gone or []))
        writer.section(kg, sections)
        del sections
    if callable(operator_state):
        operator_state = operator_state()
    return writer.finish(operator_state, total)


def _group(kgs: Sequence[int], items: Iterable[Any]) -> dict[int, list[Any]]:
    """``items`` (in the order of ``kgs``, their key groups) as one list per key group.
    ``map`` appends each item to its key group's list: no bytecode runs per item (at a
    million keys, 1.5x as fast as a loop that builds both columns)."""
    groups: dict[int, list[Any]] = defaultdict(list)
    deque(map(list.append, map(groups.__getitem__, kgs), items), maxlen=0)
    return groups


def _key_groups(kg_of: Callable[[Any], int], keys: Collection[Any],
                table: str | None = None) -> Sequence[int]:
    """The key group of each of ``keys``, in order: all at once when ``kg_of`` can
    (``keygroups.KeyGroupOf.many``), else one by one. ``table``: these are all the keys of
    that table (a full snapshot), whose key groups ``KeyGroupOf.of_table`` remembers."""
    of_table = getattr(kg_of, "of_table", None)
    if table is not None and of_table is not None:
        return of_table(table, keys)
    many = getattr(kg_of, "many", None)
    return many(keys) if many is not None else list(map(kg_of, keys))


class _StateFileWriter:
    """A state file as it is written: the header, one key-group section at a time in
    ascending order, then the operator state; keeps the index and digest of the handle."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256(HEADER)
        out.write(HEADER)
        self.offset = len(HEADER)
        self.kg_index: list[list[int]] = []
        self.packer = msgpack.Packer(use_bin_type=True)

    def _write(self, blob: bytes) -> list[int]:
        where = [self.offset, len(blob), zlib.crc32(blob)]
        self.out.write(blob)
        self.digest.update(blob)
        self.offset += len(blob)
        return where

    def section(self, kg: int, sections: list[Any] | PackedSection) -> int:
        """Write one key group's section (decoded, or packed already); its number of keys."""
        if isinstance(sections, PackedSection):
            self.kg_index.append([kg, *self._write(sections.blob)])
            return sections.keys
        self.kg_index.append([kg, *self._write(self.packer.pack(sections))])
        return sum(len(s[2]) for s in sections)  # each table's keys

    def finish(self, operator_state: dict[str, Any] | None, keys: int) -> dict[str, Any]:
        """The handle (without its storage key)."""
        op = self._write(self.packer.pack(operator_state)) if operator_state else None
        return {"format": VERSION, "size": self.offset, "sha256": self.digest.hexdigest(),
                "key_groups": self.kg_index, "operator": op, "keys": keys}


class PackedSection(NamedTuple):
    """A key group's section packed already (:func:`pack_section`)."""

    blob: bytes
    keys: int


def pack_section(tables: list[tuple[str, str, int, bytes, bytes]]) -> PackedSection:
    """A key group's section from tables whose keys and values are packed already:
    ``(table, kind, n, keys, values)`` with ``keys`` the concatenation of ``n`` packed keys
    and ``values`` that of their ``n`` packed values, in the same order. The same bytes as
    packing the decoded ``[(table, kind, [key, ...], [value, ...]), ...]``, without decoding
    anything."""
    packer = msgpack.Packer(use_bin_type=True)
    parts = [packer.pack_array_header(len(tables))]
    for name, kind, n, keys, values in tables:
        parts += (packer.pack_array_header(4), packer.pack(name), packer.pack(kind),
                  packer.pack_array_header(n), keys, packer.pack_array_header(n), values)
    return PackedSection(b"".join(parts), sum(t[2] for t in tables))


def write_snapshot(storage: Storage, key: str,
                   frozen: dict[str, tuple[str, dict[Any, Any]]],
                   operator_state: dict[str, Any] | None,
                   kg_of: Callable[[Any], int], release: bool = False) -> dict[str, Any]:
    """Write a subtask's snapshot and return its handle (inline when tiny and unkeyed).

    The file is built section by section in a spooled temporary file (memory up to
    ``SPOOL_BYTES``, then disk) and streamed to storage when the backend can (``put_file``).
    ``release``: as :func:`encode_snapshot_to`'s."""
    if not any(t[1] or (len(t) > 2 and t[2]) for t in frozen.values()):
        blob = msgpack.packb(operator_state or {}, use_bin_type=True)
        if len(blob) <= INLINE_LIMIT:
            return {"format": VERSION, "inline": base64.b64encode(blob).decode("ascii"),
                    "crc32": zlib.crc32(blob), "size": 0, "key_groups": [], "keys": 0}
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as f:
        handle = encode_snapshot_to(f, frozen, operator_state, kg_of, release)
        upload_file(storage, key, f)
    handle["key"] = key
    return handle


def upload_file(storage: Storage, key: str, f: BinaryIO) -> None:
    """Store an open file's whole content under ``key``, streamed when the backend can."""
    put_file = getattr(storage, "put_file", None)
    if put_file is not None:
        put_file(key, f)
    else:  # a backend without streaming (or wrapped for fault injection)
        f.seek(0)
        storage.put(key, f.read())


def _unpack(blob: bytes, crc: int, where: str) -> Any:
    return _decode(_checked(blob, crc, where), where)


def _checked(blob: bytes, crc: int, where: str) -> bytes:
    """``blob`` if its CRC-32 is ``crc``, else CorruptStateError."""
    if zlib.crc32(blob) != crc:
        raise CorruptStateError(f"checksum mismatch in {where}")
    return blob


def _decode(blob: bytes, where: str) -> Any:
    try:
        return msgpack.unpackb(blob, raw=False, use_list=True, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as err:
        raise CorruptStateError(f"cannot decode {where}: {err}") from None


def read_operator_state(storage: Storage, handle: dict[str, Any]) -> dict[str, Any]:
    _check_format(handle)
    if "inline" in handle:
        return _unpack(base64.b64decode(handle["inline"]), handle["crc32"], "inline state")
    if not handle.get("operator"):
        return {}
    offset, length, crc = handle["operator"]
    return _unpack(storage.get_range(handle["key"], offset, length), crc, handle["key"])


def _check_format(handle: dict[str, Any]) -> int:
    """The state file version of ``handle``, if one that this code reads."""
    version = handle.get("format")
    if version not in READABLE:
        raise CorruptStateError(f"state format {version!r} is not one of {READABLE}")
    return version


def _spans(index: Iterable[list[int]], limit: int | None = None) -> list[list[list[int]]]:
    """Group adjacent sections so that one ranged read fetches each run of key groups, up to
    ``limit`` bytes per read (a restore never holds a whole big state file in memory)."""
    limit = SPAN_BYTES if limit is None else limit
    spans: list[list[list[int]]] = []
    for entry in index:
        if (spans and spans[-1][-1][1] + spans[-1][-1][2] == entry[1]
                and entry[1] + entry[2] - spans[-1][0][1] <= limit):
            spans[-1].append(entry)
        else:
            spans.append([entry])
    return spans


def read_keyed_state(storage: Storage, handle: dict[str, Any], key_groups: range,
                     ) -> Iterable[tuple[str, str, dict[Any, Any], list[Any]]]:
    """(table, kind, entries, deleted keys) for the key groups in ``key_groups`` only, by
    ranged reads; for an incremental handle, the full snapshot then each delta in order."""
    for part in [*handle.get("chain", []), handle]:
        yield from _read_one(storage, part, key_groups)


def _key_group_sections(storage: Storage, handle: dict[str, Any], key_groups: range,
                        ) -> Iterator[tuple[int, bytes, str]]:
    """``(key group, section bytes, where)`` of one state file's sections in ``key_groups``,
    read in spans and checked against their length and CRC (not decoded)."""
    _check_format(handle)
    wanted = [e for e in handle.get("key_groups", []) if e[0] in key_groups]
    for span in _spans(wanted):
        start = span[0][1]
        end = span[-1][1] + span[-1][2]
        blob = storage.get_range(handle["key"], start, end - start)
        if len(blob) != end - start:
            raise CorruptStateError(f"{handle['key']} is shorter than its handle says")
        for kg, offset, length, crc in span:
            where = f"{handle['key']} key group {kg}"
            yield kg, _checked(blob[offset - start: offset - start + length], crc, where), where


def _read_one(storage: Storage, handle: dict[str, Any], key_groups: range,
              ) -> Iterable[tuple[str, str, dict[Any, Any], list[Any]]]:
    columns = _check_format(handle) >= 2
    for _, section, where in _key_group_sections(storage, handle, key_groups):
        for table in _decode(section, where):
            try:
                yield _table(table, columns)
            except (ValueError, TypeError) as err:
                raise CorruptStateError(f"cannot decode {where}: {err}") from None


def _table(table: list[Any], columns: bool) -> tuple[str, str, dict[Any, Any], list[Any]]:
    """(table, kind, entries, deleted keys) of one decoded table of a section: version 2's
    ``[table, kind, keys, values(, deleted)]`` or version 1's ``[table, kind, [[key, value],
    ...](, deleted)]``. Keys that were tuples come back as lists and are made tuples again.
    ValueError or TypeError if it is none of these."""
    if type(table) is not list:
        raise ValueError("a table section is not an array")
    with_deleted = _with_deleted(len(table), columns)
    name, kind = _table_names(table[0], table[1])
    if columns:
        keys, values = table[2], table[3]
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys and {len(values)} values")
    else:
        if set(map(len, table[2])) - {2}:
            raise ValueError("an entry is not [key, value]")
        keys, values = [e[0] for e in table[2]], [e[1] for e in table[2]]
    deleted = table[-1] if with_deleted else []
    if list in set(map(type, keys)):
        keys = list(map(_hashable, keys))
    if list in set(map(type, deleted)):
        deleted = list(map(_hashable, deleted))
    return name, kind, dict(zip(keys, values, strict=True)), deleted


def _with_deleted(size: int, columns: bool) -> bool:
    """Whether a section's table of ``size`` items carries deleted keys (a delta's, last);
    ValueError if no table of its version (2 if ``columns``, else 1) has that many."""
    full, delta = (4, 5) if columns else (3, 4)
    if size not in (full, delta):
        raise ValueError(f"a table section has {size} items")
    return size == delta


def _table_names(name: Any, kind: Any) -> tuple[str, str]:
    """A section's table name and kind, if both are strings (else ValueError)."""
    if type(name) is not str or type(kind) is not str:
        raise ValueError("a table section's name and kind are not strings")
    return name, kind


def write_snapshot_sections(storage: Storage, key: str,
                            sections: Iterable[tuple[int, list[tuple[str, str, list[Any],
                                                                     list[Any]]]
                                                     | PackedSection]],
                            operator_state: dict[str, Any] | None) -> dict[str, Any]:
    """Write a full snapshot in this format from key-group sections produced one at a time
    in ascending key-group order (``(kg, [(table, kind, [key, ...], [value, ...]), ...])``,
    or ``(kg, PackedSection)``), as a backend that keeps its state sorted by key group
    (rocksdb) reads them: never the whole state in memory. Returns the handle, as
    :func:`write_snapshot`."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as f:
        writer, keys = _StateFileWriter(f), 0
        for kg, secs in sections:
            keys += writer.section(kg, secs)
        if not writer.kg_index:
            return write_snapshot(storage, key, {}, operator_state, lambda k: 0)
        handle = writer.finish(operator_state, keys)
        upload_file(storage, key, f)
    handle["key"] = key
    return handle


def read_packed_keyed_state(storage: Storage, handle: dict[str, Any], key_groups: range,
                            ) -> Iterator[tuple[int, str, str, list[tuple[bytes, bytes]],
                                                list[bytes]]]:
    """Like :func:`read_keyed_state`, but nothing decoded: ``(key group, table, kind,
    [(packed key, packed value), ...], [packed deleted key, ...])`` in file order (for a
    backend that stores entries packed: rocksdb)."""
    for part in [*handle.get("chain", []), handle]:
        columns = _check_format(part) >= 2
        for kg, section, where in _key_group_sections(storage, part, key_groups):
            try:
                for name, kind, entries, deleted in _split_section(section, columns):
                    yield kg, name, kind, entries, deleted
            except (ValueError, TypeError, msgpack.UnpackException) as err:
                raise CorruptStateError(f"cannot decode {where}: {err}") from None


def _split_section(blob: bytes, columns: bool,
                   ) -> list[tuple[str, str, list[tuple[bytes, bytes]], list[bytes]]]:
    """A section's tables with the packed bytes of each key and value (located by skipping
    over them, never decoded); ``columns``: a version 2 section, else version 1."""
    u = msgpack.Unpacker(raw=False, max_buffer_size=max(len(blob), 1))
    u.feed(blob)
    read_header, skip, tell = u.read_array_header, u.skip, u.tell

    def items() -> list[bytes]:
        """The packed bytes of each item of the array that comes next."""
        found = []
        for _ in range(read_header()):
            a = tell()
            skip()
            found.append(blob[a:tell()])
        return found

    tables = []
    for _ in range(read_header()):
        with_deleted = _with_deleted(read_header(), columns)
        name, kind = _table_names(u.unpack(), u.unpack())
        if columns:
            keys, values = items(), items()
            if len(keys) != len(values):
                raise ValueError(f"{len(keys)} keys and {len(values)} values")
            entries = list(zip(keys, values, strict=True))
        else:
            entries = []
            for _ in range(read_header()):
                if read_header() != 2:
                    raise ValueError("an entry is not [key, value]")
                a = tell()
                skip()
                b = tell()
                skip()
                entries.append((blob[a:b], blob[b:tell()]))
        deleted = items() if with_deleted else []
        tables.append((name, kind, entries, deleted))
    if tell() != len(blob):
        raise ValueError("trailing bytes after the section")
    return tables
