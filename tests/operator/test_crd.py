"""The StreamJob CRD: shape, printer columns, subresources, and no drift from the manifest model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sj_bodies import streamjob_body

from streamjob.manifest import parse_manifest

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "streamjob.dev_streamjobs.yaml"
CRD = yaml.safe_load(CRD_PATH.read_text())
VERSION = CRD["spec"]["versions"][0]
SPEC = VERSION["schema"]["openAPIV3Schema"]["properties"]["spec"]


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting, as the API server does it (objects only)."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        return value
    for key, sub in (schema.get("properties") or {}).items():
        if key not in value and "default" in sub:
            value[key] = sub["default"]
        if key in value:
            value[key] = apply_defaults(sub, value[key])
    return value


def test_names_version_and_short_name():
    assert CRD["metadata"]["name"] == "streamjobs.streamjob.dev"
    assert CRD["spec"]["names"]["shortNames"] == ["sj"]
    assert VERSION["name"] == "v1alpha1" and VERSION["served"] and VERSION["storage"]


def test_status_and_scale_subresources():
    assert VERSION["subresources"]["status"] == {}
    assert VERSION["subresources"]["scale"] == {
        "specReplicasPath": ".spec.parallelism", "statusReplicasPath": ".status.parallelism",
        "labelSelectorPath": ".status.selector"}


def test_printer_columns():
    visible = [c["name"] for c in VERSION["additionalPrinterColumns"] if not c.get("priority")]
    assert visible == ["Phase", "Parallelism", "Recommended", "Last Checkpoint", "Age"]
    recommended = next(c for c in VERSION["additionalPrinterColumns"]
                       if c["name"] == "Recommended")
    assert recommended["jsonPath"] == ".status.autoscaler.recommended"


def test_parallelism_rule_spans_fields_and_names_the_field():
    rule = SPEC["x-kubernetes-validations"][0]
    assert rule["rule"] == "self.parallelism <= self.maxParallelism"
    assert rule["fieldPath"] == ".parallelism"


def test_autoscaler_defaults_are_the_manifest_models_defaults():
    minimal = {"pipeline": "m:f", "storage": "s3://b/p", "autoscaler": {}}
    defaulted = apply_defaults(SPEC, {**minimal, "autoscaler": {}})
    body = streamjob_body()
    from_crd = parse_manifest({**body, "status": None, "spec": defaulted}).spec
    from_model = parse_manifest({**body, "status": None, "spec": minimal}).spec
    assert from_crd.autoscaler == from_model.autoscaler
    crd_fields = set(SPEC["properties"]["autoscaler"]["properties"])
    from streamjob.manifest import AutoscalerSpec
    assert crd_fields == {f.alias or n for n, f in AutoscalerSpec.model_fields.items()}


def test_crd_defaults_are_the_manifest_models_defaults():
    minimal = {"pipeline": "m:f", "storage": "s3://b/p"}
    defaulted = apply_defaults(SPEC, dict(minimal))
    body = streamjob_body()
    from_crd = parse_manifest({**body, "status": None, "spec": defaulted}).spec
    from_model = parse_manifest({**body, "status": None, "spec": minimal}).spec
    assert from_crd == from_model


def test_every_crd_spec_field_is_a_manifest_field_and_back():
    from streamjob.manifest import StreamJobSpec
    model = {f.alias or n for n, f in StreamJobSpec.model_fields.items()}
    assert set(SPEC["properties"]) == model


def test_helm_chart_carries_the_same_crd():
    copy = REPO / "helm" / "streamjob" / "crds" / CRD_PATH.name
    assert copy.read_text() == CRD_PATH.read_text()
