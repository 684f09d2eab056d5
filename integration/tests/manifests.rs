//! Every manifest under `examples/` must be accepted as-is by a cluster with the real CRDs:
//! - Gateway API and Envoy Gateway objects validate against the served version's
//!   `openAPIV3Schema` from `../shared/crds` (override: `PORTCULLIS_CRDS`), with unknown fields
//!   rejected as `kubectl apply` (strict field validation) would;
//! - core objects (Service, EndpointSlice, Secret, ConfigMap, Namespace) pass a structural check;
//! - every file loads through the translator's `parse_documents` without a load error.
//!
//! CEL rules (`x-kubernetes-validations`) are not evaluated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `PORTCULLIS_CRDS`, else `../shared/crds` beside the checkout, else the chart's vendored copy
/// (byte-identical to `../shared/crds`, checked by the chart test), so a clone anywhere works.
fn crds_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORTCULLIS_CRDS") {
        return PathBuf::from(dir);
    }
    let shared = workspace_root().join("../shared/crds");
    if shared.is_dir() {
        return shared;
    }
    workspace_root().join("charts/portcullis/charts/portcullis-crds/crds")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Documents of a YAML stream, as JSON values (empty documents dropped).
fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: Value = serde::Deserialize::deserialize(doc)
            .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

/// Makes a CRD schema reject unknown fields, as strict field validation does: every object
/// schema that lists its properties and does not preserve unknown fields gets
/// `additionalProperties: false`.
fn strict(schema: &mut Value) {
    match schema {
        Value::Object(o) => {
            let preserve =
                o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            if o.contains_key("properties") && !o.contains_key("additionalProperties") && !preserve
            {
                o.insert("additionalProperties".into(), Value::Bool(false));
            }
            o.values_mut().for_each(strict);
        }
        Value::Array(a) => a.iter_mut().for_each(strict),
        _ => {}
    }
}

/// `(group, kind, version)` -> schema of every served version of every CRD.
fn load_crds() -> BTreeMap<(String, String, String), Value> {
    let dir = crds_dir();
    assert!(
        dir.is_dir(),
        "CRDs not found at {} (set PORTCULLIS_CRDS)",
        dir.display()
    );
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    let mut out = BTreeMap::new();
    for f in files {
        for crd in documents(&f) {
            if crd["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let group = crd["spec"]["group"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            for v in crd["spec"]["versions"].as_array().into_iter().flatten() {
                if v["served"] != Value::Bool(true) {
                    continue;
                }
                let mut schema = v["schema"]["openAPIV3Schema"].clone();
                strict(&mut schema);
                // metadata is validated by the apiserver, not the CRD schema.
                if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                    props.insert("metadata".into(), serde_json::json!({ "type": "object" }));
                }
                out.insert(
                    (
                        group.clone(),
                        kind.clone(),
                        v["name"].as_str().unwrap_or_default().to_string(),
                    ),
                    schema,
                );
            }
        }
    }
    assert!(
        out.len() >= 10,
        "expected Gateway API and Envoy Gateway CRDs in {}, found {}",
        dir.display(),
        out.len()
    );
    out
}

/// Structural checks for the core kinds our examples use. Returns problems found.
fn check_core(kind: &str, doc: &Value) -> Vec<String> {
    let mut p = Vec::new();
    let is_str_map = |v: &Value| {
        v.is_null()
            || v.as_object()
                .is_some_and(|o| o.values().all(Value::is_string))
    };
    match kind {
        "Namespace" => {}
        "Service" => {
            let ports = doc["spec"]["ports"].as_array().cloned().unwrap_or_default();
            if ports.is_empty() {
                p.push("spec.ports is empty".into());
            }
            for (i, port) in ports.iter().enumerate() {
                if !port["port"]
                    .as_u64()
                    .is_some_and(|n| (1..=65535).contains(&n))
                {
                    p.push(format!("spec.ports[{i}].port must be 1-65535"));
                }
                if ports.len() > 1 && !port["name"].is_string() {
                    p.push(format!(
                        "spec.ports[{i}].name is required with several ports"
                    ));
                }
            }
        }
        "EndpointSlice" => {
            if !matches!(doc["addressType"].as_str(), Some("IPv4" | "IPv6" | "FQDN")) {
                p.push("addressType must be IPv4, IPv6 or FQDN".into());
            }
            if !doc["metadata"]["labels"]["kubernetes.io/service-name"].is_string() {
                p.push("metadata.labels[kubernetes.io/service-name] is missing".into());
            }
            for (i, e) in doc["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let addrs = e["addresses"].as_array().cloned().unwrap_or_default();
                if addrs.is_empty() || !addrs.iter().all(Value::is_string) {
                    p.push(format!(
                        "endpoints[{i}].addresses must be a non-empty list of strings"
                    ));
                }
            }
            for (i, port) in doc["ports"].as_array().into_iter().flatten().enumerate() {
                if !port["port"]
                    .as_u64()
                    .is_some_and(|n| (1..=65535).contains(&n))
                {
                    p.push(format!("ports[{i}].port must be 1-65535"));
                }
            }
        }
        "Secret" => {
            if !is_str_map(&doc["data"]) || !is_str_map(&doc["stringData"]) {
                p.push("data and stringData must map strings to strings".into());
            }
            for (k, v) in doc["data"].as_object().into_iter().flatten() {
                if base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .is_err()
                {
                    p.push(format!("data[{k}] is not base64"));
                }
            }
            if doc["type"] == "kubernetes.io/tls" {
                for key in ["tls.crt", "tls.key"] {
                    if doc["data"][key].is_null() && doc["stringData"][key].is_null() {
                        p.push(format!("a kubernetes.io/tls Secret needs {key}"));
                    }
                }
            }
        }
        "ConfigMap" => {
            if !is_str_map(&doc["data"]) {
                p.push("data must map strings to strings".into());
            }
        }
        other => p.push(format!("no structural check for core kind {other}")),
    }
    p
}

#[test]
fn example_manifests_validate_against_the_crds() {
    let crds = load_crds();
    let mut files = Vec::new();
    yaml_files(&workspace_root().join("examples"), &mut files);
    let mut problems = Vec::new();
    let mut validated = 0;
    for f in &files {
        let rel = f
            .strip_prefix(workspace_root())
            .unwrap_or(f)
            .display()
            .to_string();
        let docs = documents(f);
        let k8s_docs: Vec<&Value> = docs
            .iter()
            .filter(|d| d.get("apiVersion").is_some() && d.get("kind").is_some())
            .collect();
        if k8s_docs.is_empty() {
            continue; // Envoy / compose configs, not Kubernetes manifests.
        }
        for (i, doc) in k8s_docs.iter().enumerate() {
            let api_version = doc["apiVersion"].as_str().unwrap_or_default();
            let kind = doc["kind"].as_str().unwrap_or_default();
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let at = format!(
                "{rel} #{i} {kind} {}",
                doc["metadata"]["name"].as_str().unwrap_or("<no name>")
            );
            if doc["metadata"]["name"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at}: metadata.name is required"));
            }
            if group == "gateway.networking.k8s.io" || group == "gateway.envoyproxy.io" {
                let Some(schema) =
                    crds.get(&(group.to_string(), kind.to_string(), version.to_string()))
                else {
                    problems.push(format!(
                        "{at}: no served CRD version for {api_version} {kind}"
                    ));
                    continue;
                };
                let validator = jsonschema::draft4::new(schema)
                    .unwrap_or_else(|e| panic!("schema for {api_version} {kind}: {e}"));
                for e in validator.iter_errors(doc) {
                    problems.push(format!("{at}: {} at {}", e, e.instance_path()));
                }
                validated += 1;
            } else if group.is_empty() || group == "discovery.k8s.io" {
                problems.extend(
                    check_core(kind, doc)
                        .into_iter()
                        .map(|p| format!("{at}: {p}")),
                );
                validated += 1;
            } else {
                problems.push(format!(
                    "{at}: apiVersion {api_version} is neither Gateway API, Envoy Gateway nor core"
                ));
            }
        }
    }
    assert!(
        validated >= 20,
        "expected the example manifests, validated only {validated}"
    );
    assert!(
        problems.is_empty(),
        "invalid example manifests:\n{}",
        problems.join("\n")
    );
}

#[test]
fn example_manifests_load_in_the_translator() {
    let mut files = Vec::new();
    yaml_files(&workspace_root().join("examples"), &mut files);
    let mut loaded = 0;
    for f in &files {
        let docs = documents(f);
        let k8s = docs
            .iter()
            .filter(|d| d.get("apiVersion").is_some() && d.get("kind").is_some())
            .count();
        if k8s == 0 {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        let (res, errs) = portcullis_translator::parse_documents(&f.display().to_string(), &text);
        assert!(errs.is_empty(), "{}: {errs:?}", f.display());
        assert_eq!(res.len(), k8s, "{}: every document must load", f.display());
        loaded += res.len();
    }
    assert!(
        loaded >= 20,
        "expected the example manifests, loaded {loaded}"
    );
}

/// The schema check itself must catch mistakes, or the test above proves nothing.
#[test]
fn schema_check_rejects_bad_manifests() {
    let crds = load_crds();
    let schema = &crds[&(
        "gateway.networking.k8s.io".to_string(),
        "HTTPRoute".to_string(),
        "v1".to_string(),
    )];
    let validator = jsonschema::draft4::new(schema).expect("schema");
    let good: Value = serde_yaml::from_str("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - backendRefs: [{name: s, port: 80}]\n").expect("yaml");
    assert!(validator.is_valid(&good));
    let typo: Value = serde_yaml::from_str("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rulez: []\n").expect("yaml");
    assert!(!validator.is_valid(&typo), "unknown field must be rejected");
    let bad_enum: Value = serde_yaml::from_str("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  rules:\n  - matches: [{path: {type: Glob, value: /x}}]\n").expect("yaml");
    assert!(
        !validator.is_valid(&bad_enum),
        "invalid enum must be rejected"
    );
    let tls_without_key: Value = serde_yaml::from_str("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x}\n").expect("yaml");
    assert_eq!(check_core("Secret", &tls_without_key).len(), 1);
}
