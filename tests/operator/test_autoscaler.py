"""The autoscaler's decision (pure): DS2's model on worked examples, then traces of a job
whose metrics follow its parallelism: step up, step down, a short spike, backlog catch-up."""

from __future__ import annotations

import math

import pytest

from streamjob_operator.autoscaler import (
    Memory,
    Metrics,
    Policy,
    TaskRate,
    decide,
    divisor_at_or_above,
    ds2_needs,
    fit,
    recommend,
    trace,
)

# -- DS2's model ---------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "op1", "op2", "expected"), [
    # (source rate), (true processing rate, true output rate) of Op1 and Op2 -> parallelism.
    # The worked example of DS2's own test suite (strymon-system/ds2, epochs 0, 1 and 7).
    (100, (50, 400), (100, 200), (2, 8)),
    (200, (40, 700), (99, 200), (5, 36)),
    (200, (10, 700), (201, 200), (20, 70)),
])
def test_ds2_worked_example(source, op1, op2, expected):
    tasks = [TaskRate("src", source_rate=source),
             TaskRate("op1", ("src",), true_rate=op1[0], selectivity=op1[1] / op1[0]),
             TaskRate("op2", ("op1",), true_rate=op2[0], selectivity=op2[1] / op2[0])]
    needs = ds2_needs(tasks)
    assert (math.ceil(needs["op1"]), math.ceil(needs["op2"])) == expected
    assert needs["src"] == 0  # a source without a measured true rate constrains nothing


def test_divisors_of_the_key_groups_are_preferred_where_they_exist():
    assert [divisor_at_or_above(p, 128, 128) for p in (1, 2, 3, 5, 9, 17)] == [1, 2, 4, 8, 16,
                                                                               32]
    assert divisor_at_or_above(5, 128, 6) == 5     # none up to the limit: as it is
    assert divisor_at_or_above(7, 90, 90) == 9


def test_fit_applies_utilization_bounds_and_the_scale_down_factor():
    policy = Policy(min_parallelism=2, max_parallelism=12, target_utilization=0.7,
                    max_scale_down_factor=0.5, key_groups=128)
    assert fit(2.38, 1, policy) == 4         # 2.38 / 0.7 = 3.4 -> 4 (divides 128)
    assert fit(0.1, 1, policy) == 2          # min
    assert fit(50, 1, policy) == 12          # max (no divisor of 128 in 12..12: 12)
    assert fit(0.1, 8, policy) == 4          # at most halved in one step
    assert fit(4.9, 8, policy) == 8          # 7 -> 8: a divisor, as before


def metrics(tasks, state="RUNNING", checkpoint=False, restoring=False) -> Metrics:
    return Metrics.from_json({"state": state, "checkpoint_in_progress": checkpoint,
                              "restoring": restoring, "tasks": tasks})


def task(tid, inputs, p, rate_in, busy, rate_out=None, backlog=None, growth=None):
    """A task of ``p`` equal subtasks: ``rate_in`` records/s in total, each ``busy``."""
    rate_out = rate_in if rate_out is None else rate_out
    subs = [{"index": i, "records_in_per_s": rate_in / p, "records_out_per_s": rate_out / p,
             "busy_ratio": busy, "backpressured_ratio": 0.0, "idle_ratio": 1 - busy,
             "backlog": None if backlog is None else backlog // p,
             "backlog_growth_per_s": None if growth is None else growth / p}
            for i in range(p)]
    return {"id": tid, "name": tid, "inputs": inputs, "parallelism": p,
            "records_in_per_s": rate_in, "records_out_per_s": rate_out, "busy_ratio": busy,
            "backpressured_ratio": 0.0, "backlog": backlog, "backlog_growth_per_s": growth,
            "subtasks": subs}


def test_the_reason_names_the_bottleneck_and_the_arithmetic():
    # t1 at 2 subtasks, each busy 0.96 for 20k/s: true rate 10,417/s per subtask. The source
    # reads 20k/s but 3,800/s more arrive (its backlog grows): 23.8k/s / 10.4k = 2.28
    # subtasks fully busy; with the source's own share (0.1 busy for 10k/s: 100k/s true
    # rate, 0.24) that is 2.52 / 0.7 = 3.6 -> 4.
    m = metrics([task("t0", [], 2, 20_000, 0.1, backlog=0, growth=3_800),
                 task("t1", ["t0"], 2, 20_000, 0.96)])
    p, need, reason, inputs = recommend(m, 2, Policy())
    assert p == 4
    assert decide(0.0, m, 2, Memory(), Policy(stabilization=0)).reason == reason + " → 4"
    assert need == pytest.approx(23_800 / 100_000 + 23_800 / (20_000 / 1.92), rel=1e-6)
    assert reason == "task t1 busy 0.96 at 2 subtasks; needs 3.6 at 0.7 (t0 0.3 + t1 3.3)"
    assert inputs["t1"]["targetRate"] == 23_800.0 and inputs["t1"]["trueRate"] == 10416.7


def test_no_decision_without_trustworthy_metrics():
    good = [task("t0", [], 2, 1000, 0.5), task("t1", ["t0"], 2, 1000, 0.9)]
    for m, why in [
        (metrics(good, state="RESTARTING"), "not RUNNING"),
        (metrics(good, restoring=True), "restore"),

        (metrics([task("t0", [], 1, 1000, 0.5)]), "reported"),  # 1 of 2 subtasks
    ]:
        d = decide(100.0, m, 2, Memory(), Policy())
        assert d.action == "wait" and why in d.reason and d.memory == Memory()


# -- traces: a simulated job -------------------------------------------------------------


class Job:
    """A source reading at the arrival rate (or what the job can do, with a growing
    backlog) and a keyed task of ``cost`` seconds per record per subtask."""

    def __init__(self, rate_at, cost=1 / 10_000, source_cost=1 / 200_000):
        self.rate_at, self.cost, self.source_cost = rate_at, cost, source_cost
        self.backlog, self.last = 0.0, 0.0

    def __call__(self, now: float, p: int) -> Metrics:
        arrival = self.rate_at(now)
        capacity = p / (self.cost + self.source_cost)  # the loop shares both tasks
        dt, self.last = now - self.last, now
        wanted = arrival + self.backlog / dt if dt > 0 else arrival
        read = min(wanted, capacity)
        growth = arrival - read
        self.backlog = max(0.0, self.backlog + growth * dt)
        return metrics([
            task("t0", [], p, read, read / p * self.source_cost, backlog=int(self.backlog),
                 growth=growth),
            task("t1", ["t0"], p, read, read / p * self.cost)])


POLICY = Policy(min_parallelism=1, max_parallelism=16, target_utilization=0.7,
                stabilization=10, scale_up_cooldown=20, scale_down_interval=60,
                metrics_window=10, catch_up=30, max_scale_down_factor=0.5)


def parallelism_over(decisions, start):
    out, p = [start], start
    for d in decisions:
        if d.action == "scale":
            p = d.target
            out.append(p)
    return out


def test_step_up_scales_once_after_stabilization_and_step_down_slower_and_smaller():
    # 5k/s, 25k/s from t=60 to t=300, then 5k/s; a subtask handles ~9.5k/s.
    job = Job(lambda t: 25_000 if 60 <= t < 300 else 5_000)
    times = [float(t) for t in range(1, 600)]
    ds = trace(times, job, 1, POLICY)
    scales = [d for d in ds if d.action == "scale"]
    assert parallelism_over(ds, 1) == [1, 4, 2, 1]
    up, down1, down2 = scales
    t_up = times[ds.index(up)]
    assert 70 <= t_up <= 75  # 10 s of window, then 10 s of stabilization
    assert up.reason.startswith("task t1 busy 0.9") and "→ 4" in up.reason, up.reason
    # down: halved at most per step, 60 s apart at least
    t_down1, t_down2 = times[ds.index(down1)], times[ds.index(down2)]
    assert t_down1 >= 310 and t_down2 - t_down1 >= 60


def test_a_spike_shorter_than_stabilization_does_nothing():
    # 3k/s with a 5 s spike to 30k/s: its backlog (~100k) is caught up at p = 1 within
    # catchUpDuration, so no rescale is needed at all
    job = Job(lambda t: 30_000 if 100 <= t < 105 else 3_000)
    ds = trace([float(t) for t in range(1, 200)], job, 1, POLICY)
    assert [d for d in ds if d.action == "scale"] == []
    assert any(d.action == "hold" and "stabilization" in d.reason for d in ds)


def test_a_noisy_load_does_not_flap():
    # +-30 % around 12k/s, changing every 3 s: one scale-up, then steady
    job = Job(lambda t: 12_000 * (1.3 if int(t / 3) % 2 else 0.7))
    ds = trace([float(t) for t in range(1, 400)], job, 1, POLICY)
    assert len([d for d in ds if d.action == "scale"]) == 1


def test_backlog_is_caught_up_with_extra_parallelism():
    # The job ran at 1 subtask under 9k/s (it keeps up) but has a 600k backlog from a
    # pause: with catchUp 30 s the sources must read 9k + 20k/s.
    m = metrics([task("t0", [], 1, 9_000, 0.05, backlog=600_000, growth=0),
                 task("t1", ["t0"], 1, 9_000, 0.9)])
    p, need, reason, _ = recommend(m, 1, POLICY)
    assert need == pytest.approx(29_000 * 0.05 / 9_000 + 29_000 * 0.9 / 9_000)
    assert p == 8  # 3.06 / 0.7 = 4.4 -> 5 -> 8 (divides 128)
    # and without the backlog it stays at 2 subtasks' worth
    m0 = metrics([task("t0", [], 1, 9_000, 0.05, backlog=0, growth=0),
                  task("t1", ["t0"], 1, 9_000, 0.9)])
    assert recommend(m0, 1, POLICY)[0] == 2


def test_cooldown_follows_every_rescale():
    m = metrics([task("t0", [], 2, 20_000, 0.1), task("t1", ["t0"], 2, 20_000, 0.99)])
    mem = Memory(last_rescale_at=100.0)
    d = decide(110.0, m, 2, mem, POLICY)
    assert d.action == "hold" and "cooldown" in d.reason and d.memory.direction == "up"
    d = decide(121.0, m, 2, d.memory, POLICY)
    assert d.action == "scale" and d.memory == Memory(last_rescale_at=121.0)


def test_a_recommendation_back_at_current_resets_the_hold():
    busy = metrics([task("t0", [], 1, 9_000, 0.05), task("t1", ["t0"], 1, 9_000, 0.99)])
    calm = metrics([task("t0", [], 1, 3_000, 0.02), task("t1", ["t0"], 1, 3_000, 0.33)])
    d = decide(0.0, busy, 1, Memory(), POLICY)
    assert d.action == "hold"
    d = decide(5.0, calm, 1, d.memory, POLICY)
    assert d.action == "none" and d.memory.direction is None
    d = decide(11.0, busy, 1, d.memory, POLICY)
    assert d.action == "hold"  # the stabilization starts again


def test_a_checkpoint_in_progress_defers_the_decision_unless_they_run_back_to_back():
    m = metrics([task("t0", [], 1, 9_000, 0.05), task("t1", ["t0"], 1, 9_000, 0.99)],
                checkpoint=True)
    policy = Policy(stabilization=10, metrics_window=5)
    d = decide(100.0, m, 1, Memory(), policy)
    assert d.action == "wait" and "checkpoint" in d.reason
    d = decide(105.0, m, 1, d.memory, policy)
    assert d.action == "wait" and d.memory.checkpointing_since == 100.0
    d = decide(110.0, m, 1, d.memory, policy)   # 10 s of checkpoints at every poll
    assert d.action == "hold" and "back to back for 10s" in d.reason
    calm = metrics(list(m.tasks))                # a poll between checkpoints resets it
    d = decide(111.0, calm, 1, d.memory, policy)
    assert d.action == "hold" and d.memory.checkpointing_since is None


def test_memory_round_trips_through_status():
    mem = Memory("up", 12.5, 4, 3.0, 7.0)
    assert Memory.load(mem.dump()) == mem
    assert Memory.load(None) == Memory()
    assert Memory.load({"direction": "sideways", "bound": "x"}) == Memory()
