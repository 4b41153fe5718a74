import pytest

from streamjob.durations import parse_duration
from streamjob.manifest import ManifestError, parse_arg, parse_manifest


def manifest(**spec):
    return {"apiVersion": "streamjob.dev/v1alpha1", "kind": "StreamJob",
            "metadata": {"name": "job"},
            "spec": {"pipeline": "streamjob.examples.wordcount:build", **spec}}


def test_defaults():
    job = parse_manifest(manifest())
    assert job.spec.parallelism == 1 and job.spec.max_parallelism == 128
    assert job.spec.checkpoint.mode == "exactly-once"
    assert job.spec.restart_strategy.type == "fixed-delay"


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("10s", 10), ("2m", 120),
                                               ("1h", 3600), ("1m30s", 90), (3, 3.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "10", "ten seconds", "5 parsecs", "1s2", -1, True])
def test_malformed_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("spec", "message"), [
    ({"parallelism": 129}, "spec: parallelism 129 is above maxParallelism 128"),
    ({"checkpoint": {"intervall": "1s"}}, "spec.checkpoint.intervall: unknown field"),
    ({"checkpoint": {"timeout": "soon"}}, "spec.checkpoint.timeout: 'soon' is not a duration"),
    ({"restartStrategy": {"type": "sometimes"}}, "spec.restartStrategy.type"),
    ({"storage": "ftp://x"}, "must start with file:// or s3://"),
    ({"parallelism": 0}, "spec.parallelism"),
])
def test_errors_name_the_field(spec, message):
    with pytest.raises(ManifestError) as err:
        parse_manifest(manifest(**spec))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_pipeline():
    data = manifest()
    del data["spec"]["pipeline"]
    with pytest.raises(ManifestError, match="spec.pipeline: required field is missing"):
        parse_manifest(data)


def test_exponential_delay_grows_and_caps():
    job = parse_manifest(manifest(restartStrategy={"type": "exponential-delay",
                                                   "initialDelay": "100ms", "maxDelay": "1s"}))
    rs = job.spec.restart_strategy
    assert [rs.delay_for(n) for n in (1, 2, 3, 5)] == [0.1, 0.2, 0.4, 1.0]


def test_arg_values_are_yaml_scalars():
    assert parse_arg("records=1000") == ("records", 1000)
    assert parse_arg("output=out/dir") == ("output", "out/dir")
    with pytest.raises(ManifestError):
        parse_arg("novalue")
