"""GeneratorSource's rate schedule and the pace a source subtask keeps (task.Pace)."""

from __future__ import annotations

import time

import pytest

from streamjob.connectors import GeneratorSource
from streamjob.connectors.generator import RateSchedule, parse_schedule
from streamjob.task import Pace


def test_schedule_steps_are_parsed():
    assert parse_schedule("0s:50000, 30s:400000,1m30s:50000") == [
        (0.0, 50000.0), (30.0, 400000.0), (90.0, 50000.0)]


@pytest.mark.parametrize(("text", "why"), [
    ("10s:5", "starts at 0s"), ("0s:5,0s:6", "must increase"), ("0s", "'<offset>:<records/s>'"),
    ("0s:-1", "0 or more"), ("0s:fast", "'<offset>:<records/s>'"), ("soon:5", "<offset>"),
])
def test_bad_schedules_say_what_is_wrong(text, why):
    with pytest.raises(ValueError, match=why):
        parse_schedule(text)


def test_due_is_the_integral_of_the_rate_steps():
    s = RateSchedule(parse_schedule("0s:100,10s:1000,20s:0"))
    assert [s.due(t) for t in (-1, 0, 5, 10, 15, 20, 100)] == [0, 0, 500, 1000, 6000, 11000,
                                                               11000]
    assert [s.rate_at(t) for t in (0, 9.9, 10, 25)] == [100, 100, 1000, 0]


def test_pace_of_a_schedule_counts_from_start_at_against_what_was_read():
    # started 10 s ago at 100/s then 1000/s: 1,000 records due; this subtask owns half the
    # splits and has read 300 of its 500 (restored positions): 200 behind
    src = GeneratorSource(records=10**9, splits=4, schedule="0s:100,10s:1000",
                          start_at=time.time() - 10)
    reader = src.create_reader({"0": 100, "1": 200})
    pace = Pace(src, reader, share=0.5)
    assert 195 <= pace.allowed() <= 260  # a little time passes between the lines
    assert pace.rate_now() == 500


def test_pace_without_start_at_counts_from_the_attempt():
    src = GeneratorSource(records=100, rate=1000)
    pace = Pace(src, src.create_reader({"0": 0}), share=1.0)
    assert pace.schedule is None and pace.allowed() <= 50
    unlimited = GeneratorSource(records=100)
    assert Pace(unlimited, unlimited.create_reader({}), 1.0).allowed() is None
