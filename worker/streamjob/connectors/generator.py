"""A deterministic generator source, replayable from any position.

Record g (0 <= g < records) is ``fn(g)``. The records are divided into ``splits`` splits
(split k holds g = k, k + S, k + 2S, ...); a split's position is how many of its records
were emitted. The same records come out whatever the parallelism.

Pace: ``rate`` (records/s for the whole job, 0 = as fast as possible), or a ``schedule`` of
rate steps such as ``"0s:50000,30s:400000,90s:50000"`` (from 0 s on 50k/s, from 30 s on
400k/s, ...). With ``start_at`` (Unix time of the job's first start) the pace is kept from
then on, across restarts and rescales: by time t the job has read what the schedule allowed
since ``start_at`` (read from the restored positions), so a job that fell behind - or was
stopped for a rescale - is behind by exactly that backlog and catches up. Without it the pace
starts again with every attempt.

``batch_fn`` (optional) makes the records of a sequence of g at once (``batch_fn(gs)``, one
record per g in order; ``gs`` is a ``range`` or a list, see ``record_ids``): for generators
that vectorise, such as the Nexmark generator.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

from streamjob.durations import parse_duration


def parse_schedule(text: str) -> list[tuple[float, float]]:
    """``"0s:50000,30s:400000"`` -> [(0.0, 50000.0), (30.0, 400000.0)]; ValueError (one
    sentence) for anything else."""
    steps: list[tuple[float, float]] = []
    for item in str(text).split(","):
        at, sep, rate = item.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            step = (parse_duration(at.strip()), float(rate))
        except ValueError:
            raise ValueError(f"schedule step {item.strip()!r} is not '<offset>:<records/s>' "
                             f"(for example '30s:400000')") from None
        if not step[1] >= 0 or step[1] == float("inf"):
            raise ValueError(f"schedule step {item.strip()!r}: the rate must be 0 or more")
        if steps and step[0] <= steps[-1][0]:
            raise ValueError(f"schedule offsets must increase, {item.strip()!r} does not")
        steps.append(step)
    if not steps or steps[0][0] != 0:
        raise ValueError("a schedule starts at 0s (for example '0s:50000,30s:400000')")
    return steps


class RateSchedule:
    """Rate steps over time; ``due(t)``: records the job may have read t seconds in."""

    def __init__(self, steps: list[tuple[float, float]]):
        self.steps = steps
        self.starts = [at for at, _ in steps]
        self.totals = [0.0]  # records due at the start of each step
        for (a, r), (b, _) in zip(steps, steps[1:], strict=False):
            self.totals.append(self.totals[-1] + (b - a) * r)

    def rate_at(self, t: float) -> float:
        return self.steps[max(0, bisect.bisect_right(self.starts, t) - 1)][1]

    def due(self, t: float) -> float:
        if t <= 0:
            return 0.0
        i = max(0, bisect.bisect_right(self.starts, t) - 1)
        at, rate = self.steps[i]
        return self.totals[i] + (t - at) * rate


class GeneratorSource:
    def __init__(self, records: int, fn: Callable[[int], Any] = lambda g: g, rate: float = 0,
                 splits: int = 128,
                 batch_fn: Callable[[Sequence[int]], list[Any]] | None = None,
                 schedule: str | None = None, start_at: float | None = None):
        if records < 0:
            raise ValueError(f"records must be 0 or more, got {records}")
        if rate < 0:
            raise ValueError(f"rate must be 0 (unlimited) or more, got {rate}")
        self.records, self.fn, self.rate, self.splits = int(records), fn, float(rate), splits
        self.batch_fn = batch_fn if batch_fn is not None else lambda gs: list(map(fn, gs))
        self.schedule: RateSchedule | None = None
        if schedule:
            self.schedule = RateSchedule(parse_schedule(schedule))
        elif start_at is not None and rate > 0:
            self.schedule = RateSchedule([(0.0, float(rate))])
        self.start_at = None if start_at is None else float(start_at)

    def split_ids(self) -> list[str]:
        return [str(k) for k in range(self.splits)]

    def initial_position(self, split_id: str) -> int:
        return 0

    def split_size(self, k: int) -> int:
        return max(0, (self.records - k + self.splits - 1) // self.splits)

    def create_reader(self, positions: dict[str, Any]) -> GeneratorReader:
        return GeneratorReader(self, {int(k): int(v) for k, v in positions.items()})


def record_ids(live: list[int], splits: int, r0: int, r1: int, n: int) -> Sequence[int]:
    """The records ``g = k + splits * r < n`` of rounds ``r0 <= r < r1`` of the ``live``
    splits (ascending), round by round, each round in split order.

    A subtask's splits are evenly spaced (``k = i, i + p, i + 2p, ...``: ``assign_splits``),
    so each round's records are a ``range``, and the whole batch is one when the spacing
    carries into the next round (``p`` divides ``splits``): no bytecode runs per record,
    which at a few hundred nanoseconds of work per record is worth a few per cent of the
    job. Any other set of splits is listed record by record."""
    a, last = live[0], live[-1]
    d = live[1] - a if len(live) > 1 else splits
    if d <= 0 or live != list(range(a, last + 1, d)):
        return [g for r in range(r0, r1) for k in live if (g := k + splits * r) < n]
    if last + d == a + splits:  # round r's last record is followed by round r + 1's first
        return range(a + splits * r0, min(a + splits * r1, n), d)
    return list(chain.from_iterable(
        range(a + splits * r, min(last + splits * r + 1, n), d) for r in range(r0, r1)))


class GeneratorReader:
    def __init__(self, source: GeneratorSource, positions: dict[int, int]):
        self.source = source
        self.pos = dict(sorted(positions.items()))
        self.size = {k: source.split_size(k) for k in self.pos}

    def positions(self) -> dict[str, int]:
        return {str(k): v for k, v in self.pos.items()}

    def emitted(self) -> int:
        """Records of this reader's splits read so far (since the job's start)."""
        return sum(self.pos.values())

    def remaining(self) -> int:
        """Records of this reader's splits not read yet."""
        return sum(self.size[k] - r for k, r in self.pos.items() if r < self.size[k])

    def poll(self, max_records: int) -> list[Any] | None:
        return self.read_below(self.source.records, self.size, max_records)

    def read_below(self, n: int, size: dict[int, int], max_records: int) -> list[Any] | None:
        """The next records ``g < n`` of this reader's splits (``size``: each split's count of
        them), round-robin over the splits; None when none is left."""
        live = [k for k, r in self.pos.items() if r < size[k]]
        if not live:
            return None
        S, make, pos = self.source.splits, self.source.batch_fn, self.pos
        r0 = min(pos[k] for k in live)
        lagging = [k for k in live if pos[k] == r0]
        if len(lagging) != len(live):
            # Splits at different positions (after a rescale): let the lagging ones catch up.
            out = make([k + S * r0 for k in lagging])
            for k in lagging:
                pos[k] += 1
            return out
        rounds = max(1, max_records // len(live))
        r1 = min(r0 + rounds, max(size[k] for k in live))
        out = make(record_ids(live, S, r0, r1, n))
        for k in live:
            pos[k] = min(r1, size[k])
        return out
