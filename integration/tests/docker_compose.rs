//! examples/docker: no Docker engine runs here, so check what can be checked without one:
//! the compose file parses, pins the Envoy version our tests use, every host path it mounts
//! exists (after `make build`), and the Envoy config it mounts passes `envoy --mode validate`
//! with our Envoy 1.40. Container paths in that config (`/etc/envoy/wasm/...`) are rewritten
//! to the host paths mounted there before validating, so the real modules are loaded.

use std::path::{Path, PathBuf};

use portcullis_integration::envoy::validate;
use portcullis_integration::process::{envoy_bin, workspace_root};
use portcullis_integration::wasm;
use serde_yaml::Value;

fn compose_dir() -> PathBuf {
    workspace_root().join("examples/docker")
}

fn compose() -> Value {
    let path = compose_dir().join("compose.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Bind mounts of a service (short syntax `host:container[:mode]`): (host path, container path).
fn binds(service: &Value) -> Vec<(PathBuf, String)> {
    let dir = compose_dir();
    service["volumes"]
        .as_sequence()
        .map(|v| v.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|v| {
            let spec = v
                .as_str()
                .unwrap_or_else(|| panic!("use the short volume syntax: {v:?}"));
            let mut parts = spec.split(':');
            let host = parts.next().unwrap();
            let container = parts
                .next()
                .unwrap_or_else(|| panic!("no container path: {spec}"));
            assert!(
                host.starts_with('.') || host.starts_with('/'),
                "not a bind mount: {spec}"
            );
            (dir.join(host), container.to_string())
        })
        .collect()
}

#[test]
fn compose_file_parses_and_pins_envoy_1_40() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    assert!(services.len() >= 2, "envoy and a backend: {services:?}");
    let image = c["services"]["envoy"]["image"]
        .as_str()
        .expect("envoy image");
    assert_eq!(image, "envoyproxy/envoy:v1.40.0");
    // Same version as the Envoy the tests run.
    let out = std::process::Command::new(envoy_bin().unwrap())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.contains("/1.40.0/"), "{version}");
    // Every image is pinned to a version, never `latest`.
    for (name, svc) in services {
        let image = svc["image"]
            .as_str()
            .unwrap_or_else(|| panic!("{name:?}: no image"));
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest",
            "{name:?}: unpinned image {image}"
        );
    }
    // The backend the Envoy config routes to is a service of this file.
    assert!(services.contains_key("echo"));
}

#[test]
fn every_mounted_path_exists_after_build() {
    // dist/wasm is produced by `make build` (the harness builds it if missing).
    wasm::module("ua_block").unwrap();
    wasm::module("headers").unwrap();
    let c = compose();
    let services = c["services"].as_mapping().unwrap();
    let mut n = 0;
    for (name, svc) in services {
        for (host, container) in binds(svc) {
            assert!(
                host.exists(),
                "{name:?} mounts missing {} at {container}",
                host.display()
            );
            n += 1;
        }
    }
    assert!(
        n >= 2,
        "expected the Envoy config and dist/wasm to be mounted"
    );
    let wasm_dir = binds(&c["services"]["envoy"])
        .into_iter()
        .find(|(_, c)| c == "/etc/envoy/wasm")
        .expect("dist/wasm mounted at /etc/envoy/wasm");
    for m in ["ua_block.wasm", "headers.wasm"] {
        assert!(
            wasm_dir.0.join(m).is_file(),
            "{m} not in {}",
            wasm_dir.0.display()
        );
    }
}

#[test]
fn mounted_envoy_config_passes_envoy_validate() {
    let c = compose();
    let envoy = &c["services"]["envoy"];
    let command: Vec<&str> = envoy["command"]
        .as_sequence()
        .expect("envoy command as a list")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let config_in_container = command
        .windows(2)
        .find(|w| w[0] == "-c" || w[0] == "--config-path")
        .map(|w| w[1])
        .expect("-c <config> in the envoy command");
    let mounts = binds(envoy);
    let (config_host, _) = mounts
        .iter()
        .find(|(_, c)| c == config_in_container)
        .unwrap_or_else(|| panic!("{config_in_container} is not mounted"));
    wasm::module("ua_block").unwrap();
    wasm::module("headers").unwrap();

    let mut text = std::fs::read_to_string(config_host).unwrap();
    for (host, container) in &mounts {
        if Path::new(container) != Path::new(config_in_container) {
            let host = host.canonicalize().unwrap();
            text = text.replace(&format!("{container}/"), &format!("{}/", host.display()));
        }
    }
    // After the rewrite every module path must point at a real file on this machine.
    let filenames: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("filename:").nth(1))
        .map(|f| {
            f.trim_end_matches(|c: char| c == '}' || c.is_whitespace())
                .trim()
        })
        .collect();
    assert_eq!(filenames.len(), 2, "{filenames:?}");
    for f in &filenames {
        assert!(Path::new(f).is_file(), "{f} does not exist");
    }
    let dir = tempfile::tempdir().unwrap();
    let rewritten = dir.path().join("envoy.yaml");
    std::fs::write(&rewritten, &text).unwrap();
    let (status, logs) = validate(&rewritten).unwrap();
    assert!(
        status.success(),
        "envoy --mode validate failed ({status}):\n{logs}"
    );
    assert!(logs.contains("OK"), "{logs}");

    // And validation is a real check: a broken filter config in the same file fails it.
    let broken = text.replacen(
        "\"missing_user_agent\": \"deny\"",
        "\"missing_user_agent\": \"maybe\"",
        1,
    );
    assert_ne!(broken, text, "the config changed shape; update this test");
    std::fs::write(&rewritten, &broken).unwrap();
    let (status, logs) = validate(&rewritten).unwrap();
    assert!(
        !status.success(),
        "a bad filter config passed validation:\n{logs}"
    );
}
