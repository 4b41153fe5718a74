"""Which event-time windows a record belongs to (Flink's window assigners).

* :class:`TumblingEventTimeWindows` ``(size)``: ``[k*size, (k+1)*size)``, one per record.
* :class:`SlidingEventTimeWindows` ``(size, slide)``: windows of ``size`` starting every
  ``slide``; a record belongs to the ``size / slide`` windows that contain it (hop windows).
* :class:`EventTimeSessionWindows` ``(gap)``: a record opens ``[ts, ts + gap)``; windows of a
  key that overlap or touch merge into one session, so records at most ``gap`` apart share a
  session and a session ends ``gap`` after its last record.

All times are ms of event time. A window ``[start, end)`` fires when the watermark reaches
``end``.
"""

from __future__ import annotations

from dataclasses import dataclass


def _positive(name: str, value: int) -> None:
    if int(value) != value or value <= 0:
        raise ValueError(f"{name} must be a positive whole number of ms, got {value!r}")


@dataclass(frozen=True)
class TumblingEventTimeWindows:
    size: int

    def __post_init__(self) -> None:
        _positive("window size", self.size)

    def starts(self, ts: int) -> list[int]:
        return [ts - ts % self.size]


@dataclass(frozen=True)
class SlidingEventTimeWindows:
    size: int
    slide: int

    def __post_init__(self) -> None:
        _positive("window size", self.size)
        _positive("window slide", self.slide)

    def starts(self, ts: int) -> list[int]:
        """Starts of every window ``[s, s + size)`` holding ``ts``, latest first."""
        last = ts - ts % self.slide
        return list(range(last, ts - self.size, -self.slide))


@dataclass(frozen=True)
class EventTimeSessionWindows:
    gap: int

    def __post_init__(self) -> None:
        _positive("session gap", self.gap)
