"""Event time and windows.

* ``watermarks``: watermark strategy and generator of a source, the tracker of a subtask with
  several inputs, idleness, and the watermark a restored subtask starts from;
* ``assigners``: tumbling, sliding and session windows;
* ``operator``: the window operators (keyed state, allowed lateness, late side output);
* ``stream``: the API, ``key_by(...).window(...)...``.

See docs/operators.md.
"""

from streamjob.windows.assigners import (
    EventTimeSessionWindows,
    SlidingEventTimeWindows,
    TumblingEventTimeWindows,
)
from streamjob.windows.operator import (
    LATE,
    SessionWindowOperator,
    WindowOperator,
    WindowOperatorFactory,
)
from streamjob.windows.watermarks import (
    IDLE,
    MAX_WATERMARK,
    MIN_WATERMARK,
    WatermarkGenerator,
    WatermarkStrategy,
    WatermarkTracker,
    restored_floors,
)

__all__ = ["IDLE", "LATE", "MAX_WATERMARK", "MIN_WATERMARK", "EventTimeSessionWindows",
           "SessionWindowOperator", "SlidingEventTimeWindows", "TumblingEventTimeWindows",
           "WatermarkGenerator", "WatermarkStrategy", "WatermarkTracker", "WindowOperator",
           "WindowOperatorFactory", "restored_floors"]
