"""CheckpointBarrierHandler: what a subtask with k input channels does with barriers.

Pure logic, no I/O: fed (channel, checkpoint id) arrivals and clock ticks, it answers with
actions for the task to carry out and keeps the set of blocked channels.

* ``exactly-once`` (aligned): the first barrier n blocks its channel; the others keep
  flowing until barrier n arrived on all k; then SNAPSHOT, forward, unblock. With
  ``aligned_timeout`` > 0 an alignment that lasts longer switches to unaligned for that
  checkpoint.
* ``unaligned``: the first barrier n (which overtakes queued records) causes SNAPSHOT at once;
  records still ahead of barrier n on the other channels are captured as in-flight state
  until each channel's barrier arrives (CAPTURE_END); COMPLETE when all arrived.
* ``at-least-once``: nothing blocks; SNAPSHOT when barrier n arrived on all channels.

Savepoints and the final checkpoint are always aligned (``aligned=True``): a savepoint must
be replayable at any parallelism, and no record may be processed after the final checkpoint
(in-flight records of an unaligned one would be processed after it and never committed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

SNAPSHOT = "snapshot"          # take the synchronous snapshot now and forward the barrier
CAPTURE_END = "capture_end"    # in-flight capture of one channel is complete
COMPLETE = "complete"          # barrier n arrived on every channel: the snapshot can be acked
ABORTED = "aborted"            # checkpoint n was given up (a newer barrier overtook it)


@dataclass(frozen=True)
class Action:
    kind: str
    checkpoint_id: int
    unaligned: bool = False
    # For SNAPSHOT with unaligned=True: channels whose records must be captured until their
    # barrier arrives. For CAPTURE_END: the channel.
    channels: tuple[int, ...] = ()
    started_at: float = 0.0  # when the first barrier n arrived (for SNAPSHOT)


@dataclass
class _Pending:
    checkpoint_id: int
    started_at: float
    arrived: set[int] = field(default_factory=set)
    snapshotted: bool = False
    unaligned: bool = False
    aligned: bool = False  # savepoint or final checkpoint


class BarrierHandler:
    def __init__(self, num_channels: int, mode: str = "exactly-once",
                 aligned_timeout: float = 0.0):
        if mode not in ("exactly-once", "unaligned", "at-least-once"):
            raise ValueError(f"unknown checkpoint mode {mode!r}")
        self.num_channels = num_channels
        self.mode = mode
        self.aligned_timeout = aligned_timeout
        self.blocked: set[int] = set()
        self.pending: _Pending | None = None
        self.last_done = 0
        self.alignment_started: float | None = None

    @property
    def priority_barriers(self) -> bool:
        """Whether barriers should overtake queued records (unaligned right now)."""
        if self.mode == "unaligned":
            return True
        return self.pending is not None and self.pending.unaligned

    def on_barrier(self, channel: int, checkpoint_id: int, now: float,
                   aligned: bool = False) -> list[Action]:
        actions: list[Action] = []
        if checkpoint_id <= self.last_done:
            return actions  # stale barrier of a checkpoint already done or aborted
        p = self.pending
        if p is not None and checkpoint_id > p.checkpoint_id:
            # A newer barrier overtook: the older checkpoint can never align here.
            actions.append(Action(ABORTED, p.checkpoint_id))
            self._finish(p.checkpoint_id)
            p = None
        if p is None:
            p = self.pending = _Pending(checkpoint_id, now, aligned=aligned)
        if channel in p.arrived:
            return actions
        p.arrived.add(channel)
        all_arrived = len(p.arrived) == self.num_channels
        unaligned_now = self.mode == "unaligned" and not p.aligned
        if self.mode == "at-least-once" and not p.aligned:
            if all_arrived:
                actions += [Action(SNAPSHOT, checkpoint_id, started_at=p.started_at),
                            Action(COMPLETE, checkpoint_id)]
                self._finish(checkpoint_id)
            return actions
        if p.snapshotted:  # unaligned: this channel's in-flight capture ends here
            actions.append(Action(CAPTURE_END, checkpoint_id, True, (channel,)))
        elif unaligned_now:
            p.snapshotted = p.unaligned = True
            others = tuple(c for c in range(self.num_channels) if c not in p.arrived)
            actions.append(Action(SNAPSHOT, checkpoint_id, True, others, p.started_at))
        elif all_arrived:
            actions.append(Action(SNAPSHOT, checkpoint_id, started_at=p.started_at))
        else:
            self.blocked.add(channel)
            if len(p.arrived) == 1:
                self.alignment_started = now
        if all_arrived:
            actions.append(Action(COMPLETE, checkpoint_id, p.unaligned))
            self._finish(checkpoint_id)
        return actions

    def on_tick(self, now: float) -> list[Action]:
        """Switch a long alignment to unaligned once ``aligned_timeout`` has passed."""
        p = self.pending
        if (p is None or p.snapshotted or p.aligned or self.mode != "exactly-once"
                or self.aligned_timeout <= 0 or now - p.started_at < self.aligned_timeout):
            return []
        p.snapshotted = p.unaligned = True
        self.blocked.clear()
        others = tuple(c for c in range(self.num_channels) if c not in p.arrived)
        return [Action(SNAPSHOT, p.checkpoint_id, True, others, p.started_at)]

    def deadline(self) -> float | None:
        """When ``on_tick`` may next have something to do."""
        p = self.pending
        if (p is None or p.snapshotted or p.aligned or self.mode != "exactly-once"
                or self.aligned_timeout <= 0):
            return None
        return p.started_at + self.aligned_timeout

    def abort(self, checkpoint_id: int) -> list[Action]:
        """The coordinator gave up checkpoint ``checkpoint_id`` (or an older one)."""
        p = self.pending
        if p is None or p.checkpoint_id > checkpoint_id:
            self.last_done = max(self.last_done, checkpoint_id)
            return []
        self._finish(p.checkpoint_id)
        self.last_done = max(self.last_done, checkpoint_id)
        return [Action(ABORTED, p.checkpoint_id)]

    def _finish(self, checkpoint_id: int) -> None:
        self.pending = None
        self.blocked.clear()
        self.alignment_started = None
        self.last_done = max(self.last_done, checkpoint_id)
