//! Issue 4: the EnvoyExtensionPolicies in examples/kubernetes/ reference our images by tag and
//! sha256, and their `config` is accepted by the filter they load (filters reject unknown
//! fields, so a typo here would only show up as a failing filter in the cluster).

use portcullis_core::headers::HeadersFilter;
use portcullis_core::ua_block::UaBlock;

#[test]
fn kubernetes_examples_pin_images_and_configs_parse() {
    let dir = portcullis_integration::process::workspace_root().join("examples/kubernetes");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if doc["kind"] != "EnvoyExtensionPolicy" {
                continue;
            }
            for wasm in doc["spec"]["wasm"].as_array().unwrap() {
                let image = &wasm["code"]["image"];
                let url = image["url"].as_str().unwrap();
                let (_, tag) = url.rsplit_once(':').unwrap();
                assert!(
                    !tag.contains('/') && !tag.is_empty(),
                    "{}: {url} has no tag",
                    path.display()
                );
                let sha = image["sha256"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: no sha256", path.display()));
                assert!(
                    sha.len() == 64
                        && sha
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                    "{}: sha256 {sha:?} is not 64 lowercase hex characters",
                    path.display()
                );
                let config = serde_json::to_vec(&wasm["config"]).unwrap();
                let parsed = if url.contains("/portcullis/ua-block:") {
                    UaBlock::from_json(&config).map(|_| ())
                } else if url.contains("/portcullis/headers:") {
                    HeadersFilter::from_json(&config).map(|_| ())
                } else {
                    panic!("{}: no config check for {url}", path.display())
                };
                parsed.unwrap_or_else(|e| panic!("{}: config for {url}: {e}", path.display()));
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 3,
        "only {checked} wasm entries found in {}",
        dir.display()
    );
}
