//! The fleet objects checked by real tools instead of by assertion:
//! - the bootstrap exactly as the ConfigMap carries it passes `envoy --mode validate` (Envoy 1.40,
//!   `.bin/envoy`, installed by `make setup`), with the certificates the Secret carries written
//!   where the pod would mount them;
//! - the client certificate chains to the CA (`openssl verify`) and so does a server certificate;
//! - every fleet object validates against the Kubernetes 1.34 OpenAPI schemas, strictly
//!   (PyPI kubernetes-validate in `.venv`, installed by `scripts/chart-setup.sh`).

use std::path::PathBuf;
use std::process::Command;

use portcullis_kube::certs::{CertAuthority, LEAF_VALIDITY};
use portcullis_kube::infra::{self, InfraConfig};
use serde_json::{json, Value};

fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).map(PathBuf::from).unwrap_or(here)
}

fn tool(env: &str, rel: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(rel))
}

fn fleet() -> (infra::Fleet, CertAuthority) {
    let now = time::OffsetDateTime::now_utc();
    let ca = CertAuthority::generate(now).expect("ca");
    let cert = ca
        .issue_client("infra", "web", now, LEAF_VALIDITY)
        .expect("cert");
    let gw = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "infra", "uid": "u-1"},
        "spec": {"gatewayClassName": "portcullis", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}});
    // With the per-fleet NetworkPolicy, so it is validated too.
    let cfg = InfraConfig {
        network_policy: Some(infra::FleetNetworkPolicy {
            metrics_namespaces: vec!["monitoring".into()],
        }),
        ..InfraConfig::default()
    };
    let ep = json!({"spec": {"provider": {"type": "Kubernetes", "kubernetes": {"envoyDeployment": {"container": {
        "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "1Gi"}}}}}}}});
    let (params, unsupported) = infra::fleet_params(&cfg, &gw, Some(&ep));
    assert!(unsupported.is_empty(), "{unsupported:?}");
    let f = infra::fleet_objects(
        &gw,
        &[(80, portcullis_translator::ir::Protocol::Http)],
        &params,
        &cfg,
        &cert,
        ca.cert_pem(),
    )
    .expect("fleet");
    (f, ca)
}

fn secret_file(secret: &k8s_openapi::api::core::v1::Secret, key: &str) -> Vec<u8> {
    let data = secret.data.as_ref().expect("secret data");
    data.get(key).expect("secret key").0.clone()
}

#[test]
fn bootstrap_from_the_configmap_passes_envoy_validate() {
    let envoy = tool("PORTCULLIS_ENVOY", ".bin/envoy");
    assert!(
        envoy.exists(),
        "{} missing: run `make setup`",
        envoy.display()
    );
    let (fleet, _) = fleet();
    let dir = tempfile::tempdir().expect("tempdir");
    // What the Secret volume would hold at /etc/envoy/certs.
    for k in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.path().join(k), secret_file(&fleet.secret, k)).expect("write cert");
    }
    let boot = fleet.bootstrap().expect("bootstrap");
    assert!(boot.contains(infra::CERT_DIR));
    let boot = boot.replace(infra::CERT_DIR, &dir.path().display().to_string());
    let file = dir.path().join("bootstrap.json");
    std::fs::write(&file, boot).expect("write bootstrap");
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .expect("run envoy");
    assert!(
        out.status.success(),
        "envoy --mode validate failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // A broken variant must fail, or this test proves nothing: point the key at a missing file.
    let bad = std::fs::read_to_string(&file)
        .expect("read")
        .replace("tls.key", "missing.key");
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, bad).expect("write");
    let out = Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&bad_file)
        .output()
        .expect("run envoy");
    assert!(
        !out.status.success(),
        "envoy accepted a bootstrap with a missing key file"
    );
}

#[test]
fn certificates_chain_to_the_ca() {
    let (fleet, ca) = fleet();
    let dir = tempfile::tempdir().expect("tempdir");
    for k in ["tls.crt", "ca.crt"] {
        std::fs::write(dir.path().join(k), secret_file(&fleet.secret, k)).expect("write");
    }
    let server = ca
        .issue_server(
            &["portcullis.portcullis-system.svc".into()],
            time::OffsetDateTime::now_utc(),
            LEAF_VALIDITY,
        )
        .expect("server cert");
    std::fs::write(dir.path().join("server.crt"), &server.cert_pem).expect("write");
    let other = CertAuthority::generate(time::OffsetDateTime::now_utc()).expect("ca");
    std::fs::write(dir.path().join("other.crt"), other.cert_pem()).expect("write");
    let verify = |ca: &str, leaf: &str, purpose: &str| {
        Command::new("openssl")
            .current_dir(dir.path())
            .args(["verify", "-purpose", purpose, "-CAfile", ca, leaf])
            .output()
            .expect("run openssl")
            .status
            .success()
    };
    assert!(
        verify("ca.crt", "tls.crt", "sslclient"),
        "client cert chains to the CA"
    );
    assert!(
        verify("ca.crt", "server.crt", "sslserver"),
        "server cert chains to the CA"
    );
    assert!(
        !verify("other.crt", "tls.crt", "sslclient"),
        "and not to another CA"
    );
}

#[test]
fn fleet_objects_validate_against_kubernetes_schemas() {
    let py = tool("PORTCULLIS_PYTHON", ".venv/bin/python");
    assert!(
        py.exists(),
        "{} missing: run scripts/chart-setup.sh",
        py.display()
    );
    let (fleet, _) = fleet();
    let objs: Vec<Value> = fleet
        .objects()
        .into_iter()
        .map(|o| o.to_json().expect("object json"))
        .collect();
    assert_eq!(
        objs.len(),
        6,
        "ServiceAccount, Secret, ConfigMap, NetworkPolicy, Service, Deployment"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("objs.json");
    std::fs::write(&file, serde_json::to_vec(&objs).expect("json")).expect("write");
    let script = r#"
import json, sys, kubernetes_validate as kv
bad = 0
for o in json.load(open(sys.argv[1])):
    try:
        kv.validate(o, "1.34", strict=True)
    except kv.ValidationError as e:
        bad += 1
        print(o["kind"], e.message, list(e.absolute_path))
sys.exit(1 if bad else 0)
"#;
    let out = Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "invalid objects:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
