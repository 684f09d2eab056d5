//! Golden tests of the managed Envoys' bootstrap (`xds::bootstrap`): the host Envoy of file
//! mode and the Kubernetes fleet's, each compared with `testdata/bootstrap/<case>.json`
//! (regenerate with `UPDATE_GOLDEN=1`) and, when an Envoy binary is here, accepted by
//! `envoy --mode validate` (the fleet's certificate files from `testdata/certs/`).

use std::path::{Path, PathBuf};

use portcullis_translator::ir::ClientTlsFiles;
use portcullis_translator::xds::bootstrap::{json, AdminAddress, BootstrapSpec, XdsUpstream};
use serde_json::Value;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testdata")
}

fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("PORTCULLIS_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.bin/envoy");
    p.exists().then_some(p)
}

fn cases() -> Vec<(&'static str, BootstrapSpec)> {
    vec![
        (
            "host",
            BootstrapSpec {
                node_id: "default/gw".into(),
                xds: XdsUpstream::Static {
                    ip: "127.0.0.1".parse().expect("ip"),
                    port: 18000,
                },
                delta: false,
                admin: AdminAddress::LoopbackEphemeral,
                ready_port: None,
            },
        ),
        (
            "kubernetes",
            BootstrapSpec {
                node_id: "infra/web".into(),
                xds: XdsUpstream::Dns {
                    host: "portcullis.portcullis-system.svc".into(),
                    port: 18000,
                    client_tls: ClientTlsFiles {
                        cert_chain: "/etc/envoy/certs/tls.crt".into(),
                        private_key: "/etc/envoy/certs/tls.key".into(),
                        trusted_ca: "/etc/envoy/certs/ca.crt".into(),
                    },
                },
                delta: true,
                admin: AdminAddress::Pipe("/var/run/envoy/admin.sock".into()),
                ready_port: Some(19001),
            },
        ),
    ]
}

#[test]
fn bootstraps_match_their_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for (name, spec) in cases() {
        let got = json(&spec).expect("renders");
        let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
        let path = testdata().join(format!("bootstrap/{name}.json"));
        if update {
            std::fs::write(&path, &text).expect("write golden");
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 to create)", path.display()));
        pretty_assertions::assert_eq!(want, text, "{name}");
    }
}

/// The same spec gives the same bytes (a fleet's bootstrap hash must not change by itself).
#[test]
fn bootstraps_are_deterministic() {
    for (name, spec) in cases() {
        let a = serde_json::to_string(&json(&spec).expect("renders")).expect("json");
        let b = serde_json::to_string(&json(&spec).expect("renders")).expect("json");
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn envoy_accepts_both_bootstraps() {
    let Some(envoy) = envoy_bin() else {
        eprintln!("skipping: no Envoy (PORTCULLIS_ENVOY or .bin/envoy)");
        return;
    };
    let dir = tempfile_dir();
    for (name, spec) in cases() {
        let mut boot = json(&spec).expect("renders");
        local_paths(&mut boot, &dir);
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&boot).expect("json")).expect("write");
        let out = std::process::Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&file)
            .output()
            .expect("run envoy");
        assert!(
            out.status.success(),
            "{name}: Envoy rejects the bootstrap:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir
}

/// The pod's paths, served here: certificates from `testdata/certs/`, the admin socket in `dir`.
fn local_paths(v: &mut Value, dir: &Path) {
    match v {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("/etc/envoy/certs/") {
                *s = testdata().join("certs").join(name).display().to_string();
            } else if s == "/var/run/envoy/admin.sock" {
                *s = dir.join("admin.sock").display().to_string();
            }
        }
        Value::Object(o) => o.values_mut().for_each(|x| local_paths(x, dir)),
        Value::Array(a) => a.iter_mut().for_each(|x| local_paths(x, dir)),
        _ => {}
    }
}
