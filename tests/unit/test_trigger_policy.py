from streamjob.checkpoints import TriggerState, should_trigger


def s(now, last_trigger=None, last_completion=None, in_flight=0, all_running=True):
    return TriggerState(now, last_trigger, last_completion, in_flight, all_running)


def test_first_checkpoint_as_soon_as_everything_runs():
    assert should_trigger(s(0.0), interval=1, min_pause=0, max_concurrent=1)
    assert not should_trigger(s(0.0, all_running=False), 1, 0, 1)


def test_interval_is_measured_from_the_last_trigger():
    assert not should_trigger(s(10.5, last_trigger=10.0, last_completion=10.1), 1, 0, 1)
    assert should_trigger(s(11.0, last_trigger=10.0, last_completion=10.1), 1, 0, 1)


def test_max_concurrent_limits_checkpoints_in_flight():
    assert not should_trigger(s(20.0, last_trigger=10.0, in_flight=1), 1, 0, 1)
    assert should_trigger(s(20.0, last_trigger=10.0, in_flight=1), 1, 0, 2)


def test_min_pause_after_completion():
    assert not should_trigger(s(12.0, last_trigger=10.0, last_completion=11.5), 1, 1.0, 1)
    assert should_trigger(s(12.6, last_trigger=10.0, last_completion=11.5), 1, 1.0, 1)
