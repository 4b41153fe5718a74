"""The web dashboard: server-rendered pages under ``/ui/`` of the coordinator's API port.

The pages sit behind the API's token like every route (``api.py``'s middleware answers 401
before anything here runs). A browser gets there through ``streamjob ui`` (``uiproxy.py``), a
local proxy that holds the token. Each page is complete HTML rendered from the coordinator's
live objects; ``dashboard.js`` then polls the JSON API (``/api/v1/...``) and refreshes the
parts that change, without a reload. No build step, no template engine: small functions that
escape every value they insert.

Pages: overview, job graph, checkpoints (one checkpoint: its timeline, drawn by
``timeline.render_svg``, and per-subtask table), savepoints, failures, configuration.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any

import yaml

from streamjob import timeline as tl
from streamjob.api import max_alignment_ms
from streamjob.dashboard_assets import CSS, JS

PAGES = (("overview", "/ui/", "Overview"), ("graph", "/ui/graph", "Job graph"),
         ("checkpoints", "/ui/checkpoints", "Checkpoints"),
         ("savepoints", "/ui/savepoints", "Savepoints"), ("failures", "/ui/failures", "Failures"),
         ("config", "/ui/config", "Configuration"))

#: what every page may load: its own scripts and styles, inline SVG styles, no other origin
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Page:
    """What a route answers: status, content type, body."""

    def __init__(self, body: str, status: int = 200, content_type: str = "text/html"):
        self.body, self.status, self.content_type = body, status, content_type


def render(c: Any, path: str) -> Page:
    """The page for ``path`` (under ``/ui``) of coordinator ``c``."""
    parts = [p for p in path.split("/") if p][1:]
    if parts == ["static", "dashboard.js"]:
        return Page(JS, content_type="application/javascript")
    if parts == ["static", "dashboard.css"]:
        return Page(CSS, content_type="text/css")
    if not parts:
        return _page(c, "overview", overview(c))
    if parts == ["graph"]:
        return _page(c, "graph", graph(c))
    if parts == ["checkpoints"]:
        return _page(c, "checkpoints", checkpoints(c))
    if len(parts) == 2 and parts[0] == "checkpoints" and parts[1].isdigit():
        entry = next((h for h in c.history if str(h["id"]) == parts[1]), None)
        if entry is None:
            return _page(c, "checkpoints", f"<p>Checkpoint {escape(parts[1])} is not in the "
                         "history (the coordinator keeps the last 50).</p>", status=404)
        return _page(c, "checkpoints", checkpoint(c, entry))
    if parts == ["savepoints"]:
        return _page(c, "savepoints", savepoints(c))
    if parts == ["failures"]:
        return _page(c, "failures", failures(c))
    if parts == ["config"]:
        return _page(c, "config", config(c))
    return _page(c, "", "<p>No such page.</p>", status=404)


# -- layout ------------------------------------------------------------------------------


def _page(c: Any, current: str, content: str, status: int = 200) -> Page:
    st = c.status()
    nav = "".join(f'<a href="{href}"{" class=current" if key == current else ""}>{label}</a>'
                  for key, href, label in PAGES)
    title = f"{st['name']} · streamjob"
    return Page(f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{escape(title)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/static/dashboard.css">
<script src="/ui/static/dashboard.js" defer></script>
</head><body data-page="{current}">
<header><span class="brand">streamjob</span> <b>{escape(st['name'])}</b>
<span class="job-id">{escape(st['job_id'])}</span>
<span class="state state-{escape(st['state'])}" data-field="state">{escape(st['state'])}</span>
<nav>{nav}</nav></header>
<main>{content}</main>
<footer>updated <span id="updated">{tl.fmt_time(time.time())}</span>
<span id="poll-error"></span></footer>
</body></html>
""", status=status)


def _table(headers: list[str], rows: list[list[str]], body_id: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
                   for row in rows)
    attr = f' id="{body_id}"' if body_id else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody{attr}>{body}</tbody></table>"


def _uptime(st: dict[str, Any], now: float) -> str:
    since = st.get("running_since")
    if not since:
        return "-"
    end = st.get("finished_at") or now
    return fmt_duration(end - since)


def fmt_duration(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s // 60 % 60:02d}m"


def fmt_rate(r: float | None) -> str:
    if r is None:
        return "-"
    if r >= 1e6:
        return f"{r / 1e6:.2f} M/s"
    if r >= 1e3:
        return f"{r / 1e3:.1f} k/s"
    return f"{r:.0f}/s"


# -- pages -----------------------------------------------------------------------------


def overview(c: Any) -> str:
    st = c.status()
    last = st.get("last_checkpoint") or {}
    fields = [
        ("state", "State", st["state"]),
        ("message", "Message", st["message"]),
        ("parallelism", "Parallelism", st["parallelism"]),
        ("uptime", "Uptime", _uptime(st, time.time())),
        ("restarts", "Restarts", st["restarts"]),
        ("records_per_second", "Records/s in", fmt_rate(st["records_per_second"])),
        ("records_out_per_second", "Records/s out", fmt_rate(st["records_out_per_second"])),
        ("records_in", "Records in", f"{st['records_in']:,}"),
        ("records_out", "Records out", f"{st['records_out']:,}"),
        ("last_checkpoint", "Last checkpoint",
         f"{last['id']} ({tl.fmt_ms(last['duration_ms'])}, {tl.fmt_bytes(last['size_bytes'])})"
         if last else "-"),
        ("restored_from", "Restored from checkpoint", st.get("restored_from") or "-"),
        ("mode", "Checkpoint mode", c.spec.checkpoint.mode),
    ]
    state = escape(st["state"])
    cells = "".join(f'<div class="tile"><div class="label">{label}</div><div class="value">'
                    + (f'<span class="state state-{state}" data-field="state">{state}</span>'
                       if key == "state" else
                       f'<span data-field="{key}">{escape(str(value))}</span>')
                    + "</div></div>" for key, label, value in fields)
    return (f'<h1>Overview</h1><div class="tiles" data-running-since='
            f'"{st.get("running_since") or ""}">{cells}</div>')


def layout(tasks: list[Any]) -> dict[int, tuple[int, int]]:
    """Task index -> (column, row): a task's column is the longest path from a source to it,
    rows count down each column in task order (a pure function; sources in column 0)."""
    column: dict[int, int] = {}
    for t in tasks:  # tasks are created after their inputs
        column[t.index] = 1 + max((column[e.source] for e in t.inputs), default=-1)
    rows: dict[int, int] = {}
    place: dict[int, tuple[int, int]] = {}
    for t in tasks:
        c = column[t.index]
        place[t.index] = (c, rows.get(c, 0))
        rows[c] = rows.get(c, 0) + 1
    return place


BOX_W, HEAD_H, ROW_H, GAP_X, GAP_Y = 320, 44, 24, 90, 30


def graph(c: Any) -> str:
    """Tasks as boxes (left to right by distance from the sources), one row per subtask
    (coloured by the script from ``/api/v1/tasks``: busy red, backpressured grey-violet, idle
    green), and one edge per input with its exchange."""
    tasks, p = c.pipeline.tasks, c.p
    place = layout(tasks)
    box_h = HEAD_H + p * ROW_H
    columns = 1 + max(col for col, _ in place.values())
    rows = 1 + max(row for _, row in place.values())
    width = columns * (BOX_W + GAP_X) - GAP_X + 20
    height = rows * (box_h + GAP_Y) - GAP_Y + 20

    def xy(index: int) -> tuple[int, int]:
        col, row = place[index]
        return 10 + col * (BOX_W + GAP_X), 10 + row * (box_h + GAP_Y)

    # per-task metrics (GET /api/v1/tasks) come from coordinators that measure them
    live = ' data-tasks-api="1"' if hasattr(c, "tasks") else ""
    parts = [f'<svg id="job-graph"{live} xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}">',
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
             'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/>'
             '</marker></defs>']
    for t in tasks:
        for edge in t.inputs:
            (sx, sy), (tx, ty) = xy(edge.source), xy(t.index)
            x1, y1, x2, y2 = sx + BOX_W, sy + box_h / 2, tx, ty + box_h / 2
            label = edge.exchange.kind.upper() + (f" ({edge.tag})" if edge.tag else "")
            mid = (x1 + x2) / 2
            parts.append(f'<path class="edge" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" '
                         'fill="none" stroke="#555" stroke-width="2" marker-end="url(#arrow)"/>'
                         f'<text class="edge-label" x="{mid}" y="{(y1 + y2) / 2 - 6}" '
                         f'text-anchor="middle">{escape(label)}</text>')
    for t in tasks:
        x, y0 = xy(t.index)
        parts.append(f'<g class="task" data-task="{t.task_id}">'
                     f'<rect x="{x}" y="{y0}" width="{BOX_W}" height="{box_h}" rx="6" '
                     'fill="#fff" stroke="#333"/>'
                     f'<text class="task-name" x="{x + 8}" y="{y0 + 18}">{escape(_short(t.name))}'
                     f'<title>{escape(t.name)}</title></text>'
                     f'<text class="task-meta" x="{x + 8}" y="{y0 + 36}" '
                     f'data-task-meta="{t.task_id}">{t.task_id} · parallelism {p}</text>')
        for i in range(p):
            y = y0 + HEAD_H + i * ROW_H
            parts.append(f'<rect class="subtask" id="st-{t.task_id}-{i}" x="{x + 4}" y="{y}" '
                         f'width="{BOX_W - 8}" height="{ROW_H - 3}" rx="3" fill="#eee"/>'
                         f'<text class="subtask-text" id="sttext-{t.task_id}-{i}" x="{x + 10}" '
                         f'y="{y + 15}">[{i}]</text>')
        parts.append("</g>")
    parts.append("</svg>")
    legend = ('<p class="legend"><span class="swatch" style="background:#5cb85c"></span> idle '
              '<span class="swatch" style="background:#d9534f"></span> busy '
              '<span class="swatch" style="background:#7a6a9a"></span> backpressured '
              '(share of the last 10 s; per subtask: records/s in, busy %, backpressured %)</p>')
    return f'<h1>Job graph</h1>{legend}<div class="graph">{"".join(parts)}</div>'


def _short(name: str, limit: int = 44) -> str:
    return name if len(name) <= limit else name[:limit - 1] + "…"


CHECKPOINT_COLUMNS = ["ID", "Kind", "Status", "Triggered", "Duration", "Size", "Alignment (max)",
                      "Note"]


def checkpoint_row(h: dict[str, Any]) -> list[str]:
    """One row of the history (HTML cells; ``dashboard.js`` draws the same from the API)."""
    note = h.get("reason") or h.get("path") or ""
    status = escape(h["status"])
    return [f'<a href="/ui/checkpoints/{h["id"]}">{h["id"]}</a>', escape(h["kind"]),
            f'<span class="status-{status}">{status}</span>', tl.fmt_time(h["triggered_at"]),
            tl.fmt_ms(h.get("duration_ms")), tl.fmt_bytes(h.get("size_bytes")),
            tl.fmt_ms(max_alignment_ms(h)), escape(str(note))]


def checkpoints(c: Any) -> str:
    rows = [checkpoint_row(h) for h in reversed(c.history)]
    cfg = c.spec.checkpoint
    return (f"<h1>Checkpoints</h1><p>Every {cfg.interval:g} s, mode {escape(cfg.mode)}, "
            f"timeout {cfg.timeout:g} s, {cfg.retained} retained. Newest first; click an id "
            "for its per-subtask timeline.</p>"
            + _table(CHECKPOINT_COLUMNS, rows, "checkpoint-rows"))


TIMING_COLUMNS = ["Subtask", "Start delay", "Alignment", "Sync", "Async", "Ack after",
                  "Buffered records", "Bytes", "Unaligned"]


def checkpoint(c: Any, entry: dict[str, Any]) -> str:
    names = {t.task_id: t.name for t in c.pipeline.tasks}
    head = _table(CHECKPOINT_COLUMNS, [checkpoint_row(entry)])
    if entry.get("timings") is None or not any(
            t for subs in entry["timings"].values() for t in subs):
        return (f'<h1>Checkpoint {entry["id"]}</h1>{head}<p>No per-subtask timings '
                f'({escape(entry["status"])}).</p>')
    svg = tl.render_svg(entry, names)
    svg = svg[svg.index("<svg"):]  # inline: without the XML declaration
    rows = []
    for r in tl.rows(entry, names):
        t = r.timings or {}
        ack = (t["ack"] - entry["triggered_at"]) * 1000 if t.get("ack") else None
        delay = (t["first_barrier"] - entry["triggered_at"]) * 1000 \
            if t.get("first_barrier") else None
        rows.append([f"{escape(r.label)} {escape(_short(r.name, 40))}", tl.fmt_ms(delay),
                     tl.fmt_ms(t.get("alignment_ms")), tl.fmt_ms(t.get("sync_ms")),
                     tl.fmt_ms(t.get("async_ms")), tl.fmt_ms(ack),
                     f"{t.get('buffered_records', 0):,}", tl.fmt_bytes(t.get("bytes")),
                     "yes" if t.get("unaligned") else "no"])
    return (f'<h1>Checkpoint {entry["id"]}</h1>{head}'
            f'<h2>Timeline</h2><div class="timeline" id="timeline">{svg}</div>'
            f'<p><a href="/api/v1/checkpoints/{entry["id"]}">JSON</a> · the same drawing as '
            f'<code>streamjob checkpoints {escape(c.job.metadata.name)} --id {entry["id"]} '
            f'--out chk.svg</code></p>'
            "<h2>Subtasks</h2>" + _table(TIMING_COLUMNS, rows, "subtask-rows"))


def savepoints(c: Any) -> str:
    rows = [[str(s["id"]), tl.fmt_time(s["completed_at"]), tl.fmt_bytes(s["size_bytes"]),
             f'<code>{escape(s["path"])}</code>'] for s in reversed(c.status()["savepoints"])]
    return ("<h1>Savepoints</h1><p>Taken by this coordinator (<code>streamjob savepoint "
            f"{escape(c.job.metadata.name)}</code>); <code>streamjob savepoints STORAGE</code> "
            "lists every savepoint kept in storage.</p>"
            + _table(["ID", "Completed", "Size", "URI"], rows, "savepoint-rows"))


def failure_row(f: dict[str, Any]) -> list[str]:
    exc = f.get("exception")
    detail = (f"<details><summary>exception</summary><pre>{escape(exc)}</pre></details>"
              if exc else "")
    return [tl.fmt_time(f["detected_at"]), str(f["attempt"]), str(f["restarts"]),
            escape(f["action"]), escape(f["reason"]) + detail]


def failures(c: Any) -> str:
    rows = [failure_row(f) for f in reversed(c.failures)]
    strategy = c.spec.restart_strategy
    return ("<h1>Failures</h1>"
            f"<p>Restart strategy {escape(strategy.type)}, at most {strategy.max_attempts} "
            f"attempts. Restarts so far: <span data-field=\"restarts\">"
            f"{c.restarts}</span>. Newest first.</p>"
            + _table(["Detected", "Attempt", "Restarts", "Action", "Reason"], rows,
                     "failure-rows"))


def config(c: Any) -> str:
    applied = c.job.model_dump(by_alias=True, mode="json", exclude_none=True)
    text = yaml.safe_dump(applied, sort_keys=False)
    return ("<h1>Configuration</h1><p>The manifest as this coordinator applied it (defaults "
            "filled in, parallelism as deployed).</p>"
            f"<pre class=\"manifest\">{escape(text)}</pre>")
