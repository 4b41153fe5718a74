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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 1e300, 10**30,
                                 "99999999999999999999999h", "9000h", "1" * 400 + "ms"])
def test_durations_are_finite_and_bounded(bad):
    with pytest.raises(ValueError) as err:
        parse_duration(bad)
    assert "\n" not in str(err.value) and len(str(err.value)) < 120


def test_a_year_is_the_longest_duration():
    assert parse_duration("8784h") == 366 * 24 * 3600


def _from_yaml(spec_yaml: str) -> dict:
    import yaml

    data = manifest()
    data["spec"].update(yaml.safe_load(spec_yaml))
    return data


@pytest.mark.parametrize(("spec_yaml", "message"), [
    ("checkpoint: {interval: .nan}", "spec.checkpoint.interval: nan is not a finite duration"),
    ("checkpoint: {timeout: .nan}", "spec.checkpoint.timeout: nan is not a finite duration"),
    ("restartStrategy: {delay: .nan}", "spec.restartStrategy.delay: nan is not a finite"),
    ("checkpoint: {interval: .inf}", "spec.checkpoint.interval: inf is not a finite duration"),
    ("checkpoint: {minPause: -.inf}", "spec.checkpoint.minPause: -inf is not a finite"),
    ("checkpoint: {timeout: 99999999999999999999999h}", "spec.checkpoint.timeout: "
     "'99999999999999999999999h' is too long"),
    ("checkpoint: {alignedTimeout: 1.0e+400}", "spec.checkpoint.alignedTimeout: inf is not"),
    ("restartStrategy: {maxDelay: 100000000000000000000000000}",
     "spec.restartStrategy.maxDelay: 100000000000000000000000000 is too long"),
    ("parallelism: true", "spec.parallelism: Input should be a valid integer"),
    ("parallelism: 1.5", "spec.parallelism: Input should be a valid integer"),
    ("parallelism: '2'", "spec.parallelism: Input should be a valid integer"),
    ("maxParallelism: false", "spec.maxParallelism: Input should be a valid integer"),
    ("checkpoint: {retained: true}", "spec.checkpoint.retained: Input should be a valid integer"),
    ("checkpoint: {enabled: 1}", "spec.checkpoint.enabled: Input should be a valid boolean"),
    ("restartStrategy: {maxAttempts: 2.0}", "spec.restartStrategy.maxAttempts: Input should be"),
    ("restartStrategy: {multiplier: .inf}", "spec.restartStrategy.multiplier:"),
    ("restartStrategy: {multiplier: .nan}", "spec.restartStrategy.multiplier:"),
    ("restartStrategy: {multiplier: true}", "spec.restartStrategy.multiplier:"),
])
def test_non_finite_absurd_or_loosely_typed_numbers_are_one_line_naming_the_field(
        spec_yaml, message):
    with pytest.raises(ManifestError) as err:
        parse_manifest(_from_yaml(spec_yaml))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_exponential_delay_never_overflows():
    job = parse_manifest(manifest(restartStrategy={"type": "exponential-delay",
                                                   "multiplier": 100, "maxDelay": "30s",
                                                   "maxAttempts": 100000}))
    assert job.spec.restart_strategy.delay_for(5000) == 30.0


def test_an_arg_that_is_not_yaml_is_its_text():
    assert parse_arg("pattern=[a-z") == ("pattern", "[a-z")


def test_a_manifest_that_is_not_text_is_one_line(tmp_path):
    from streamjob.manifest import load_manifest

    path = tmp_path / "job.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ManifestError, match="is not valid YAML: not UTF-8 text"):
        load_manifest(path)


def test_invalid_yaml_is_one_line_with_its_place(tmp_path):
    from streamjob.manifest import load_manifest

    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: x\nspec: {pipeline: [unclosed\n")
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert "is not valid YAML" in str(err.value) and "line " in str(err.value)
    assert "\n" not in str(err.value)


# -- the pipeline module: user code that fails while the job is being built -----------------

_BROKEN = {
    "raises": ("import json\nx = 1 / 0\n", "importing module '{m}' failed: ZeroDivisionError: "
               "division by zero ({m}.py, line 2)"),
    "syntax": ("def build(args)\n    return None\n", "importing module '{m}' failed: "
               "SyntaxError: expected ':' ({m}.py, line 1)"),
    "missing_dep": ("import no_such_dependency_xyz\n", "importing module '{m}' failed: "
                    "ModuleNotFoundError: No module named 'no_such_dependency_xyz' ({m}.py, "
                    "line 1)"),
    "build_raises": ("def helper():\n    raise RuntimeError('no connection\\nto x')\n\n"
                     "def build(args):\n    helper()\n",
                     "spec.pipeline: {m}:build(args) failed: RuntimeError: no connection to x "
                     "({m}.py, line 2)"),
}


def _broken_module(tmp_path, kind: str) -> str:
    import uuid

    name = f"broken_{kind}_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(_BROKEN[kind][0])
    return name


@pytest.mark.parametrize("kind", sorted(_BROKEN))
def test_a_pipeline_module_that_fails_is_one_line_naming_module_and_error(tmp_path, kind):
    from streamjob.manifest import import_pipeline

    name = _broken_module(tmp_path, kind)
    job = parse_manifest(manifest(pipeline=f"{name}:build"))
    with pytest.raises(ManifestError) as err:
        import_pipeline(job.spec, tmp_path)
    assert str(err.value).endswith(_BROKEN[kind][1].format(m=name)), str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.__cause__ is not None  # the traceback, for --verbose


@pytest.mark.parametrize("verbose", [False, True])
def test_streamjob_run_prints_the_traceback_only_with_verbose(tmp_path, monkeypatch, capsys,
                                                              verbose):
    import yaml

    from streamjob import cli

    name = _broken_module(tmp_path, "raises")
    data = manifest(pipeline=f"{name}:build", storage=f"file://{tmp_path / 'ck'}")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    code = cli.main(["run", str(tmp_path / "job.yaml"), *(["-v"] if verbose else [])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines()[-1] == (f"streamjob: error: spec.pipeline: importing module "
                                    f"'{name}' failed: ZeroDivisionError: division by zero "
                                    f"({name}.py, line 2)")
    if verbose:
        assert "Traceback (most recent call last)" in err and "x = 1 / 0" in err
    else:
        assert len(err.splitlines()) == 1, err
    assert not (tmp_path / ".streamjob").exists() and not (tmp_path / "ck").exists()


def test_state_backend_defaults_to_memory():
    backend = parse_manifest(manifest()).spec.state_backend
    assert backend.type == "memory"
    assert backend.rocksdb.block_cache_mb == 256 and backend.rocksdb.local_dir.startswith("/")


def test_rocksdb_state_backend_settings():
    spec = parse_manifest(manifest(stateBackend={
        "type": "rocksdb", "rocksdb": {"blockCacheMB": 64, "writeBufferMB": 16,
                                       "localDir": "/state"}})).spec
    assert spec.state_backend.type == "rocksdb"
    assert (spec.state_backend.rocksdb.block_cache_mb, spec.state_backend.rocksdb.write_buffer_mb,
            spec.state_backend.rocksdb.local_dir) == (64, 16, "/state")
    assert spec.state == "running"  # the job's state is another field


@pytest.mark.parametrize(("backend", "message"), [
    ({"type": "heap"}, "stateBackend.type"),
    ({"type": "rocksdb", "rocksdb": {"localDir": "state"}}, "absolute"),
    ({"type": "rocksdb", "rocksdb": {"blockCacheMB": 0}}, "blockCacheMB"),
    ({"type": "rocksdb", "rocksdb": {"cache": 1}}, "cache"),
])
def test_bad_state_backend_is_one_line_naming_the_field(backend, message):
    with pytest.raises(ManifestError, match=message):
        parse_manifest(manifest(stateBackend=backend))
