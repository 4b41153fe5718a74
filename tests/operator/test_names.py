"""``streamjob.names`` is the one home of the names, labels and exit codes that the runtime and
the operator share: the operator imports it, and the runtime's own constants agree with it."""

from __future__ import annotations

from streamjob import kube_access, names
from streamjob_operator import desired
from streamjob_operator import names as operator_names


def test_the_operator_uses_the_runtime_names():
    for attr in ("GROUP", "VERSION", "PLURAL", "LABEL_JOB", "LABEL_ROLE", "LABEL_REVISION",
                 "LABEL_INCARNATION", "LABEL_MANAGED_BY", "MANAGED_BY", "ROLE_COORDINATOR",
                 "API_PORT", "RPC_PORT", "TOKEN_KEY", "WORKER_TOKEN_KEY", "EXIT_FAILED",
                 "EXIT_FINISHED"):
        assert getattr(operator_names, attr) is getattr(names, attr), attr
    assert operator_names.token_secret_name is names.token_secret_name
    assert (desired.EXIT_FINISHED, desired.EXIT_FAILED) == (names.EXIT_FINISHED,
                                                            names.EXIT_FAILED)
    assert kube_access.token_secret_name is names.token_secret_name
    assert kube_access.LABEL_JOB is names.LABEL_JOB and kube_access.TOKEN_KEY is names.TOKEN_KEY


def test_the_runtime_exit_codes_agree_with_the_one_home():
    from streamjob import coordinator, local, worker

    assert (coordinator.EXIT_FINISHED, coordinator.EXIT_FAILED) == (names.EXIT_FINISHED,
                                                                    names.EXIT_FAILED)
    assert worker.EXIT_COORDINATOR_LOST == names.EXIT_COORDINATOR_LOST
    assert local.EXIT_FAILED == names.EXIT_RUN_FAILED


def test_the_savepoint_a_coordinator_stopped_with_is_read_from_its_termination_message():
    from streamjob_operator.coordinator import stop_savepoint

    uri = "s3://b/c/job-1/savepoints/sp-7"
    assert stop_savepoint(f'{{"state": "STOPPED", "savepoint": "{uri}"}}') == uri
    for other in ("", None, "Error: boom", '{"state": "FINISHED", "message": "done"}',
                  '{"state": "STOPPED"}', '["STOPPED"]'):
        assert stop_savepoint(other) is None
