"""A deterministic generator source, replayable from any position.

Record g (0 <= g < records) is ``fn(g)``. The records are divided into ``splits`` splits
(split k holds g = k, k + S, k + 2S, ...); a split's position is how many of its records
were emitted. The same records come out whatever the parallelism.

``batch_fn`` (optional) makes the records of a list of g at once (``batch_fn([g, ...])``,
one record per g in order): for generators that vectorise, such as the Nexmark generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any


class GeneratorSource:
    def __init__(self, records: int, fn: Callable[[int], Any] = lambda g: g, rate: float = 0,
                 splits: int = 128,
                 batch_fn: Callable[[Sequence[int]], list[Any]] | None = None):
        if records < 0:
            raise ValueError(f"records must be 0 or more, got {records}")
        if rate < 0:
            raise ValueError(f"rate must be 0 (unlimited) or more, got {rate}")
        self.records, self.fn, self.rate, self.splits = int(records), fn, float(rate), splits
        self.batch_fn = batch_fn if batch_fn is not None else lambda gs: list(map(fn, gs))

    def split_ids(self) -> list[str]:
        return [str(k) for k in range(self.splits)]

    def initial_position(self, split_id: str) -> int:
        return 0

    def split_size(self, k: int) -> int:
        return max(0, (self.records - k + self.splits - 1) // self.splits)

    def create_reader(self, positions: dict[str, Any]) -> GeneratorReader:
        return GeneratorReader(self, {int(k): int(v) for k, v in positions.items()})


class GeneratorReader:
    def __init__(self, source: GeneratorSource, positions: dict[int, int]):
        self.source = source
        self.pos = dict(sorted(positions.items()))
        self.size = {k: source.split_size(k) for k in self.pos}

    def positions(self) -> dict[str, int]:
        return {str(k): v for k, v in self.pos.items()}

    def remaining(self) -> int:
        """Records of this reader's splits not read yet."""
        return sum(self.size[k] - r for k, r in self.pos.items() if r < self.size[k])

    def poll(self, max_records: int) -> list[Any] | None:
        live = [k for k, r in self.pos.items() if r < self.size[k]]
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
        r1 = min(r0 + rounds, max(self.size[k] for k in live))
        n = self.source.records
        out = make([g for r in range(r0, r1) for k in live if (g := k + S * r) < n])
        for k in live:
            pos[k] = min(r1, self.size[k])
        return out
