"""Event time: watermarks (Flink's bounded out-of-orderness strategy) and how a subtask with
several inputs combines them.

A source declares event time with ``assign_timestamps(fn, max_out_of_orderness)``: its
subtasks track the largest event time seen and emit the watermark ``max - bound`` between
batches (at most every ``interval`` seconds), and ``MAX_WATERMARK`` at the end of their
input so that a finished source never holds the others back. A watermark ``w`` promises that
no record with event time ``<= w`` follows (records that break the promise are *late*).

Watermarks travel in order with the data but never block: a subtask with several input
channels keeps the last watermark of each (:class:`WatermarkTracker`) and its own watermark
is their minimum; a channel marked :data:`IDLE` is left out until it sends a watermark again.
A subtask's watermark is part of its snapshot (:func:`restored_floors` after a rescale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamjob.keygroups import key_group_range

MIN_WATERMARK = -math.inf  # nothing known yet
MAX_WATERMARK = math.inf   # end of input: every window may fire
# "No records for a while": the channel is left out of the minimum until its next watermark
# (Flink's idleness). NaN travels as a plain float; test with math.isnan.
IDLE = math.nan


@dataclass(frozen=True)
class WatermarkStrategy:
    """Event time of a source's records and how far out of order they may come (ms)."""

    timestamp_fn: Callable[[Any], int]
    max_out_of_orderness: int = 0
    interval: float = 0.2  # seconds between two watermarks of a source subtask (0: every batch)

    def __post_init__(self) -> None:
        if self.max_out_of_orderness < 0:
            raise ValueError("max_out_of_orderness must be 0 or more milliseconds")
        if self.interval < 0:
            raise ValueError("interval must be 0 or more seconds")


class WatermarkGenerator:
    """Bounded out-of-orderness watermarks of one source subtask."""

    def __init__(self, strategy: WatermarkStrategy):
        self.strategy = strategy
        self.max_timestamp: float = MIN_WATERMARK
        self.emitted: float = MIN_WATERMARK
        self.emitted_at = -math.inf

    def observe(self, batch: list[Any]) -> list[Any]:
        """A chain transform: note the batch's largest event time, pass it on unchanged."""
        if batch:
            m = max(map(self.strategy.timestamp_fn, batch))
            if m > self.max_timestamp:
                self.max_timestamp = m
        return batch

    def next_watermark(self, now: float) -> float | None:
        """The watermark to emit now, if it advanced and the interval has passed."""
        wm = self.max_timestamp - self.strategy.max_out_of_orderness
        if wm <= self.emitted or now - self.emitted_at < self.strategy.interval:
            return None
        self.emitted, self.emitted_at = wm, now
        return wm

    def finish(self) -> float | None:
        """End of input: the final watermark (None when it was already emitted)."""
        if self.emitted == MAX_WATERMARK:
            return None
        self.emitted = MAX_WATERMARK
        return MAX_WATERMARK


class WatermarkTracker:
    """The watermark of a subtask with ``n`` input channels: the minimum of the last
    watermark received on each channel that is not idle (:data:`IDLE`). It only moves
    forward; ``current`` may start at a restored value (the watermark the subtask had when
    its checkpoint was taken)."""

    def __init__(self, num_channels: int, current: float = MIN_WATERMARK):
        self.channels: list[float] = [MIN_WATERMARK] * num_channels
        self.idle: set[int] = set()
        self.current = current

    def update(self, channel: int, watermark: float) -> float | None:
        """Record a channel's watermark; the subtask's new watermark if it advanced, or
        :data:`IDLE` when every channel has just become idle."""
        if math.isnan(watermark):
            if channel in self.idle:
                return None
            self.idle.add(channel)
        elif channel in self.idle:
            self.idle.discard(channel)
            self.channels[channel] = max(self.channels[channel], watermark)
        elif watermark <= self.channels[channel]:
            return None
        else:
            self.channels[channel] = watermark
        active = [w for c, w in enumerate(self.channels) if c not in self.idle]
        if not active:
            return IDLE  # every input idle: so is this subtask's output
        low = min(active)
        if low <= self.current:
            return None
        self.current = low
        return low


def restored_floors(old: list[float | None], key_groups: range,
                    max_parallelism: int) -> dict[int, float]:
    """Watermark per key group of ``key_groups`` from the watermarks of the subtasks a
    checkpoint was taken with (``old[i]`` for old subtask i; None: it had none)."""
    floors: dict[int, float] = {}
    for i, wm in enumerate(old):
        rng = key_group_range(i, len(old), max_parallelism)
        for kg in range(max(rng.start, key_groups.start), min(rng.stop, key_groups.stop)):
            floors[kg] = MIN_WATERMARK if wm is None else wm
    return floors
