"""The dashboard's stylesheet and script (served as ``/ui/static/dashboard.css`` and ``.js``).

Plain CSS and plain JavaScript (no build step, no library). The script polls the JSON API
every 2 s and redraws what changes on the current page; it never writes anything.
"""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #f6f7f9; }
header { background: #263238; color: #fff; padding: 8px 16px; display: flex; gap: 12px;
         align-items: center; flex-wrap: wrap; }
header .brand { font-weight: bold; color: #80cbc4; }
header .job-id { color: #b0bec5; font-family: monospace; }
header nav { margin-left: auto; display: flex; gap: 4px; }
header nav a { color: #eceff1; text-decoration: none; padding: 4px 10px; border-radius: 4px; }
header nav a.current, header nav a:hover { background: #455a64; }
main { padding: 12px 20px; }
footer { color: #78909c; padding: 4px 20px 16px; font-size: 12px; }
#poll-error { color: #c62828; margin-left: 12px; }
h1 { font-size: 20px; margin: 8px 0 12px; }
h2 { font-size: 16px; margin: 18px 0 8px; }
.state { padding: 2px 8px; border-radius: 10px; background: #607d8b; font-size: 12px; }
.state-RUNNING { background: #2e7d32; } .state-FAILED { background: #c62828; }
.state-RESTARTING { background: #ef6c00; } .state-FINISHED, .state-STOPPED { background: #1565c0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 10px; }
.tile { background: #fff; border: 1px solid #dde1e6; border-radius: 6px; padding: 10px 12px; }
.tile .label { color: #607d8b; font-size: 12px; text-transform: uppercase; }
.tile .value { font-size: 18px; margin-top: 4px; word-break: break-word; }
table { border-collapse: collapse; background: #fff; border: 1px solid #dde1e6; min-width: 60%; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid #eceff1;
         vertical-align: top; }
th { background: #eceff1; font-weight: 600; }
.status-COMPLETED { color: #2e7d32; } .status-FAILED { color: #c62828; }
pre { background: #fff; border: 1px solid #dde1e6; padding: 10px; overflow: auto;
      max-height: 480px; }
.graph, .timeline { background: #fff; border: 1px solid #dde1e6; padding: 8px; overflow: auto; }
.task-name { font-weight: 600; font-size: 13px; } .task-meta { fill: #607d8b; font-size: 11px; }
.subtask-text { font-size: 11px; font-family: monospace; }
.edge-label { font-size: 10px; fill: #555; }
.legend .swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
                  vertical-align: middle; margin-left: 8px; }
details summary { cursor: pointer; color: #1565c0; }
"""

JS = r"""
"use strict";
// Live updates for the streamjob dashboard: poll the JSON API, redraw what changed.
const POLL_MS = 2000;

function text(v) { return v === null || v === undefined ? "-" : String(v); }
function esc(v) {
  return text(v).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
                                             '"': "&quot;", "'": "&#39;"}[c]));
}
// The same formats as streamjob.timeline (the pages are first drawn by the server).
function fmtRate(r) {
  if (r === null || r === undefined) return "-";
  if (r >= 1e6) return (r / 1e6).toFixed(2) + " M/s";
  if (r >= 1e3) return (r / 1e3).toFixed(1) + " k/s";
  return r.toFixed(0) + "/s";
}
function fmtMs(ms) {
  if (ms === null || ms === undefined) return "-";
  if (ms >= 10000) return (ms / 1000).toFixed(1) + "s";
  if (ms >= 100) return ms.toFixed(0) + "ms";
  return ms.toFixed(1) + "ms";
}
function fmtBytes(n) {
  if (n === null || n === undefined) return "-";
  for (const [unit, size] of [["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
    if (n >= size) return (n / size).toFixed(1) + unit;
  }
  return n + "B";
}
function fmtTime(ts) {
  if (!ts) return "-";
  const d = new Date(ts * 1000), p = n => String(n).padStart(2, "0");
  return p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" +
    p(d.getMinutes()) + ":" + p(d.getSeconds()) + "." +
    String(d.getMilliseconds()).padStart(3, "0");
}
function fmtDuration(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
}

async function getJson(path) {
  const resp = await fetch(path, {cache: "no-store"});
  if (!resp.ok) {
    const e = new Error(path + ": HTTP " + resp.status);
    e.status = resp.status;
    throw e;
  }
  return resp.json();
}
function setField(name, value) {
  for (const el of document.querySelectorAll('[data-field="' + name + '"]')) {
    el.textContent = text(value);
    if (name === "state") el.className = "state state-" + text(value);
  }
}

function updateJob(st) {
  setField("state", st.state);
  setField("message", st.message);
  setField("parallelism", st.parallelism);
  setField("restarts", st.restarts);
  setField("records_per_second", fmtRate(st.records_per_second));
  setField("records_out_per_second", fmtRate(st.records_out_per_second));
  setField("records_in", (st.records_in || 0).toLocaleString("en"));
  setField("records_out", (st.records_out || 0).toLocaleString("en"));
  setField("restored_from", st.restored_from || "-");
  const last = st.last_checkpoint;
  setField("last_checkpoint", last ? last.id + " (" + fmtMs(last.duration_ms) + ", " +
           fmtBytes(last.size_bytes) + ")" : "-");
  if (st.running_since) {
    const end = st.finished_at || Date.now() / 1000;
    setField("uptime", fmtDuration(end - st.running_since));
  }
}

function checkpointRow(h) {
  const note = h.reason || h.path || "";
  return "<tr><td><a href=\"/ui/checkpoints/" + h.id + "\">" + h.id + "</a></td><td>" +
    esc(h.kind) + "</td><td><span class=\"status-" + esc(h.status) + "\">" + esc(h.status) +
    "</span></td><td>" + fmtTime(h.triggered_at) + "</td><td>" + fmtMs(h.duration_ms) +
    "</td><td>" + fmtBytes(h.size_bytes) + "</td><td>" + fmtMs(h.alignment_ms) + "</td><td>" +
    esc(note) + "</td></tr>";
}

async function updateCheckpoints() {
  const body = document.getElementById("checkpoint-rows");
  if (!body) return;
  const hist = (await getJson("/api/v1/checkpoints")).checkpoints.slice().reverse();
  body.innerHTML = hist.map(checkpointRow).join("");
}

async function updateSavepoints() {
  const body = document.getElementById("savepoint-rows");
  if (!body) return;
  const sps = (await getJson("/api/v1/savepoints")).savepoints.slice().reverse();
  body.innerHTML = sps.map(s => "<tr><td>" + s.id + "</td><td>" + fmtTime(s.completed_at) +
    "</td><td>" + fmtBytes(s.size_bytes) + "</td><td><code>" + esc(s.path) +
    "</code></td></tr>").join("");
}

async function updateFailures() {
  const body = document.getElementById("failure-rows");
  if (!body) return;
  const fs = (await getJson("/api/v1/failures")).failures.slice().reverse();
  const open = new Set([...body.querySelectorAll("details[open]")].map(d => d.dataset.key));
  body.innerHTML = fs.map(f => {
    const key = String(f.detected_at);
    const exc = f.exception ? "<details data-key=\"" + key + "\"" + (open.has(key) ? " open" : "") +
      "><summary>exception</summary><pre>" + esc(f.exception) + "</pre></details>" : "";
    return "<tr><td>" + fmtTime(f.detected_at) + "</td><td>" + f.attempt + "</td><td>" +
      f.restarts + "</td><td>" + esc(f.action) + "</td><td>" + esc(f.reason) + exc + "</td></tr>";
  }).join("");
}

// Busy red, backpressured grey-violet, idle green: the larger share wins, its strength
// sets the saturation (as Flink colours its job graph).
function subtaskColour(s) {
  const busy = s.busy_ratio || 0, bp = s.backpressured_ratio || 0;
  const mix = (a, b, t) => Math.round(a + (b - a) * Math.min(1, Math.max(0, t)));
  const idle = [92, 184, 92];
  const target = bp > busy ? [122, 106, 154] : [217, 83, 79];
  const t = Math.max(busy, bp);
  return "rgb(" + mix(idle[0], target[0], t) + "," + mix(idle[1], target[1], t) + "," +
    mix(idle[2], target[2], t) + ")";
}

let tasksMissing = false;
async function updateGraph() {
  const graph = document.getElementById("job-graph");
  if (!graph || !graph.dataset.tasksApi || tasksMissing) return;
  let doc;
  try {
    doc = await getJson("/api/v1/tasks?window=10");
  } catch (e) {
    if (e.status === 404) { tasksMissing = true; return; }  // an older coordinator
    throw e;
  }
  for (const task of doc.tasks) {
    const meta = document.querySelector('[data-task-meta="' + task.id + '"]');
    if (meta) meta.textContent = task.id + " · parallelism " + task.parallelism + " · in " +
      fmtRate(task.records_in_per_s) + " · out " + fmtRate(task.records_out_per_s);
    for (const s of task.subtasks) {
      const rect = document.getElementById("st-" + task.id + "-" + s.index);
      const label = document.getElementById("sttext-" + task.id + "-" + s.index);
      if (!rect || !label) continue;
      rect.setAttribute("fill", subtaskColour(s));
      label.textContent = "[" + s.index + "] " + fmtRate(s.records_in_per_s) + " in · busy " +
        Math.round(100 * (s.busy_ratio || 0)) + "% · bp " +
        Math.round(100 * (s.backpressured_ratio || 0)) + "%";
    }
  }
}

async function poll() {
  const err = document.getElementById("poll-error");
  try {
    updateJob(await getJson("/api/v1/job"));
    await updateCheckpoints();
    await updateSavepoints();
    await updateFailures();
    await updateGraph();
    document.getElementById("updated").textContent = fmtTime(Date.now() / 1000);
    err.textContent = "";
  } catch (e) {
    err.textContent = "cannot reach the coordinator (" + e.message + "); retrying";
  }
  setTimeout(poll, POLL_MS);
}

document.addEventListener("DOMContentLoaded", poll);
"""
