"""Durations as people write them in manifests: ``500ms``, ``10s``, ``2m``, ``1h``, ``1m30s``."""

from __future__ import annotations

import math
import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
# No setting of a job waits longer than a year; above it a value is a typo (or an overflow).
MAX_SECONDS = 366 * 24 * 3600.0
_HINT = "use e.g. 500ms, 10s, 2m"


def parse_duration(value: object) -> float:
    """Seconds from a duration string or a plain number of seconds: finite, 0 or more and at
    most :data:`MAX_SECONDS`; ValueError (one sentence) otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration ({_HINT})")
    if isinstance(value, int):
        big = math.inf if value > 0 else -math.inf
        seconds, shown = (float(value) if abs(value) <= MAX_SECONDS else big), value
    elif isinstance(value, float):
        seconds, shown = value, value
    elif isinstance(value, str):
        seconds, shown = _parse_text(value), value
    else:
        raise ValueError(f"{_short(value)} is not a duration ({_HINT})")
    shown = _short(shown)
    if math.isnan(seconds) or (isinstance(value, float) and math.isinf(value)):
        raise ValueError(f"{shown} is not a finite duration ({_HINT})")
    if seconds < 0:
        raise ValueError(f"{shown} is negative; a duration must be 0 or more")
    if seconds > MAX_SECONDS:
        raise ValueError(f"{shown} is too long; a duration must be at most 8784h (a year)")
    return seconds


def _short(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python prints
        return "a number that long"
    return text if len(text) <= 40 else f"{text[:30]}...{text[-6:]}"


def _parse_text(value: str) -> float:
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"{_short(value)} is not a duration ({_HINT})")
    return total


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:g}s"
