"""The autoscaler's decision, as pure functions (no I/O: the caller passes the metrics, the
time and what the last decision remembered).

The model is DS2's (Kalavri et al., OSDI 2018; the algorithm behind Flink's autoscaler):

1. Every task has a **true processing rate**: the records one subtask handles per second of
   busy time (``records_in_per_s / busy``), what it could do if it never waited.
2. The sources have a **target rate**: what arrives (records read plus the backlog's growth)
   plus the backlog spread over ``catchUpDuration``. Targets flow down the job graph, each
   task multiplying by its selectivity (records out per record in).
3. A task **needs** ``target input rate / true processing rate`` fully busy subtasks, and
   ``needs / targetUtilization`` subtasks to keep headroom.

One difference from Flink: worker *i* runs subtask *i* of every task on one event loop (in
Flink each task has a thread), so the busy time of the tasks of a worker adds up. The job's
parallelism is therefore the **sum** of the tasks' needs (not their maximum) over
``targetUtilization``, rounded up to a value that divides the key groups evenly where one
exists below ``maxParallelism``, and clamped to ``[minParallelism, maxParallelism]``.

Then the guards, so that the job does not flap (:func:`decide`):

- no decision while the job is not RUNNING, a checkpoint is in progress or a restore is
  going on, nor before every subtask has reported (the numbers would be half a story). A job
  that cannot keep up may checkpoint back to back (slow alignment): after checkpoints have
  been in progress at every poll for ``max(stabilization, metricsWindow)`` it is decided
  anyway (the metrics are still right; waiting longer would only leave it behind);
- after every rescale, ``scaleUpCooldown`` before another scale-up and ``scaleDownInterval``
  before a scale-down (the window must see the new parallelism only);
- a recommendation must hold for ``stabilization`` (the same direction at every poll) before
  it is applied; scaling up goes to the lowest recommendation seen while it held, scaling
  down to the highest, and never below ``current * (1 - maxScaleDownFactor)`` in one step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

#: a task busier than this (summed over its subtasks) is measurable; below, its true rate is
#: noise (a rate-limited source that reads a few records a second)
MIN_BUSY = 0.02


@dataclass(frozen=True)
class Policy:
    """``spec.autoscaler`` (durations in seconds) and the job's key groups."""

    min_parallelism: int = 1
    max_parallelism: int = 8
    target_utilization: float = 0.7
    metrics_window: float = 10.0
    stabilization: float = 10.0
    catch_up: float = 60.0
    scale_up_cooldown: float = 20.0
    scale_down_interval: float = 60.0
    max_scale_down_factor: float = 0.5
    key_groups: int = 128


def policy_from_spec(spec: Any, key_groups: int) -> Policy:
    """The policy of a manifest's ``spec.autoscaler`` (``streamjob.manifest.AutoscalerSpec``)."""
    return Policy(
        min_parallelism=spec.min_parallelism, max_parallelism=spec.max_parallelism,
        target_utilization=float(spec.target_utilization), metrics_window=spec.metrics_window,
        stabilization=spec.stabilization, catch_up=spec.catch_up_duration,
        scale_up_cooldown=spec.scale_up_cooldown, scale_down_interval=spec.scale_down_interval,
        max_scale_down_factor=float(spec.max_scale_down_factor), key_groups=key_groups)


# ---------------------------------------------------------------------------- the DS2 model

@dataclass(frozen=True)
class TaskRate:
    """DS2's inputs for one task."""

    id: str
    inputs: tuple[str, ...] = ()
    #: records one subtask processes per busy second; None: not measurable (nearly idle)
    true_rate: float | None = None
    #: records out per record in
    selectivity: float = 1.0
    #: sources only: records per second the job must read (arrival + catch-up)
    source_rate: float | None = None
    busy: float = 0.0  # the busiest subtask's ratio (for the reason)


def ds2_needs(tasks: Sequence[TaskRate]) -> dict[str, float]:
    """Per task, the fully busy subtasks it needs for the target rates (tasks in
    topological order: a task's inputs come before it). Not measurable: 0."""
    target_out: dict[str, float] = {}
    needs: dict[str, float] = {}
    for t in tasks:
        if t.source_rate is not None:
            rate_in = t.source_rate
        else:
            rate_in = sum(target_out.get(i, 0.0) for i in t.inputs)
        target_out[t.id] = rate_in * t.selectivity
        needs[t.id] = rate_in / t.true_rate if t.true_rate else 0.0
    return needs


def divisor_at_or_above(p: int, key_groups: int, limit: int) -> int:
    """The smallest parallelism >= ``p`` and <= ``limit`` that divides the key groups (every
    subtask then holds as many key groups); ``p`` itself if there is none."""
    for q in range(p, min(limit, key_groups) + 1):
        if key_groups % q == 0:
            return q
    return p


def fit(need: float, current: int, policy: Policy) -> int:
    """A job's needed subtasks (at full busy) -> its parallelism under the policy."""
    raw = max(1, math.ceil(need / policy.target_utilization - 1e-9))
    if raw < current:  # scale down smaller: at most by maxScaleDownFactor of current
        raw = max(raw, math.ceil(current * (1 - policy.max_scale_down_factor) - 1e-9))
    high = min(policy.max_parallelism, policy.key_groups)
    raw = min(max(raw, policy.min_parallelism), high)
    return min(divisor_at_or_above(raw, policy.key_groups, high), high)


# ---------------------------------------------------------------------------- metrics in

@dataclass(frozen=True)
class Metrics:
    """What ``GET /api/v1/tasks`` answered, reduced to what the decision needs."""

    state: str
    checkpoint_in_progress: bool
    restoring: bool
    tasks: tuple[dict[str, Any], ...]

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Metrics:
        tasks = doc.get("tasks")
        return cls(state=str(doc.get("state", "")),
                   checkpoint_in_progress=bool(doc.get("checkpoint_in_progress")),
                   restoring=bool(doc.get("restoring")),
                   tasks=tuple(t for t in tasks if isinstance(t, dict))
                   if isinstance(tasks, list) else ())


def _number(value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) and x > 0 else 0.0


def task_rates(metrics: Metrics, catch_up: float) -> list[TaskRate]:
    """DS2's inputs from the task metrics (see :mod:`streamjob.taskmetrics`)."""
    out = []
    for t in metrics.tasks:
        subs = [s for s in t.get("subtasks") or () if isinstance(s, dict)]
        records_in = sum(_number(s.get("records_in_per_s")) for s in subs)
        records_out = sum(_number(s.get("records_out_per_s")) for s in subs)
        busy = sum(_number(s.get("busy_ratio")) for s in subs)
        inputs = tuple(str(i) for i in t.get("inputs") or ())
        source_rate = None
        if not inputs:
            growth = t.get("backlog_growth_per_s")
            growth = float(growth) if isinstance(growth, int | float) else 0.0
            arrival = max(0.0, records_in + growth)
            source_rate = arrival + _number(t.get("backlog")) / max(catch_up, 1.0)
        out.append(TaskRate(
            id=str(t.get("id")), inputs=inputs,
            true_rate=records_in / busy if busy >= MIN_BUSY and records_in > 0 else None,
            selectivity=records_out / records_in if records_in > 0 else 1.0,
            source_rate=source_rate, busy=_number(t.get("busy_ratio"))))
    return out


# ---------------------------------------------------------------------------- the decision

@dataclass(frozen=True)
class Memory:
    """What the autoscaler remembers between polls (kept in ``status.autoscaler``)."""

    #: a recommendation being held: its direction, since when, and its bound so far (the
    #: lowest up / highest down recommendation seen while it held)
    direction: Literal["up", "down"] | None = None
    since: float | None = None
    bound: int | None = None
    #: when the last rescale (by the autoscaler or anyone) was applied
    last_rescale_at: float | None = None
    #: since when every poll found a checkpoint in progress
    checkpointing_since: float | None = None

    def dump(self) -> dict[str, Any]:
        return {"direction": self.direction, "since": self.since, "bound": self.bound,
                "lastRescaleAt": self.last_rescale_at,
                "checkpointingSince": self.checkpointing_since}

    @classmethod
    def load(cls, data: Mapping[str, Any] | None) -> Memory:
        data = data or {}
        direction = data.get("direction")
        return cls(direction=direction if direction in ("up", "down") else None,
                   since=_opt_float(data.get("since")), bound=_opt_int(data.get("bound")),
                   last_rescale_at=_opt_float(data.get("lastRescaleAt")),
                   checkpointing_since=_opt_float(data.get("checkpointingSince")))


def _opt_float(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _opt_int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


Action = Literal["scale", "hold", "none", "wait"]


@dataclass(frozen=True)
class Decision:
    """``scale`` to ``target`` now; ``hold`` a recommendation (stabilising, cooling down);
    ``none`` (at the parallelism it needs); ``wait`` (no usable metrics now)."""

    action: Action
    current: int
    reason: str
    memory: Memory
    recommended: int | None = None
    target: int | None = None
    need: float | None = None
    #: per task: busy, true rate, target input rate, subtasks needed at the utilization
    inputs: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory"] = self.memory.dump()
        return data


def recommend(metrics: Metrics, current: int, policy: Policy
              ) -> tuple[int, float, str, dict[str, dict[str, float | None]]]:
    """The parallelism the job needs now: (parallelism, needed subtasks at full busy, the
    reason without its conclusion, the inputs per task). No guards (see :func:`decide`)."""
    tasks = task_rates(metrics, policy.catch_up)
    needs = ds2_needs(tasks)
    need = sum(needs.values())
    p = fit(need, current, policy)
    util = policy.target_utilization
    inputs: dict[str, dict[str, float | None]] = {}
    target_in: dict[str, float] = {}
    for t in tasks:
        rate_in = (t.source_rate if t.source_rate is not None
                   else sum(target_in.get(i, 0.0) for i in t.inputs))
        target_in[t.id] = rate_in * t.selectivity
        inputs[t.id] = {"busy": round(t.busy, 3),
                        "trueRate": None if t.true_rate is None else round(t.true_rate, 1),
                        "targetRate": round(rate_in, 1),
                        "needs": round(needs[t.id] / util, 2)}
    if tasks:
        top = max(tasks, key=lambda t: (needs[t.id], t.busy))
        reason = (f"task {top.id} busy {top.busy:.2f} at {current} subtask"
                  f"{'s' if current != 1 else ''}; needs {need / util:.1f} at {util:g}")
        parts = [f"{t.id} {needs[t.id] / util:.1f}" for t in tasks if needs[t.id] > 0]
        if len(parts) > 1:
            reason += f" ({' + '.join(parts)})"
    else:
        reason = "no task metrics"
    return p, need, reason, inputs


def decide(now: float, metrics: Metrics, current: int, memory: Memory,
           policy: Policy) -> Decision:
    """The autoscaler's decision at ``now`` for a job running at ``current`` subtasks."""
    def wait(why: str) -> Decision:
        return Decision("wait", current, why, memory)

    if metrics.state != "RUNNING":
        return wait(f"job is {metrics.state or 'unknown'}, not RUNNING")
    if metrics.restoring:
        return wait("a restore is in progress")
    note = ""
    if metrics.checkpoint_in_progress:
        since = memory.checkpointing_since if memory.checkpointing_since is not None else now
        memory = replace(memory, checkpointing_since=since)
        patience = max(policy.stabilization, policy.metrics_window)
        if now - since < patience:
            return wait("a checkpoint is in progress")
        note = f" (checkpoints back to back for {now - since:.0f}s: decided anyway)"
    else:
        memory = replace(memory, checkpointing_since=None)
    if not metrics.tasks or any(len(t.get("subtasks") or ()) < current for t in metrics.tasks):
        return wait("not every subtask has reported metrics yet")
    p, need, basis, inputs = recommend(metrics, current, policy)
    basis += note
    reason = f"{basis} → {p}"

    def out(action: Action, why: str, mem: Memory, target: int | None = None) -> Decision:
        return Decision(action, current, why, mem, p, target, round(need, 3), inputs)

    if p == current:
        return out("none", reason, replace(memory, direction=None, since=None, bound=None))
    direction: Literal["up", "down"] = "up" if p > current else "down"
    if memory.direction != direction or memory.since is None or memory.bound is None:
        held = replace(memory, direction=direction, since=now, bound=p)
    else:
        bound = min(memory.bound, p) if direction == "up" else max(memory.bound, p)
        held = replace(memory, bound=bound)
    if memory.last_rescale_at is not None:
        pause = policy.scale_up_cooldown if direction == "up" else policy.scale_down_interval
        pause = max(pause, policy.metrics_window)  # the window must see this parallelism only
        left = memory.last_rescale_at + pause - now
        if left > 0:
            what = "cooldown" if direction == "up" else "scale-down interval"
            return out("hold", f"{reason}; {what} after the last rescale, {left:.0f}s left",
                       held)
    assert held.since is not None and held.bound is not None
    left = held.since + policy.stabilization - now
    if left > 0:
        return out("hold", f"{reason}; holding for stabilization, {left:.0f}s left", held)
    target = held.bound
    if target == current:
        return out("none", reason, replace(held, direction=None, since=None, bound=None))
    applied = Memory(last_rescale_at=now)  # (and a fresh start for everything else)
    if target != p:  # the recommendation moved while it held: the most cautious one
        reason = (f"{basis} → {target} ({'lowest' if direction == 'up' else 'highest'} "
                  f"recommendation of the last {now - held.since:.0f}s; now {p})")
    return out("scale", reason, applied, target)


def trace(times: Iterable[float], metrics_at: Callable[[float, int], Metrics], start: int,
          policy: Policy, memory: Memory | None = None) -> list[Decision]:
    """Decisions at ``times`` for a job that starts at ``start`` subtasks and runs at every
    parallelism the decisions scale it to (at once); ``metrics_at(now, parallelism)`` says
    what the job's metrics are then. For tests and the benchmark's replay."""
    memory, current, out = memory or Memory(), start, []
    for now in times:
        d = decide(now, metrics_at(now, current), current, memory, policy)
        out.append(d)
        memory = d.memory
        if d.action == "scale" and d.target is not None:
            current = d.target
    return out
