"""The scheduler's state machine (Flink's JobStatus plus the deploy phase), as pure functions.

Every decision the coordinator takes about the life of a job is here, with no I/O, so that
each transition is unit-tested without servers::

    CREATED ──workers ready──> DEPLOYING ──all RUNNING──> RUNNING ──sources done──> FINISHING
       │                          │                          │                        │
       └──────── failure / timeout ┴──────> RESTARTING <──────┴── failure / timeout ───┘
                                              │ (delay, workers ready)
                                              └──> DEPLOYING        attempts used up: FAILED
    FINISHING ──all COMMITTED──> FINISHED  (or STOPPED after a stop-with-savepoint)

Every non-terminal state has a deadline (:func:`deadline`): a state that outlives it is a
failure, and a failure is a restart (counted against the restart strategy) or FAILED. Nothing
waits without a timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    CREATED = "CREATED"          # waiting for every worker to connect (first attempt)
    DEPLOYING = "DEPLOYING"      # DEPLOY sent, waiting for every subtask to say RUNNING
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"    # waiting out the restart delay and for idle workers
    FINISHING = "FINISHING"      # final checkpoint (or stop savepoint) taken, commits pending
    FINISHED = "FINISHED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


TERMINAL = frozenset({JobState.FINISHED, JobState.STOPPED, JobState.FAILED})

# How long a state may last before it counts as a failure (seconds). Waiting for workers is
# generous (pods are scheduled, images pulled); a deploy or the final commits are bounded by
# the checkpoint timeout with a floor, so a slow restore is not mistaken for a hang.
WORKER_WAIT = 600.0
DEPLOY_FLOOR = 60.0


def deadline(state: JobState, checkpoint_timeout: float,
             deploy_timeout: float | None = None) -> float | None:
    """Seconds the job may stay in ``state``; None for RUNNING (it is the goal) and for the
    terminal states."""
    if state in (JobState.CREATED, JobState.RESTARTING):
        return WORKER_WAIT
    if state is JobState.DEPLOYING:
        return deploy_timeout if deploy_timeout is not None else max(DEPLOY_FLOOR,
                                                                      checkpoint_timeout)
    if state is JobState.FINISHING:
        return max(DEPLOY_FLOOR, 2 * checkpoint_timeout)
    return None


def public_state(state: JobState, attempt: int) -> str:
    """The ``state`` field of the status keeps the vocabulary its readers (operator, CLI)
    know: a deploy is CREATED on the first attempt and RESTARTING after; FINISHING is still
    RUNNING. The exact state is in ``scheduler_state``."""
    if state is JobState.DEPLOYING:
        return "CREATED" if attempt == 0 else "RESTARTING"
    if state is JobState.FINISHING:
        return "RUNNING"
    return state.value


@dataclass(frozen=True)
class Transition:
    state: JobState
    action: str           # "none" | "restart" | "fail" | "finish-stop"
    restarts: int
    delay: float = 0.0
    message: str = ""
    counted: bool = False  # this failure used one restart attempt


def on_failure(state: JobState, restarts: int, reason: str, *, strategy_type: str,
               max_attempts: int, delay_for: Callable[[int], float],
               stopped_with: int | None = None, timed_out: bool = False) -> Transition:
    """A failure: a lost worker, a FAILED subtask, too many failed checkpoints, a deploy or
    commit that timed out, an error in a background step.

    - terminal states ignore it;
    - after an acknowledged stop-with-savepoint the job does not restart: the stop finishes;
    - CREATED and RESTARTING (nothing deployed) keep waiting: the deploy starts once every
      worker is connected and idle again, without using another attempt, unless the wait
      itself outlived its deadline (``timed_out``);
    - DEPLOYING, RUNNING, FINISHING (and a timed-out wait) restart if attempts are left,
      else FAILED. A restart always returns to RESTARTING, which deploys again.
    """
    if state in TERMINAL:
        return Transition(state, "none", restarts)
    if stopped_with is not None:
        return Transition(state, "finish-stop", restarts,
                          message=f"failure after stop-with-savepoint {stopped_with}: {reason}")
    if state in (JobState.CREATED, JobState.RESTARTING) and not timed_out:
        return Transition(state, "none", restarts, message=f"while {state.value.lower()}: "
                                                           f"{reason}")
    used = restarts + 1
    if strategy_type == "none" or used > max_attempts:
        return Transition(JobState.FAILED, "fail", used, counted=True,
                          message=f"{reason}; no restart attempts left "
                                  f"({max_attempts} allowed)")
    return Transition(JobState.RESTARTING, "restart", used, delay=delay_for(used),
                      counted=True, message=f"restarting: {reason}")


def on_timeout(state: JobState, waited: float) -> str | None:
    """The failure reason when ``state`` outlived its deadline (None: no deadline)."""
    what = {JobState.CREATED: "every worker to connect",
            JobState.RESTARTING: "every worker to connect and be idle",
            JobState.DEPLOYING: "every subtask to be RUNNING",
            JobState.FINISHING: "the final checkpoint to be committed"}.get(state)
    return None if what is None else f"waited {waited:.0f}s for {what}"


def on_all_running(state: JobState) -> JobState:
    return JobState.RUNNING if state is JobState.DEPLOYING else state


def on_workers_ready(state: JobState) -> JobState:
    """Workers connected and idle: CREATED/RESTARTING deploy; other states are unaffected."""
    return JobState.DEPLOYING if state in (JobState.CREATED, JobState.RESTARTING) else state


def on_final_checkpoint(state: JobState) -> JobState:
    """The final checkpoint (end of input, or a stop-with-savepoint) completed."""
    return JobState.FINISHING if state is JobState.RUNNING else state


def on_all_committed(state: JobState, stopped: bool) -> JobState:
    if state not in (JobState.FINISHING, JobState.RUNNING):
        return state
    return JobState.STOPPED if stopped else JobState.FINISHED


# -- restore point choice --------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreChoice:
    checkpoint_id: int | None        # None: start without state (no checkpoint exists)
    skipped: tuple[tuple[int, str], ...] = ()
    error: str | None = None         # set: nothing restorable and a fresh start is not allowed


def choose_restore(completed: Iterable[int], problems: dict[int, str],
                   allow_fresh_start: bool) -> RestoreChoice:
    """The newest completed checkpoint without a known problem (unreadable metadata, missing
    or truncated state file, a restore the workers reported failed). Checkpoints with
    problems are skipped (and named). With checkpoints in storage but none restorable the job
    must not silently start from the beginning: that is an error unless a fresh start is
    explicitly allowed."""
    ids = sorted(set(completed), reverse=True)
    skipped = []
    for n in ids:
        if n in problems:
            skipped.append((n, problems[n]))
            continue
        return RestoreChoice(n, tuple(skipped))
    if ids and not allow_fresh_start:
        why = "; ".join(f"chk-{n}: {r}" for n, r in skipped)
        return RestoreChoice(None, tuple(skipped),
                             error=f"no retained checkpoint can be restored ({why}); "
                                   "refusing to start from the beginning (that would replay "
                                   "and rewrite committed output); start with "
                                   "--allow-fresh-start to do it anyway")
    return RestoreChoice(None, tuple(skipped))


def rewind_error(restore_id: int, committed_after: list[str],
                 skipped: Iterable[tuple[int, str]], allow_fresh_start: bool) -> str | None:
    """Committed output is never deleted or rewritten: a restore from checkpoint n while
    output of later checkpoints is committed (a newer checkpoint turned out unrestorable
    after its output was committed) would write those records again. That fails the job
    with the reason, unless the user explicitly allows it (the sink then moves that output
    aside, kept, before the replay)."""
    if not committed_after or allow_fresh_start:
        return None
    why = "; ".join(f"checkpoint {n}: {r}" for n, r in skipped) or "no newer checkpoint"
    where = "checkpoint " + str(restore_id) if restore_id else "the beginning"
    shown = ", ".join(committed_after[:3]) + (" …" if len(committed_after) > 3 else "")
    return (f"cannot restore without rewriting committed output: the newest restorable point "
            f"is {where} ({why}), but {len(committed_after)} output file(s) of later "
            f"checkpoints are committed ({shown}); repair the newer checkpoint, or start "
            "with --allow-fresh-start to move that output aside (kept) and replay from "
            f"{where}")


def missing_or_short(handles: Iterable[dict[str, Any]],
                     size_of: Callable[[str], int | None]) -> str | None:
    """First state file a checkpoint needs that is absent or not of the size its handle says
    (a cheap check before a deploy; bit flips are found by the workers' checksums)."""
    from streamjob.checkpoints import state_files

    for h in handles:
        for part in state_files(h):
            key = part["key"]
            size = size_of(key)
            if size is None:
                return f"state file {key} is missing"
            if part.get("size") is not None and size != part["size"]:
                return (f"state file {key} has {size} bytes, its handle says "
                        f"{part['size']}")
    return None
