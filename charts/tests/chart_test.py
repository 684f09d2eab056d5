#!/usr/bin/env python3
"""Render, lint and schema-validate charts/portcullis with real Helm code (helm-python-sdk, the
Helm v4 Go SDK behind a C ABI), offline.

For each values scenario:
  * `helm lint --strict` must report no warnings or errors;
  * every rendered object must validate against the Kubernetes OpenAPI schemas (kubernetes-validate,
    strict: unknown fields are errors), or, for Gateway API / Envoy Gateway kinds, against the
    CRD's openAPIV3Schema from ../shared/crds (jsonschema);
The CRDs shipped in the subchart must be byte-identical to ../shared/crds and valid
CustomResourceDefinitions.

Prints one JSON report on stdout ({"scenarios": {name: {"objects": [...], "templates": [...]}}})
for integration/tests/chart.rs to assert behaviour on; exits 1 with the failures on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(os.environ.get("PORTCULLIS_ROOT", Path(__file__).resolve().parents[2]))
CHART = ROOT / "charts" / "portcullis"
SUBCHART_CRDS = CHART / "charts" / "portcullis-crds" / "crds"
# PORTCULLIS_CRDS, else ../shared/crds beside the checkout, else (a clone elsewhere, e.g. CI) the
# vendored copy: the byte-identity check is then trivially true and says so.
_SHARED_DEFAULT = ROOT.parent / "shared" / "crds"
SHARED_CRDS = Path(os.environ.get("PORTCULLIS_CRDS", _SHARED_DEFAULT if _SHARED_DEFAULT.is_dir() else SUBCHART_CRDS))
if SHARED_CRDS == SUBCHART_CRDS:
    print(f"note: {_SHARED_DEFAULT} not found; validating against the vendored CRDs in {SUBCHART_CRDS}", file=sys.stderr)
KUBE_VERSION = "1.34"
RELEASE = "portcullis"
NAMESPACE = "portcullis-system"

SCENARIOS: dict[str, dict] = {
    "defaults": {},
    "custom": {
        "crds": {"enabled": False},
        "gatewayClass": {
            "create": True,
            "name": "edge",
            "parametersRef": {
                "group": "gateway.envoyproxy.io",
                "kind": "EnvoyProxy",
                "name": "proxy-config",
                "namespace": NAMESPACE,
            },
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "controller": {"replicas": 1, "extraArgs": ["--log-format=json"], "controllerName": "example.com/edge"},
        "image": {"digest": "sha256:" + "a" * 64},
        "service": {"annotations": {"example.com/owner": "platform"}},
        "commonLabels": {"team": "platform"},
        "imagePullSecrets": [{"name": "regcred"}],
    },
    "minimal": {
        "gatewayClass": {"create": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "rbac": {"create": False},
        "podDisruptionBudget": {"enabled": False},
        "controller": {"replicas": 1, "leaderElection": {"enabled": False}},
    },
    # Namespace-scoped: Roles per watched namespace, a ClusterRole without namespaced grants, and
    # the NetworkPolicies (controller + per-fleet), metrics scraped from "monitoring".
    "scoped": {
        "watchNamespaces": ["infra", "apps"],
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "apiServer": {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}]},
            "extraEgress": [{"ports": [{"port": 80, "protocol": "TCP"}]}],
            "fleets": {"metricsNamespaces": ["monitoring"]},
        },
        "gatewayClass": {
            "create": True,
            "parametersRef": {
                "group": "gateway.envoyproxy.io",
                "kind": "EnvoyProxy",
                "name": "proxy-config",
                "namespace": "infra",
            },
        },
    },
    # Cluster-wide with the NetworkPolicies on (the fleet policy's RBAC is then cluster-wide).
    "netpol-cluster": {
        "networkPolicy": {"enabled": True},
    },
}

# Values the chart must refuse, with a part of the message it must give.
REFUSED: dict[str, tuple[dict, str]] = {
    "scoped-bad-name": ({"watchNamespaces": ["Infra"]}, "is not a namespace name"),
    "scoped-parametersref-elsewhere": (
        {
            "watchNamespaces": ["infra"],
            "gatewayClass": {
                "parametersRef": {
                    "group": "gateway.envoyproxy.io",
                    "kind": "EnvoyProxy",
                    "name": "proxy-config",
                    "namespace": NAMESPACE,
                }
            },
        },
        "must be in watchNamespaces",
    ),
}

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)


def load_crd_schemas() -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema, from every CRD under ../shared/crds."""
    schemas: dict[tuple[str, str, str], dict] = {}
    for path in sorted(SHARED_CRDS.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for ver in spec["versions"]:
                schema = ver.get("schema", {}).get("openAPIV3Schema")
                if schema:
                    schemas[(spec["group"], ver["name"], spec["names"]["kind"])] = schema
    return schemas


def validate_object(obj: dict, crd_schemas: dict, where: str) -> None:
    api_version = obj.get("apiVersion", "")
    kind = obj.get("kind", "")
    group, _, version = api_version.rpartition("/")
    key = (group, version, kind)
    if key in crd_schemas:
        try:
            jsonschema.validate(obj, crd_schemas[key])
        except jsonschema.ValidationError as err:
            fail(f"{where}: {kind} invalid against its CRD: {err.message} at {list(err.absolute_path)}")
        return
    if group == "monitoring.coreos.com":
        # No Prometheus Operator CRD is vendored here: check the fields the operator requires.
        spec = obj.get("spec", {})
        if not spec.get("selector") or not spec.get("endpoints"):
            fail(f"{where}: ServiceMonitor lacks selector or endpoints")
        return
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        fail(f"{where}: {kind} invalid: {err.message} at {list(err.absolute_path)}")
    except kubernetes_validate.SchemaNotFoundError:
        fail(f"{where}: no schema for {api_version} {kind}")


def check_vendored_crds() -> int:
    shared = {p.name: p for p in SHARED_CRDS.rglob("*.yaml")}
    count = 0
    for path in sorted(SUBCHART_CRDS.glob("*.yaml")):
        src = shared.get(path.name)
        if src is None:
            fail(f"{path.name}: not in {SHARED_CRDS}")
            continue
        if src.read_bytes() != path.read_bytes():
            fail(f"{path.name}: differs from {src} (re-copy it)")
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            count += 1
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as err:
                fail(f"{path.name}: CRD invalid: {err.message}")
    return count


def run_scenario(name: str, values: dict, crd_schemas: dict) -> dict:
    lint = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, with_subcharts=True)
    for msg in lint.get("messages") or []:
        # severity: 0 unknown, 1 info, 2 warning, 3 error
        if msg.get("severity", 0) >= 2:
            fail(f"[{name}] helm lint: {msg.get('path')}: {msg.get('error')}")
    for err in lint.get("errors") or []:
        fail(f"[{name}] helm lint: {err}")

    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for template, manifest in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        try:
            docs = [d for d in yaml.safe_load_all(manifest) if d]
        except yaml.YAMLError as err:
            fail(f"[{name}] {template}: not YAML: {err}")
            continue
        for doc in docs:
            validate_object(doc, crd_schemas, f"[{name}] {template}")
            objects.append(doc)
    return {"lint": lint, "templates": sorted(rendered), "objects": objects}


def main() -> int:
    crd_schemas = load_crd_schemas()
    if not crd_schemas:
        fail(f"no CRD schemas found under {SHARED_CRDS}")
    report: dict = {
        "helm_sdk_version": helm.helm_sdk_version(),
        "crd_documents": check_vendored_crds(),
        "scenarios": {},
    }
    only = sys.argv[1:]
    for name, values in SCENARIOS.items():
        if only and name not in only:
            continue
        try:
            report["scenarios"][name] = run_scenario(name, values, crd_schemas)
        except helm.HelmError as err:
            fail(f"[{name}] helm: {err}")
    report["refused"] = {}
    for name, (values, want) in REFUSED.items():
        if only and name not in only:
            continue
        try:
            with helm.Chart.load(str(CHART)) as chart:
                chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            fail(f"[{name}] rendered, but the chart must refuse these values")
        except helm.HelmError as err:
            report["refused"][name] = str(err)
            if want not in str(err):
                fail(f"[{name}] refused, but without {want!r}: {err}")
    json.dump(report, sys.stdout, default=str)
    sys.stdout.write("\n")
    for msg in failures:
        print(f"FAIL {msg}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
