"""The StreamJob manifest, parsed into typed models at the edge.

The same YAML runs locally (``streamjob run job.yaml``) and in Kubernetes (``kubectl apply``).
A bad manifest raises :class:`ManifestError` with one sentence that names the field.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

from streamjob.durations import parse_duration
from streamjob.errors import ManifestError
from streamjob.keygroups import DEFAULT_MAX_PARALLELISM

API_VERSION = "streamjob.dev/v1alpha1"
KIND = "StreamJob"


def _duration(value: object) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]
# Counts are integers as written: ``parallelism: true`` or ``2.5`` is a mistake, not 1 or 2.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class CheckpointSpec(_Strict):
    interval: Duration = 10.0
    timeout: Duration = 60.0
    min_pause: Duration = Field(0.0, alias="minPause")
    max_concurrent: Int = Field(1, alias="maxConcurrent", ge=1)
    mode: Literal["exactly-once", "unaligned", "at-least-once"] = "exactly-once"
    # 0 means "never switch to unaligned" for exactly-once mode.
    aligned_timeout: Duration = Field(0.0, alias="alignedTimeout")
    tolerable_failures: Int = Field(0, alias="tolerableFailures", ge=0)
    retained: Int = Field(1, ge=1)
    enabled: Bool = True
    # Upload only the keys changed since the previous checkpoint (a chain of delta files on
    # top of a full snapshot, compacted every ``maxDeltas``).
    incremental: Bool = False
    max_deltas: Int = Field(10, alias="maxDeltas", ge=1)
    # How the memory state backend encodes a snapshot off the task's thread: on an upload
    # thread (the default), or in a forked copy-on-write child (forked_snapshot.py; the
    # measurements that decide between them are in docs/benchmarks.md).
    snapshot_strategy: Literal["thread", "fork"] = Field("thread", alias="snapshotStrategy")

    @model_validator(mode="after")
    def _positive_interval(self) -> CheckpointSpec:
        if self.enabled and self.interval <= 0:
            raise ValueError("interval must be above 0 "
                             "(set enabled: false to turn checkpoints off)")
        if self.timeout <= 0:
            raise ValueError("timeout must be above 0")
        return self


class RestartStrategySpec(_Strict):
    type: Literal["fixed-delay", "exponential-delay", "none"] = "fixed-delay"
    delay: Duration = 1.0
    initial_delay: Duration = Field(0.1, alias="initialDelay")
    max_delay: Duration = Field(30.0, alias="maxDelay")
    multiplier: Annotated[float, Strict()] = Field(2.0, gt=1.0, le=100.0,
                                                       allow_inf_nan=False)
    max_attempts: Int = Field(10, alias="maxAttempts", ge=0)

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait before restart attempt number ``attempt`` (1-based)."""
        if self.type == "exponential-delay":
            try:
                grown = self.initial_delay * self.multiplier ** max(0, attempt - 1)
            except OverflowError:
                grown = self.max_delay
            return min(self.max_delay, grown)
        return self.delay


class ResourcesSpec(_Strict):
    cpu: str | None = None
    memory: str | None = None


Ratio = Annotated[float, Strict()]


class AutoscalerSpec(_Strict):
    """``spec.autoscaler``: Kubernetes only (the operator decides; ``streamjob run`` ignores
    it, ``bench/autoscale.py`` reads it). See docs/autoscaler.md."""

    enabled: Bool = False
    min_parallelism: Int = Field(1, alias="minParallelism", ge=1, le=32768)
    max_parallelism: Int = Field(8, alias="maxParallelism", ge=1, le=32768)
    target_utilization: Ratio | Int = Field(0.7, alias="targetUtilization", gt=0, le=1)
    metrics_window: Duration = Field(10.0, alias="metricsWindow")
    stabilization: Duration = 10.0
    catch_up_duration: Duration = Field(60.0, alias="catchUpDuration")
    scale_up_cooldown: Duration = Field(20.0, alias="scaleUpCooldown")
    scale_down_interval: Duration = Field(60.0, alias="scaleDownInterval")
    max_scale_down_factor: Ratio | Int = Field(0.5, alias="maxScaleDownFactor", gt=0, le=1)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalerSpec:
        if self.min_parallelism > self.max_parallelism:
            raise ValueError(f"minParallelism {self.min_parallelism} is above maxParallelism "
                             f"{self.max_parallelism}")
        if not 1 <= self.metrics_window <= 300:
            raise ValueError("metricsWindow must be between 1s and 300s")
        if self.catch_up_duration <= 0:
            raise ValueError("catchUpDuration must be above 0")
        return self


class RocksDBSpec(_Strict):
    """``spec.stateBackend.rocksdb``: memory RocksDB may use per subtask, and where its files
    live (an ``emptyDir`` in pods; under it each subtask gets a directory of its own)."""

    block_cache_mb: Int = Field(256, alias="blockCacheMB", ge=8, le=1 << 20)
    write_buffer_mb: Int = Field(64, alias="writeBufferMB", ge=1, le=1 << 16)
    local_dir: str = Field("/tmp/streamjob-state", alias="localDir", min_length=1)
    #: Kubernetes only: the ``sizeLimit`` of the pod's ``emptyDir`` at ``localDir`` (a
    #: quantity such as ``20Gi``); unset, no limit (see docs/operator.md)
    local_dir_size_limit: str | None = Field(None, alias="localDirSizeLimit",
                                             pattern=r"^[0-9]+(\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$")

    @model_validator(mode="after")
    def _absolute(self) -> RocksDBSpec:
        if not self.local_dir.startswith("/"):
            raise ValueError(f"localDir {self.local_dir!r} must be an absolute path")
        return self


class StateBackendSpec(_Strict):
    """``spec.stateBackend``: where keyed state lives (Flink's ``state.backend.type``).
    ``memory`` keeps it in Python dicts; ``rocksdb`` on local disk, bounded in memory.
    (Not ``spec.state``: that is the job's running/suspended state, as in Flink's operator.)"""

    type: Literal["memory", "rocksdb"] = "memory"
    rocksdb: RocksDBSpec = Field(default_factory=RocksDBSpec)


class StreamJobSpec(_Strict):
    pipeline: str
    args: dict[str, Any] = Field(default_factory=dict)
    parallelism: Int = Field(1, ge=1)
    max_parallelism: Int = Field(DEFAULT_MAX_PARALLELISM, alias="maxParallelism", ge=1,
                                 le=32768)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    storage: str = "file://.streamjob/checkpoints"
    restart_strategy: RestartStrategySpec = Field(default_factory=RestartStrategySpec,
                                                  alias="restartStrategy")
    # Kubernetes-only settings; ignored by local mode.
    image: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, alias="imagePullPolicy")
    storage_secret: str | None = Field(None, alias="storageSecret")
    resources: ResourcesSpec | None = None
    state: Literal["running", "suspended"] = "running"
    upgrade_mode: Literal["savepoint", "last-state", "stateless"] = Field(
        "savepoint", alias="upgradeMode")
    initial_savepoint_path: str | None = Field(None, alias="initialSavepointPath")
    savepoint_nonce: Int | None = Field(None, alias="savepointNonce")
    restart_nonce: Int | None = Field(None, alias="restartNonce")
    autoscaler: AutoscalerSpec | None = None
    state_backend: StateBackendSpec = Field(default_factory=StateBackendSpec,
                                            alias="stateBackend")

    @model_validator(mode="after")
    def _parallelism_fits(self) -> StreamJobSpec:
        if self.parallelism > self.max_parallelism:
            raise ValueError(f"parallelism {self.parallelism} is above maxParallelism "
                             f"{self.max_parallelism}")
        if ":" not in self.pipeline:
            raise ValueError(f"pipeline {self.pipeline!r} must be 'module:function'")
        if not self.storage.startswith(("file://", "s3://")):
            raise ValueError(f"storage {self.storage!r} must start with file:// or s3://")
        if self.autoscaler is not None and \
                self.autoscaler.max_parallelism > self.max_parallelism:
            raise ValueError(f"autoscaler.maxParallelism {self.autoscaler.max_parallelism} is "
                             f"above maxParallelism {self.max_parallelism} (the key groups)")
        return self


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    namespace: str | None = None
    uid: str | None = None


class StreamJob(_Strict):
    api_version: Literal["streamjob.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["StreamJob"]
    metadata: Metadata
    spec: StreamJobSpec
    status: dict[str, Any] | None = None


def _field_path(loc: tuple[Any, ...]) -> str:
    to_alias = _ALIASES
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(to_alias.get(item, item))
    return ".".join(parts)


_MODELS = (CheckpointSpec, RestartStrategySpec, ResourcesSpec, AutoscalerSpec, StreamJobSpec,
           Metadata, StreamJob)
# Python field name -> the manifest's (camelCase) name, for error messages.
_ALIASES = {name: f.alias or name for model in _MODELS for name, f in model.model_fields.items()}


def parse_manifest(data: object) -> StreamJob:
    """A typed StreamJob from a decoded manifest, or ManifestError naming the field."""
    if not isinstance(data, dict):
        raise ManifestError("the manifest must be a YAML mapping with apiVersion, kind, "
                            "metadata and spec")
    try:
        return StreamJob.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        path = _field_path(tuple(first["loc"])) or "manifest"
        kind = first["type"]
        if kind == "extra_forbidden":
            raise ManifestError(f"{path}: unknown field; check its spelling against the "
                                "StreamJob reference") from None
        if kind == "missing":
            raise ManifestError(f"{path}: required field is missing") from None
        msg = first["msg"].removeprefix("Value error, ")
        raise ManifestError(f"{path}: {msg}") from None


def load_manifest(path: str | Path, overrides: dict[str, Any] | None = None,
                  parallelism: int | None = None) -> StreamJob:
    """Read, override (``--arg``, ``-p``) and validate a manifest file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ManifestError(f"cannot read manifest {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        what = getattr(err, "problem", None) or " ".join(str(err).split())
        raise ManifestError(f"{path} is not valid YAML: {what}{where}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not valid YAML: not UTF-8 text") from None
    if isinstance(data, dict) and isinstance(data.get("spec"), dict):
        spec = data["spec"]
        if overrides:
            spec["args"] = {**(spec.get("args") or {}), **overrides}
        if parallelism is not None:
            spec["parallelism"] = parallelism
    return parse_manifest(data)


def parse_arg(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as a YAML scalar."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ManifestError(f"--arg {text!r} must look like key=value")
    if not value:
        return key, ""
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError:
        return key, value  # not YAML (``pattern=[a-z``): the text as written


def import_pipeline(spec: StreamJobSpec, search_path: str | Path | None = None):
    """Build the pipeline that ``spec.pipeline`` names, or ManifestError saying why not."""
    from streamjob.pipeline import Pipeline

    module_name, _, func_name = spec.pipeline.partition(":")
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name) and module_name[len(err.name):][:1] \
                in ("", "."):
            raise ManifestError(f"spec.pipeline: cannot import module {module_name!r} "
                                f"({err})") from err
        raise ManifestError(f"spec.pipeline: importing module {module_name!r} failed: "
                            f"{_one_line(err)}") from err
    except Exception as err:  # noqa: BLE001 - user code: one line, traceback with -v
        raise ManifestError(f"spec.pipeline: importing module {module_name!r} failed: "
                            f"{_one_line(err)}") from err
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ManifestError(f"spec.pipeline: module {module_name!r} has no function {func_name!r}")
    try:
        pipeline = func(dict(spec.args))
    except (KeyError, TypeError, ValueError) as err:
        raise ManifestError(f"spec.args: the pipeline {spec.pipeline!r} rejected its args "
                            f"({_one_line(err)})") from err
    except Exception as err:  # noqa: BLE001 - user code: one line, traceback with -v
        raise ManifestError(f"spec.pipeline: {spec.pipeline}(args) failed: "
                            f"{_one_line(err)}") from err
    if not isinstance(pipeline, Pipeline):
        raise ManifestError(f"spec.pipeline: {spec.pipeline!r} returned "
                            f"{type(pipeline).__name__}, not a streamjob.Pipeline")
    pipeline.validate()
    return pipeline


def _one_line(err: BaseException) -> str:
    """``Type: message (file, line n)`` of an exception raised by user code, on one line: where
    in the user's files it was raised (the last frame outside Python's import machinery)."""
    import traceback

    text = " ".join(str(err).split()) if not isinstance(err, SyntaxError) else err.msg
    where = ""
    if isinstance(err, SyntaxError) and err.filename:
        where = f" ({Path(err.filename).name}, line {err.lineno})"
    else:
        frames = [f for f in traceback.extract_tb(err.__traceback__)
                  if "importlib" not in f.filename and not f.filename.startswith("<frozen")
                  and Path(f.filename).name != "manifest.py"]
        if frames:
            where = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})"
    return f"{type(err).__name__}: {text}{where}" if text else f"{type(err).__name__}{where}"
