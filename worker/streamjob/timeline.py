"""Checkpoint history tables and per-subtask checkpoint timelines (text, SVG, PNG).

Everything here is a pure function of a checkpoint *history entry* — the dict the
coordinator API returns for ``GET /api/v1/checkpoints/{id}`` — or of a ``_metadata`` body
(turned into an entry by :func:`entry_from_metadata`). No I/O except :func:`write_picture`.

For each subtask the ACK timings give absolute wall-clock times (``first_barrier``,
``sync_done``, ``ack``) and durations (``alignment_ms``, ``sync_ms``, ``async_ms``). Relative
to the trigger time T of the checkpoint, one subtask's row is made of these segments::

    delay  T -> first barrier (a source: T -> the source served the trigger)
    align  first barrier -> last barrier (aligned mode: input from channels already
           past the barrier is held back; unaligned: ~0)
    sync   the synchronous part of the snapshot (a copy of the state), on the task thread
    wait   after sync, before the upload starts: in-flight data still being captured
           (unaligned mode: until the last barrier arrived) or the upload queued
    async  writing the state file (off the task thread)
    ackq   upload done, ACK not sent yet: the task thread was busy with records
    ack    the moment the subtask sent its ACK

Where the upload sits between ``sync_done`` and ``ack`` is exact when the timings carry
``async_start`` (absolute time the upload began). Without it: in unaligned mode the upload is
drawn just before the ack (the gap is the in-flight capture), otherwise right after the sync
part (the gap is the ACK waiting for the task thread).

The times come from the clocks of the worker processes; on one machine they share a clock,
across machines they are as good as NTP.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

KINDS = ("delay", "align", "sync", "wait", "async", "ackq")
CHARS = {"delay": ".", "align": "=", "sync": "#", "wait": "-", "async": "~", "ackq": "_"}
ACK_CHAR = "A"
COLORS = {"delay": "#d9d9d9", "align": "#f28e2b", "sync": "#e15759", "wait": "#bab0ac",
          "async": "#4e79a7", "ackq": "#edc948", "ack": "#000000"}
LEGEND = {
    "delay": "start delay (trigger -> first barrier)",
    "align": "alignment (first -> last barrier)",
    "sync": "sync snapshot",
    "wait": "capture in-flight / upload queued",
    "async": "async upload",
    "ackq": "ack waits for the task thread",
}


@dataclass(frozen=True)
class Segment:
    kind: str
    start_ms: float
    end_ms: float


@dataclass
class Row:
    task: str
    subtask: int
    name: str
    segments: list[Segment] = field(default_factory=list)
    ack_ms: float | None = None
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.task}[{self.subtask}]"


# -- entries -------------------------------------------------------------------------------


def entry_from_metadata(body: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    """A history entry (as the API serves it) from a checkpoint's ``_metadata`` body."""
    triggered, completed = body["triggered_at"], body.get("completed_at")
    return {
        "id": body["checkpoint_id"], "kind": body.get("kind", "checkpoint"),
        "status": "COMPLETED", "triggered_at": triggered, "completed_at": completed,
        "duration_ms": None if completed is None else round((completed - triggered) * 1000, 1),
        "size_bytes": body.get("size_bytes"), "path": path, "mode": body.get("mode"),
        "job_id": body.get("job_id"), "timings": body.get("timings", {}),
        "task_names": {tid: t.get("name", tid) for tid, t in body.get("tasks", {}).items()},
    }


def _task_order(tid: str) -> tuple[int, str]:
    digits = tid.lstrip("t")
    return (int(digits), tid) if digits.isdigit() else (1 << 30, tid)


def rows(entry: dict[str, Any], names: dict[str, str] | None = None) -> list[Row]:
    """One row per subtask of each task, in task then subtask order."""
    names = {**(entry.get("task_names") or {}), **(names or {})}
    t0 = entry["triggered_at"]
    out = []
    for tid in sorted(entry.get("timings") or {}, key=_task_order):
        for i, t in enumerate(entry["timings"][tid]):
            row = Row(tid, i, names.get(tid, tid), timings=dict(t or {}))
            out.append(row)
            if not t:
                continue  # this subtask never acked (a failed checkpoint)
            first = (t["first_barrier"] - t0) * 1000
            align_end = first + t.get("alignment_ms", 0.0)
            sync_end = max(align_end, (t["sync_done"] - t0) * 1000)
            sync_start = max(align_end, sync_end - t.get("sync_ms", 0.0))
            ack = max(sync_end, (t["ack"] - t0) * 1000)
            async_ms = t.get("async_ms", 0.0)
            if t.get("async_start") is not None:
                async_start = min(ack, max(sync_end, (t["async_start"] - t0) * 1000))
            elif t.get("unaligned"):
                async_start = max(sync_end, ack - async_ms)
            else:
                async_start = sync_end
            async_end = min(ack, async_start + async_ms)
            for kind, a, b in (("delay", 0.0, first), ("align", first, align_end),
                               ("sync", sync_start, sync_end), ("wait", sync_end, async_start),
                               ("async", async_start, async_end), ("ackq", async_end, ack)):
                if b > a:
                    row.segments.append(Segment(kind, a, b))
            row.ack_ms = ack
    return out


def span_ms(entry: dict[str, Any], table: list[Row] | None = None) -> float:
    """Length of the time axis: trigger -> the last ack (or completion, if later)."""
    table = rows(entry) if table is None else table
    end = max([r.ack_ms for r in table if r.ack_ms is not None], default=0.0)
    if entry.get("completed_at"):
        end = max(end, (entry["completed_at"] - entry["triggered_at"]) * 1000)
    return end if end > 0 else 1.0


def nice_ticks(span: float, target: int = 5) -> list[float]:
    raw = span / max(1, target)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = int(span // step)
    return [round(k * step, 6) for k in range(n + 1)]


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms >= 10_000:
        return f"{ms / 1000:.1f}s"
    if ms >= 100:
        return f"{ms:.0f}ms"
    return f"{ms:.1f}ms"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


# -- history table -----------------------------------------------------------------------

TABLE_COLUMNS = ("ID", "KIND", "STATUS", "TRIGGERED", "DURATION", "SIZE", "RESTORED-FROM")


def history_table(entries: list[dict[str, Any]]) -> str:
    """The checkpoint history as a text table (a FAILED row ends with its reason)."""
    lines = []
    cells = [TABLE_COLUMNS]
    for h in entries:
        end = h.get("completed_at") or h.get("failed_at")
        duration = h.get("duration_ms")
        if duration is None and end is not None:
            duration = (end - h["triggered_at"]) * 1000
        restored = h.get("restored_from")
        cells.append((str(h["id"]), h.get("kind", "checkpoint"), h.get("status", "?"),
                      fmt_time(h.get("triggered_at")), fmt_ms(duration),
                      fmt_bytes(h.get("size_bytes")), "-" if restored is None else str(restored)))
    widths = [max(len(r[i]) for r in cells) for i in range(len(TABLE_COLUMNS))]
    right = {0, 4, 5}
    for r, h in zip(cells, [None, *entries], strict=True):
        line = "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
        if h is not None and h.get("status") == "FAILED":
            line += f"  ({h.get('acked', '?')}/{h.get('expected', '?')} acked: " \
                    f"{h.get('reason', '')})"
        lines.append(line)
    return "\n".join(lines) + "\n"


# -- text timeline -----------------------------------------------------------------------

NUM_HEAD = ("barrier", "align", "sync", "async", "ack", "size", "buffered")


def _bar(row: Row, span: float, width: int) -> str:
    cell = span / width
    out = []
    for c in range(width):
        a, b = c * cell, (c + 1) * cell
        cover = {k: 0.0 for k in KINDS}
        for s in row.segments:
            cover[s.kind] += max(0.0, min(b, s.end_ms) - max(a, s.start_ms))
        kind = max(KINDS, key=lambda k: cover[k])
        out.append(CHARS[kind] if cover[kind] > 0 else " ")
    if row.ack_ms is not None:
        out[min(width - 1, int(row.ack_ms / cell))] = ACK_CHAR
    return "".join(out)


def render_text(entry: dict[str, Any], width: int = 60,
                names: dict[str, str] | None = None) -> str:
    """The timeline of one checkpoint: a header, an axis, then per task a name line and one
    ``  tK[i] |bar| numbers`` line per subtask, then the legend."""
    table = rows(entry, names)
    span = span_ms(entry, table)
    label_w = max([len(r.label) for r in table] + [len("subtask")]) + 2
    head = (f"checkpoint {entry['id']}  {entry.get('kind', 'checkpoint')}  "
            f"{entry.get('status', '?')}  triggered {fmt_time(entry['triggered_at'])}  "
            f"duration {fmt_ms(entry.get('duration_ms'))}  size "
            f"{fmt_bytes(entry.get('size_bytes'))}")
    if entry.get("mode"):
        head += f"  mode {entry['mode']}"
    if entry.get("status") == "FAILED":
        head += f"\nfailed: {entry.get('reason', '')}"
    lines = [head]
    # axis: tick labels above, tick marks on the rule
    ticks = nice_ticks(span)
    labels = [" "] * (width + 12)
    rule = ["-"] * width
    for t in ticks:
        pos = min(width - 1, int(round(t / span * width)))
        rule[pos] = "+"
        text = f"{t:g}ms" if t else "0"
        if all(ch == " " for ch in labels[pos:pos + len(text) + 1]):
            labels[pos:pos + len(text)] = text
    lines.append(" " * (label_w + 1) + "".join(labels).rstrip())
    nums = "".join(f"{h:>9}" for h in NUM_HEAD)
    lines.append("subtask".ljust(label_w) + "|" + "".join(rule) + "|" + nums)
    current = None
    for r in table:
        if r.task != current:
            current = r.task
            lines.append(f"{r.task}  {r.name}")
        t = r.timings
        if r.ack_ms is None:
            values = ["-"] * 5 + ["-", "-"]
            bar = " " * width
            tail = "   (no ack)"
        else:
            first = (t["first_barrier"] - entry["triggered_at"]) * 1000
            values = [fmt_ms(first), fmt_ms(t.get("alignment_ms")), fmt_ms(t.get("sync_ms")),
                      fmt_ms(t.get("async_ms")), fmt_ms(r.ack_ms), fmt_bytes(t.get("bytes")),
                      str(t.get("buffered_records", 0))]
            bar = _bar(r, span, width)
            tail = ""
            if t.get("unaligned"):
                tail = f"   unaligned, {t.get('inflight_records', 0)} in-flight records"
        lines.append(f"  {r.label}".ljust(label_w) + "|" + bar + "|"
                     + "".join(f"{v:>9}" for v in values) + tail)
    if entry.get("completed_at"):
        done = (entry["completed_at"] - entry["triggered_at"]) * 1000
        lines.append(f"_metadata written (checkpoint complete) at {fmt_ms(done)}")
    lines.append("legend: " + "  ".join(f"{CHARS[k]} {LEGEND[k]}" for k in KINDS[:3]))
    lines.append("        " + "  ".join(f"{CHARS[k]} {LEGEND[k]}" for k in KINDS[3:])
                 + f"  {ACK_CHAR} ack   (times since the trigger)")
    return "\n".join(lines) + "\n"


def parse_text(text: str) -> dict[str, dict[str, Any]]:
    """Read the subtask lines of :func:`render_text` back: ``{"t1[0]": {"bar": ...,
    "values": [...]}}`` (for tests and scripts)."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("  t") or "|" not in line:
            continue
        label, bar, rest = line.split("|", 2)
        out[label.strip()] = {"bar": bar, "values": rest.split()}
    return out


# -- SVG -----------------------------------------------------------------------------------


def render_svg(entry: dict[str, Any], names: dict[str, str] | None = None,
               width: int = 960) -> str:
    """The same timeline as a self-contained SVG. Every segment is a ``rect`` with
    ``data-row`` (``t1[0]``), ``data-kind``, ``data-start-ms`` and ``data-end-ms``; every ack
    a ``line`` with ``class="ack"``."""
    table = rows(entry, names)
    span = span_ms(entry, table)
    left, right, top, row_h, group_h = 250, 20, 60, 18, 20
    plot_w = width - left - right
    tasks = []
    for r in table:
        if r.task not in tasks:
            tasks.append(r.task)
    height = top + len(table) * row_h + len(tasks) * group_h + 70

    def x(ms: float) -> float:
        return round(left + ms / span * plot_w, 2)

    title = (f"checkpoint {entry['id']} ({entry.get('kind', 'checkpoint')}, "
             f"{entry.get('status', '?')}) - duration {fmt_ms(entry.get('duration_ms'))}, "
             f"size {fmt_bytes(entry.get('size_bytes'))}")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f"<title>{escape(title)}</title>",
           f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
           f'<text x="10" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
           f'<text x="10" y="34" fill="#555">triggered {escape(fmt_time(entry["triggered_at"]))}'
           f'{"  mode " + escape(str(entry["mode"])) if entry.get("mode") else ""}'
           f"; times since the trigger</text>"]
    body_bottom = height - 60
    for t in nice_ticks(span):
        out.append(f'<line class="tick" x1="{x(t)}" y1="{top - 8}" x2="{x(t)}" '
                   f'y2="{body_bottom}" stroke="#eeeeee"/>')
        out.append(f'<text x="{x(t)}" y="{top - 12}" text-anchor="middle">'
                   f'{t:g} ms</text>')
    y = top
    current = None
    for r in table:
        if r.task != current:
            current = r.task
            out.append(f'<text class="task" x="10" y="{y + 14}" font-weight="bold">'
                       f"{escape(r.task)}  {escape(r.name)}</text>")
            y += group_h
        out.append(f'<text class="row" x="24" y="{y + 13}">{escape(r.label)}</text>')
        out.append(f'<g class="subtask" data-row="{escape(r.label)}">')
        for s in r.segments:
            w = max(0.5, x(s.end_ms) - x(s.start_ms))
            out.append(f'<rect class="seg {s.kind}" data-row="{escape(r.label)}" '
                       f'data-kind="{s.kind}" data-start-ms="{s.start_ms:.3f}" '
                       f'data-end-ms="{s.end_ms:.3f}" x="{x(s.start_ms)}" y="{y + 3}" '
                       f'width="{w:.2f}" height="{row_h - 6}" fill="{COLORS[s.kind]}">'
                       f"<title>{escape(r.label)} {s.kind}: {s.end_ms - s.start_ms:.3f} ms"
                       f"</title></rect>")
        if r.ack_ms is not None:
            out.append(f'<line class="ack" data-row="{escape(r.label)}" '
                       f'data-ms="{r.ack_ms:.3f}" x1="{x(r.ack_ms)}" y1="{y + 1}" '
                       f'x2="{x(r.ack_ms)}" y2="{y + row_h - 1}" stroke="#000" '
                       f'stroke-width="2"/>')
        else:
            out.append(f'<text x="{left + 4}" y="{y + 13}" fill="#c00">no ack</text>')
        out.append("</g>")
        y += row_h
    if entry.get("completed_at"):
        done = (entry["completed_at"] - entry["triggered_at"]) * 1000
        out.append(f'<line class="completed" x1="{x(done)}" y1="{top - 8}" x2="{x(done)}" '
                   f'y2="{body_bottom}" stroke="#59a14f" stroke-dasharray="4,3"/>')
    lx = 10
    ly = height - 30
    for k in KINDS:
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="12" height="10" fill="{COLORS[k]}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{escape(LEGEND[k])}</text>')
        lx += 24 + 6 * len(LEGEND[k])
    out.append(f'<line x1="{lx}" y1="{ly - 10}" x2="{lx}" y2="{ly + 1}" stroke="#000" '
               f'stroke-width="2"/><text x="{lx + 6}" y="{ly}">ack</text>')
    out.append(f'<line x1="{lx + 40}" y1="{ly - 10}" x2="{lx + 40}" y2="{ly + 1}" '
               f'stroke="#59a14f" stroke-dasharray="4,3"/>'
               f'<text x="{lx + 46}" y="{ly}">complete (_metadata written)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- PNG (optional: matplotlib) ----------------------------------------------------------


def render_png(entry: dict[str, Any], path: str | Path,
               names: dict[str, str] | None = None) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("PNG output needs matplotlib (pip install matplotlib); "
                           "--out FILE.svg needs nothing") from None
    table = rows(entry, names)
    span = span_ms(entry, table)
    fig, ax = plt.subplots(figsize=(12, 1.6 + 0.3 * len(table)))
    labels = []
    for y, r in enumerate(table):
        labels.append(f"{r.label} {r.name}"[:40])
        for k in KINDS:
            spans = [(s.start_ms, s.end_ms - s.start_ms) for s in r.segments if s.kind == k]
            if spans:
                ax.broken_barh(spans, (y - 0.35, 0.7), color=COLORS[k])
        if r.ack_ms is not None:
            ax.plot([r.ack_ms, r.ack_ms], [y - 0.4, y + 0.4], color="black", lw=2)
    if entry.get("completed_at"):
        ax.axvline((entry["completed_at"] - entry["triggered_at"]) * 1000, color=COLORS["ack"],
                   ls="--", lw=0.8)
    ax.set_yticks(range(len(table)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, span * 1.02)
    ax.set_xlabel("ms since the trigger")
    ax.set_title(f"checkpoint {entry['id']} ({entry.get('status', '?')}), "
                 f"{fmt_ms(entry.get('duration_ms'))}, {fmt_bytes(entry.get('size_bytes'))}")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=COLORS[k], label=LEGEND[k]) for k in KINDS]
              + [Line2D([], [], color="black", lw=2, label="ack")],
              loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)


def write_picture(entry: dict[str, Any], path: str | Path,
                  names: dict[str, str] | None = None) -> None:
    """Write the timeline to ``path``: ``.svg`` (always) or ``.png`` (needs matplotlib)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".svg":
        Path(path).write_text(render_svg(entry, names))
    elif suffix == ".png":
        render_png(entry, path, names)
    else:
        raise ValueError(f"--out {path}: write .svg or .png")
